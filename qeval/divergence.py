"""Token-level comparison with the baseline: KL divergence, top-1 agreement, perplexity ratio.

As llama.cpp's `llama-perplexity --kl-divergence` reports them: per token t,
KL(P_baseline,t || P_candidate,t) over the full vocabulary, whether both pick
the same top token, and each model's negative log-likelihood of the actual
next token. They see quantization damage where a small model's accuracy sits
near chance. Intervals treat each sequence as a cluster (tokens of one text
are not independent): mean ± z·SE with the clustered SE of qeval.stats.

Both sides come from the same engine (`Backend.prompt_distributions`), on the
same token ids. Where the engine returns every log-probability the KL is exact;
where it returns only the top-k (servers), only bounds exist (qeval.kl_bounds):
every number says which it is. Top-1 agreement and the PPL ratio are exact on
every route (the most likely token and the actual token's log-probability are
always returned).

A section record (`summarize`) keeps the keys the gate reads (kld_mean,
kld_mean_ci, kld_p99, top1_agree, n_tokens, ppl_ratio) and adds `kld_kind`
("exact" or "bounds"), `kinds` (per number: "exact", "lower_bound",
"upper_bound" or "lower_to_upper" for an interval from the lower bound's lower
end to the upper bound's upper end, "lower_bound_only" for one open above),
`kld_se`, and, for bounds, `kld_lower` and `kld_upper` (None where no upper
bound exists). A candidate record puts a section whose KL has no upper side
under "lower_bound_only" instead of at its usual key, so that no reader of the
usual keys can take a lower bound for a value (runner.run_divergence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from scipy.stats import norm

from qeval import kl_bounds, stats
from qeval.backends.base import PromptDistributions


class DivergenceUnavailable(RuntimeError):
    """This cell's distributions cannot be compared with the baseline's (the reason says why): its
    divergence record says so, the cell's other results stand."""


@dataclass
class TokenComparison:
    """Per-token arrays of one comparison (same tokens on both sides).

    `kld` holds exact values where both sides gave full distributions, else None; then `kld_lower`
    (always) and `kld_upper` (where the candidate side carried a floor) hold per-token bounds.
    """

    kld: np.ndarray | None
    top1_same: np.ndarray
    nll_baseline: np.ndarray
    nll_candidate: np.ndarray
    sequence: np.ndarray  # which sequence each token belongs to (the cluster)
    kld_lower: np.ndarray | None = None
    kld_upper: np.ndarray | None = None

    @property
    def exact(self) -> bool:
        return self.kld is not None


def compare_logprobs(base: torch.Tensor, cand: torch.Tensor, next_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per position of one sequence: [T, V] log-distributions and the [T] actual next tokens."""
    base, cand = base.float(), cand.float()
    kld = (base.exp() * (base - cand)).sum(dim=-1).clamp(min=0.0)  # tiny negative values are rounding
    return {"kld": kld, "top1_same": base.argmax(-1) == cand.argmax(-1),
            "nll_baseline": -base.gather(1, next_tokens[:, None])[:, 0],
            "nll_candidate": -cand.gather(1, next_tokens[:, None])[:, 0]}


def exact_kld(base: np.ndarray, cand: np.ndarray, rows: int = 256) -> np.ndarray:
    """KL(base || cand) per row of two [n, V] log-probability arrays, in float64 blocks (bounded memory)."""
    out = np.empty(base.shape[0])
    for start in range(0, base.shape[0], rows):
        b = np.asarray(base[start:start + rows], dtype=np.float64)
        c = np.asarray(cand[start:start + rows], dtype=np.float64)
        out[start:start + rows] = np.maximum((np.exp(b) * (b - c)).sum(axis=1), 0.0)  # rounding below 0
    return out


def compare_distributions(pairs: Iterable[tuple[PromptDistributions, PromptDistributions]]) -> TokenComparison:
    """Compare baseline and candidate distributions sequence by sequence (same tokens on both sides).

    Exact where every pair has both full distributions; otherwise per-token bounds for all of them
    (a comparison never mixes exact values and bounds).
    """
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("kld", "lo", "up", "top1", "nb", "nc", "seq")}
    exact: bool | None = None
    upper = True
    for i, (b, c) in enumerate(pairs):
        if b.n != c.n or not np.array_equal(b.targets, c.targets):
            raise ValueError(f"sequence {i}: baseline and candidate rows are not over the same tokens")
        pair_exact = b.full is not None and c.full is not None
        if exact is None:
            exact = pair_exact
        elif exact != pair_exact:
            raise ValueError("mixed full and top-k distributions in one comparison; compare them separately")
        parts["top1"].append((b.top_ids[:, 0] == c.top_ids[:, 0]).astype(float))
        parts["nb"].append(-b.target_logprobs.astype(np.float64))
        parts["nc"].append(-c.target_logprobs.astype(np.float64))
        parts["seq"].append(np.full(b.n, i))
        if pair_exact:
            parts["kld"].append(exact_kld(b.full, c.full))
        else:
            bounds = kl_bounds.topk_bounds(*_as_topk(b, c))
            parts["lo"].append(bounds.lower)
            upper &= bounds.upper is not None
            if bounds.upper is not None:
                parts["up"].append(bounds.upper)
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    if exact is None or exact:
        return TokenComparison(kld=cat["kld"], top1_same=cat["top1"], nll_baseline=cat["nb"],
                               nll_candidate=cat["nc"], sequence=cat["seq"])
    return TokenComparison(kld=None, top1_same=cat["top1"], nll_baseline=cat["nb"], nll_candidate=cat["nc"],
                           sequence=cat["seq"], kld_lower=cat["lo"], kld_upper=cat["up"] if upper else None)


def _as_topk(b: PromptDistributions, c: PromptDistributions) -> tuple[PromptDistributions, PromptDistributions]:
    """Bounds work on top-k lists: a side given in full is cut to the other side's k (what both share)."""
    k = min(b.top_ids.shape[1] if b.full is None else c.top_ids.shape[1],
            c.top_ids.shape[1] if c.full is None else b.top_ids.shape[1])
    return tuple(kl_bounds.truncate(d, k, keep_floor=True) if d.full is not None else d  # type: ignore[return-value]
                 for d in (b, c))


def compare_backends(baseline: Any, candidate: Any, sequences: Sequence[Sequence[int]],
                     batch_size: int = 8) -> TokenComparison:
    """Run two backends on the same token sequences, a batch at a time (bounded memory)."""
    def pairs() -> Iterator[tuple[PromptDistributions, PromptDistributions]]:
        for start in range(0, len(sequences), batch_size):
            batch = [tuple(s) for s in sequences[start:start + batch_size]]
            yield from zip(baseline.prompt_distributions(batch), candidate.prompt_distributions(batch))

    return compare_distributions(pairs())


def _mean_ci(values: np.ndarray, clusters: np.ndarray, confidence: float) -> tuple[float, tuple[float, float], float]:
    mean = float(values.mean())
    if len(np.unique(clusters)) < 2:
        return mean, (math.nan, math.nan), math.nan
    z = norm.ppf(0.5 + confidence / 2)
    se = stats.clustered_se(values, clusters)
    return mean, (mean - z * se, mean + z * se), se


def _kld_stats(values: np.ndarray, clusters: np.ndarray, confidence: float, kind: str) -> dict[str, Any]:
    mean, ci, se = _mean_ci(values, clusters, confidence)
    return {"kind": kind, "kld_mean": mean, "kld_mean_ci": list(ci), "kld_se": se,
            "kld_p90": float(np.percentile(values, 90)), "kld_p99": float(np.percentile(values, 99)),
            "kld_p999": float(np.percentile(values, 99.9)), "kld_max": float(values.max())}


def summarize(cmp: TokenComparison, confidence: float = 0.95) -> dict[str, Any]:
    """The numbers reports and the gate use (JSON-serialisable), each with its kind (module docstring).

    Percentiles of per-token bounds bound the percentiles of the true values (if every x_i <= y_i, every
    order statistic of x is <= that of y), so they keep their bound's kind.
    """
    if cmp.top1_same.size == 0:
        return {"n_tokens": 0}
    top1, top1_ci, top1_se = _mean_ci(cmp.top1_same, cmp.sequence, confidence)
    diff = cmp.nll_candidate - cmp.nll_baseline
    log_ratio, log_ratio_ci, _ = _mean_ci(diff, cmp.sequence, confidence)
    out: dict[str, Any] = {"n_tokens": int(cmp.top1_same.size), "n_sequences": int(len(np.unique(cmp.sequence)))}
    if cmp.exact:
        kl = _kld_stats(cmp.kld, cmp.sequence, confidence, "exact")
        out["kld_kind"] = "exact"
        out.update({k: v for k, v in kl.items() if k != "kind"})
        kinds = dict.fromkeys(("kld_mean", "kld_mean_ci", "kld_se", "kld_p90", "kld_p99", "kld_p999", "kld_max"),
                              "exact")
    else:
        lower = _kld_stats(cmp.kld_lower, cmp.sequence, confidence, "lower_bound")
        upper = (_kld_stats(cmp.kld_upper, cmp.sequence, confidence, "upper_bound")
                 if cmp.kld_upper is not None else None)
        out["kld_kind"] = "bounds"
        out["kld_lower"], out["kld_upper"] = lower, upper
        # The gate's keys, conservative: the mean and percentiles are the lower bound's; the interval runs
        # from the lower bound's lower end to the upper bound's upper end (it covers the true mean with at
        # least the stated confidence: each end fails with at most half of 1 - confidence).
        out.update({k: lower[k] for k in ("kld_mean", "kld_se", "kld_p90", "kld_p99", "kld_p999", "kld_max")})
        kinds = dict.fromkeys(("kld_mean", "kld_se", "kld_p90", "kld_p99", "kld_p999", "kld_max"), "lower_bound")
        if upper is not None:
            out["kld_mean_ci"] = [lower["kld_mean_ci"][0], upper["kld_mean_ci"][1]]
            kinds["kld_mean_ci"] = "lower_to_upper"
        else:  # no upper end exists (module docstring): the interval is open above
            out["kld_mean_ci"] = [lower["kld_mean_ci"][0], None]
            kinds["kld_mean_ci"] = "lower_bound_only"
    out.update({
        "top1_agree": top1, "top1_agree_ci": list(top1_ci), "top1_agree_se": top1_se,
        "ppl_baseline": float(math.exp(cmp.nll_baseline.mean())),
        "ppl_candidate": float(math.exp(cmp.nll_candidate.mean())),
        "ppl_ratio": float(math.exp(log_ratio)), "ppl_ratio_ci": [math.exp(x) for x in log_ratio_ci],
        "confidence": confidence, "interval": "normal, SE clustered by sequence",
    })
    kinds.update(dict.fromkeys(("top1_agree", "top1_agree_ci", "ppl_ratio", "ppl_ratio_ci"), "exact"))
    out["kinds"] = kinds
    return out


def has_upper_side(section: dict[str, Any]) -> bool:
    """True when a section's KL is exact or bounded from above (PASS is possible on it)."""
    return section.get("kld_kind") == "exact" or (section.get("kld_kind") == "bounds"
                                                  and section.get("kld_upper") is not None)


def short(section: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of a section that reports put beside another one (e.g. a noise floor)."""
    keys = ("n_tokens", "kld_kind", "kld_mean", "kld_mean_ci", "kld_se", "kld_p99", "top1_agree", "ppl_ratio")
    out = {k: section.get(k) for k in keys if k in section}
    if section.get("kld_kind") == "bounds":
        out["kld_lower"] = section.get("kld_lower")
        out["kld_upper"] = section.get("kld_upper")
    return out


def take_tokens(sequences: Sequence[Sequence[int]], budget: int) -> list[list[int]]:
    """Sequences in order until `budget` predicted tokens are covered (the last one cut to fit)."""
    out, used = [], 0
    for seq in sequences:
        if used >= budget:
            break
        seq = list(seq)[: budget - used + 1]
        if len(seq) >= 2:
            out.append(seq)
            used += len(seq) - 1
    return out


def task_prompt_sequences(ctx: Any, limit: int) -> list[list[int]]:
    """Token ids of the suite's task prompts (the first docs of each task, prompt + gold answer)."""
    from lm_eval.tasks import get_task_dict

    if limit <= 0:
        return []
    per_task = max(1, limit // len(ctx.suite.tasks))
    out: list[list[int]] = []
    tasks = get_task_dict([t.name for t in ctx.suite.tasks], ctx.task_manager)
    for spec in ctx.suite.tasks:
        task = tasks[spec.name]
        docs = task.test_docs() or task.validation_docs()
        for i, doc in enumerate(docs):
            if i >= per_task:
                break
            target = task.doc_to_target(doc)
            choices = task.doc_to_choice(doc) if task.OUTPUT_TYPE == "multiple_choice" else None
            answer = choices[target] if choices and isinstance(target, int) else str(target)
            out.append(ctx.tokenizer(f"{task.doc_to_text(doc)} {answer}", add_special_tokens=False)["input_ids"])
    return out
