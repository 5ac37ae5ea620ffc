"""Multiple-choice loglikelihood requests from a real BIG-bench task, shared by the engine consistency tests."""

from __future__ import annotations

from typing import Any

from qeval.backends.base import LoglikelihoodRequest


def mc_requests(tokenizer: Any, n_docs: int) -> tuple[list[LoglikelihoodRequest], list[int]]:
    """Multiple-choice requests from a real BIG-bench task, split as lm-eval splits them."""
    from qeval.assets.bigbench import read_docs

    requests, owners = [], []
    for i, doc in enumerate(read_docs("bigbench_mc_social_iqa")[:n_docs]):
        ctx = tokenizer(doc["input"], add_special_tokens=False)["input_ids"]
        for choice in doc["choices"]:
            whole = tokenizer(doc["input"] + " " + choice, add_special_tokens=False)["input_ids"]
            requests.append(LoglikelihoodRequest(tuple(whole[: len(ctx)]), tuple(whole[len(ctx):])))
            owners.append(i)
    return requests, owners


def choices_picked(results: list[Any], owners: list[int]) -> list[int]:
    """Per doc, the index of the choice with the highest log-likelihood."""
    best: dict[int, tuple[float, int]] = {}
    count: dict[int, int] = {}
    for r, o in zip(results, owners):
        k = count.get(o, 0)
        count[o] = k + 1
        if o not in best or r.logprob > best[o][0]:
            best[o] = (r.logprob, k)
    return [best[o][1] for o in sorted(best)]
