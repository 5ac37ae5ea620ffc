"""Multiple-choice loglikelihood requests, shared by the engine consistency tests: the documents of the test task
fixtures/tasks (qeval_addition_mc) (data the tests make, so these tests do not need the BIG-bench archive)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from qeval.backends.base import LoglikelihoodRequest

# The lm-eval tasks the tests make (qeval_addition_mc, qeval_subtraction_mc): a suite names them with
# `task_dirs: [FIXTURE_TASKS]`, so the tests that need some real task do not need the BIG-bench archive.
FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"


def fixture_docs() -> list[dict[str, Any]]:
    """The test task's documents as lm-eval shows them: {input, choices, answer}."""
    spec = importlib.util.spec_from_file_location("qeval_test_addition", FIXTURE_TASKS / "arithmetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [{"input": f"Question: {d['question']}\nAnswer:", "choices": d["choices"], "answer": d["answer"]}
            for d in module.docs()]


def mc_requests(tokenizer: Any, n_docs: int) -> tuple[list[LoglikelihoodRequest], list[int]]:
    """Multiple-choice requests from the test task (four choices each), split as lm-eval splits them."""
    requests, owners = [], []
    for i, doc in enumerate(fixture_docs()[:n_docs]):
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
