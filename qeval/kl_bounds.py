"""Bounds on KL(P || Q) per token when an engine returns only the top-k log-probabilities.

P is the baseline's next-token distribution, Q the candidate's, at the same position of the same
token sequence. An OpenAI-compatible server returns, per position, the k most likely tokens with
their log-probabilities plus the actual next token's (``echo`` + ``logprobs``). From that:

Lower bound (data-processing inequality). Let A be the tokens whose probability is known on both
sides: the tokens in both top-k lists, plus the actual next token. Merging every other token into
one "rest" bucket R is a deterministic map of the vocabulary, and KL cannot grow under one:

    KL(P || Q) >= sum_{v in A} p_v log(p_v / q_v) + p_R log(p_R / q_R),   p_R = 1 - sum_A p, q_R = 1 - sum_A q.

Sound for BLOCK (a lower bound above the limit proves the true value is above it), never for PASS.

Upper bound (needs one more number). From top-k lists alone there is none: keep both lists and the
actual token's values fixed and move candidate mass inside Q's tail off a token v outside both lists
onto another tail token; nothing returned changes while p_v log(p_v / q_v) grows without limit as
q_v -> 0. What closes it is a floor q_min <= q_v for every v (the candidate's smallest probability at
that position). With it, every token outside A either has p known (in P's top-k, q unknown) or
p_v <= p_bar (outside P's top-k, p_bar = the k-th largest p), and q_v >= q_min, so

    KL(P || Q) <= sum_{v in A} p_v log(p_v / q_v)
                  + sum_{v in topk(P) \\ A} p_v log(p_v / q_min)
                  + m * log(p_bar / q_min),                       m = 1 - sum_{topk(P) u A} p,

because for the unknown mass m, sum p_v log p_v <= m log p_bar (each p_v <= p_bar) and
-sum p_v log q_v <= -m log q_min. It is attained in the worst case (put that mass on tokens where Q
sits at its floor), so it cannot be tightened without more data; how loose it is in practice is
measured against the exact value in benchmarks/bench_kl_bounds.py. No server API returns q_min, so
on servers only the lower bound exists; the hf backend has it (and is exact anyway).

Floating point: the returned log-probabilities are float32 (relative error ~2^-24 each), so the
masses p_R, q_R, m carry an absolute error up to about (k + 1) * 2^-23. Each bound takes the least
favourable value in that range (the rest term at its minimum over p_R and q_R; m at its largest
where its factor is positive), so rounding cannot make them claim more than the data shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qeval.backends.base import PromptDistributions

_EPS32 = 2.0 ** -23
_ROWS = 256  # positions per vectorised block (the match array is rows x k x k)


@dataclass(frozen=True)
class KLBounds:
    """Per-position bounds on KL(P || Q), nats.

    Attributes:
        lower: [n] lower bounds (always available).
        upper: [n] upper bounds, or None when the candidate side carries no floor.
    """

    lower: np.ndarray
    upper: np.ndarray | None


def _rest_term(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """p log(p / q) with 0 log 0 = 0 (q > 0 always here)."""
    out = np.zeros_like(p)
    pos = p > 0
    out[pos] = p[pos] * (np.log(p[pos]) - np.log(q[pos]))
    return out


def _block(base: PromptDistributions, cand: PromptDistributions, rows: slice) -> tuple[np.ndarray, np.ndarray | None]:
    p_ids = base.top_ids[rows].astype(np.int64)
    p_lp = base.top_logprobs[rows].astype(np.float64)
    q_ids = cand.top_ids[rows].astype(np.int64)
    q_lp = cand.top_logprobs[rows].astype(np.float64)
    tgt = base.targets[rows].astype(np.int64)
    tp_lp = base.target_logprobs[rows].astype(np.float64)
    tq_lp = cand.target_logprobs[rows].astype(np.float64)
    kp, kq = p_ids.shape[1], q_ids.shape[1]

    valid_p, valid_q = p_ids >= 0, q_ids >= 0  # a server may return fewer than k entries: -1 pads a row
    match = (p_ids[:, :, None] == q_ids[:, None, :]) & valid_p[:, :, None] & valid_q[:, None, :]  # [r, kp, kq]
    in_q = match.any(axis=2)
    q_at = np.where(match, q_lp[:, None, :], 0.0).sum(axis=2)  # each id appears once in Q's list
    is_tgt = p_ids == tgt[:, None]
    q_at = np.where(is_tgt & ~in_q, tq_lp[:, None], q_at)  # the actual token's q is always known
    known = in_q | is_tgt  # p and q both known: these P entries are in A
    tgt_outside = ~is_tgt.any(axis=1)  # the actual token is not in P's list: A gets it separately

    p_lp = np.where(valid_p, p_lp, 0.0)
    p = np.where(valid_p, np.exp(p_lp), 0.0)
    q = np.exp(q_at)
    s_a = np.where(known, p * (p_lp - q_at), 0.0).sum(axis=1)
    p_a = np.where(known, p, 0.0).sum(axis=1)
    q_a = np.where(known, q, 0.0).sum(axis=1)
    pt, qt = np.exp(tp_lp), np.exp(tq_lp)
    s_a += np.where(tgt_outside, pt * (tp_lp - tq_lp), 0.0)
    p_a += np.where(tgt_outside, pt, 0.0)
    q_a += np.where(tgt_outside, qt, 0.0)

    slack_p, slack_q = (kp + 1) * _EPS32, (kq + 1) * _EPS32
    # The rest bucket's term p log(p/q) at its smallest over the masses rounding allows: it falls with q,
    # and in p it is convex with its minimum at p = q/e.
    q_rest = np.maximum(1.0 - q_a, 0.0) + slack_q
    p_rest = np.clip(q_rest / np.e, np.maximum(1.0 - p_a - slack_p, 0.0), np.maximum(1.0 - p_a + slack_p, 0.0))
    lower = np.maximum(s_a + _rest_term(p_rest, q_rest), 0.0)  # KL >= 0 as well

    if cand.floor is None:
        return lower, None
    lq_min = np.minimum(cand.floor[rows].astype(np.float64), np.where(valid_q, q_lp, np.inf).min(axis=1))
    unknown_q = ~known & valid_p
    upper = s_a + np.where(unknown_q, p * (p_lp - lq_min[:, None]), 0.0).sum(axis=1)
    if kp < _vocab_hint(base):
        m = np.maximum(1.0 - p.sum(axis=1) - np.where(tgt_outside, pt, 0.0), 0.0) + slack_p
        log_p_bar = np.where(valid_p, p_lp, np.inf).min(axis=1)  # the k-th largest p bounds every other one
        upper += m * np.maximum(log_p_bar - lq_min, 0.0)  # m is only known to lie in [0, m]
    return lower, upper


def _vocab_hint(d: PromptDistributions) -> int:
    """The vocabulary size where the distribution is full (then P's list covers everything)."""
    return d.full.shape[1] if d.full is not None else np.iinfo(np.int64).max


def topk_bounds(base: PromptDistributions, cand: PromptDistributions) -> KLBounds:
    """Per-position bounds on KL(base || cand) from the top-k lists and the actual tokens' values.

    Both sides must describe the same positions of the same sequence (same targets). A side whose
    `full` distribution is known may pass k = vocabulary; the candidate's `floor` enables the upper bound.
    """
    if base.n != cand.n or not np.array_equal(base.targets, cand.targets):
        raise ValueError("baseline and candidate distributions are not over the same tokens")
    lows, ups = [], []
    for start in range(0, base.n, _ROWS):
        lo, up = _block(base, cand, slice(start, start + _ROWS))
        lows.append(lo)
        ups.append(up)
    lower = np.concatenate(lows) if lows else np.zeros(0)
    upper = None if cand.floor is None else (np.concatenate(ups) if ups else np.zeros(0))
    return KLBounds(lower=lower, upper=upper)


def truncate(d: PromptDistributions, k: int, *, keep_floor: bool) -> PromptDistributions:
    """What a top-k API would have returned from a full distribution (for testing the bounds)."""
    if d.full is None:
        raise ValueError("truncate needs the full distribution")
    top = PromptDistributions.from_full_top(d.full, d.targets, k)
    return PromptDistributions(targets=d.targets, target_logprobs=d.target_logprobs, top_ids=top.top_ids,
                               top_logprobs=top.top_logprobs, full=None,
                               floor=d.full.min(axis=1) if keep_floor else None)
