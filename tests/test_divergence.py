"""Divergence metrics: zero against itself, equal to a direct numpy computation, non-zero for a real quantization."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qeval import divergence


def _case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    base = torch.log_softmax(torch.tensor(rng.normal(size=(5, 7))), dim=-1)
    cand = torch.log_softmax(torch.tensor(rng.normal(size=(5, 7))), dim=-1)
    nxt = torch.tensor(rng.integers(0, 7, size=5))
    return base, cand, nxt


def test_against_itself_everything_is_neutral() -> None:
    base, _, nxt = _case()
    row = divergence.compare_logprobs(base, base, nxt)
    assert torch.allclose(row["kld"], torch.zeros(5), atol=1e-7)
    assert bool(row["top1_same"].all())
    cmp = divergence.TokenComparison(kld=row["kld"].numpy(), top1_same=row["top1_same"].numpy().astype(float),
                                     nll_baseline=row["nll_baseline"].numpy(), nll_candidate=row["nll_candidate"].numpy(),
                                     sequence=np.array([0, 0, 1, 1, 2]))
    s = divergence.summarize(cmp)
    assert s["kld_mean"] < 1e-7 and s["top1_agree"] == 1.0 and s["ppl_ratio"] == 1.0


def test_matches_direct_numpy() -> None:
    base, cand, nxt = _case()
    row = divergence.compare_logprobs(base, cand, nxt)
    p, q = np.exp(base.numpy()), np.exp(cand.numpy())
    kld = (p * (np.log(p) - np.log(q))).sum(axis=1)
    np.testing.assert_allclose(row["kld"].numpy(), kld, rtol=1e-5)
    np.testing.assert_array_equal(row["top1_same"].numpy(), p.argmax(1) == q.argmax(1))
    np.testing.assert_allclose(row["nll_candidate"].numpy(), -np.log(q[np.arange(5), nxt.numpy()]), rtol=1e-5)
    seq = np.array([0, 0, 1, 1, 2])
    cmp = divergence.TokenComparison(kld=kld, top1_same=(p.argmax(1) == q.argmax(1)).astype(float),
                                     nll_baseline=-np.log(p[np.arange(5), nxt.numpy()]),
                                     nll_candidate=-np.log(q[np.arange(5), nxt.numpy()]), sequence=seq)
    s = divergence.summarize(cmp)
    assert math.isclose(s["kld_mean"], kld.mean(), rel_tol=1e-9)
    assert math.isclose(s["kld_p99"], np.percentile(kld, 99), rel_tol=1e-9)
    nll_b = -np.log(p[np.arange(5), nxt.numpy()]).mean()
    nll_c = -np.log(q[np.arange(5), nxt.numpy()]).mean()
    assert math.isclose(s["ppl_ratio"], math.exp(nll_c - nll_b), rel_tol=1e-9)
    lo, hi = s["kld_mean_ci"]
    assert lo < s["kld_mean"] < hi


def test_take_tokens_respects_the_budget() -> None:
    seqs = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]]
    out = divergence.take_tokens(seqs, 5)
    assert sum(len(s) - 1 for s in out) == 5 and out[0] == [1, 2, 3, 4]


# ---- engine routes: exact vs top-k bounds (qeval.kl_bounds), the stored reference ---------------------
from qeval import kl_bounds  # noqa: E402
from qeval.backends.base import PromptDistributions  # noqa: E402


def _pair(scale: float, vocab: int = 400, n: int = 300, seed: int = 0) -> tuple[PromptDistributions, PromptDistributions]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, vocab)) * scale
    b = a + rng.normal(size=(n, vocab)) * 0.3
    seq = list(rng.integers(0, vocab, n + 1))
    p = torch.log_softmax(torch.tensor(a), -1).float().numpy()
    q = torch.log_softmax(torch.tensor(b), -1).float().numpy()
    return PromptDistributions.from_full(p, seq), PromptDistributions.from_full(q, seq)


def test_topk_bounds_hold_on_every_token_and_meet_the_exact_value_at_full_vocabulary() -> None:
    for scale in (0.5, 2.0, 6.0):  # flat to peaked distributions
        p, q = _pair(scale)
        exact = divergence.exact_kld(p.full, q.full)
        for k in (1, 5, 20, 100, 400):
            b = kl_bounds.topk_bounds(kl_bounds.truncate(p, k, keep_floor=False),
                                      kl_bounds.truncate(q, k, keep_floor=True))
            assert (b.lower <= exact + 1e-12).all(), (scale, k, (b.lower - exact).max())
            assert (b.upper >= exact - 1e-12).all(), (scale, k, (exact - b.upper).max())
            if k == 400:  # the whole vocabulary: both bounds are the value, up to the float32 slack
                np.testing.assert_allclose(b.lower, exact, atol=1e-4)
                np.testing.assert_allclose(b.upper, exact, atol=1e-4)


def test_no_upper_bound_exists_from_top_k_alone() -> None:
    """The counterexample of the module docstring: candidate mass moved inside its tail changes nothing a
    top-k API returns, yet the KL grows without limit. So without a floor the bound is one-sided."""
    vocab, k = 50, 5
    base = np.log(np.full((1, vocab), 1.0 / vocab))
    base[0, :k] = np.log(0.1)
    base = base - np.log(np.exp(base).sum())
    seq = [0, 0]
    readings = []
    for eps in (1e-3, 1e-9, 1e-30):
        cand = np.exp(base.copy())
        cand[0, k] = eps  # one tail token of the candidate goes to ~0 ...
        cand[0, k + 1] += np.exp(base[0, k]) - eps  # ... its mass moves to another tail token
        cand = np.log(cand)
        p, q = PromptDistributions.from_full(base, seq), PromptDistributions.from_full(cand, seq)
        shown_p, shown_q = kl_bounds.truncate(p, k, keep_floor=False), kl_bounds.truncate(q, k, keep_floor=False)
        readings.append((kl_bounds.topk_bounds(shown_p, shown_q).lower[0], divergence.exact_kld(p.full, q.full)[0],
                         shown_q.top_logprobs.copy()))
    (lo1, kl1, top1), (lo2, kl2, top2), (lo3, kl3, top3) = readings
    np.testing.assert_array_equal(top1, top3)  # what the API returns did not change
    assert lo1 == pytest.approx(lo3) and kl3 > kl2 > kl1 and kl3 > 20 * kl1  # ~ p_v log(p_v / eps): unbounded
    assert kl_bounds.topk_bounds(shown_p, shown_q).upper is None


def test_bounds_summary_keeps_the_gate_keys_conservative() -> None:
    p, q = _pair(2.0, n=120)
    tp, tq = kl_bounds.truncate(p, 20, keep_floor=False), kl_bounds.truncate(q, 20, keep_floor=True)
    rows = [tuple(PromptDistributions(targets=d.targets[s], target_logprobs=d.target_logprobs[s],
                                      top_ids=d.top_ids[s], top_logprobs=d.top_logprobs[s],
                                      floor=None if d.floor is None else d.floor[s]) for d in (tp, tq))
            for s in (slice(i * 10, i * 10 + 10) for i in range(12))]
    s = divergence.summarize(divergence.compare_distributions(rows))
    exact = divergence.exact_kld(p.full, q.full).mean()
    assert s["kld_kind"] == "bounds" and s["kinds"]["kld_mean"] == "lower_bound"
    assert s["kld_lower"]["kld_mean"] <= exact <= s["kld_upper"]["kld_mean"]
    assert s["kld_mean"] == s["kld_lower"]["kld_mean"]
    assert s["kld_mean_ci"] == [s["kld_lower"]["kld_mean_ci"][0], s["kld_upper"]["kld_mean_ci"][1]]
    assert s["kinds"]["kld_mean_ci"] == "lower_to_upper" and s["kinds"]["top1_agree"] == "exact"
    assert divergence.has_upper_side(s)
    # Top-1 agreement and PPL ratio are the exact ones (top-1 and the actual token are always returned).
    full = divergence.summarize(divergence.compare_distributions([(p, q)]))
    assert s["top1_agree"] == full["top1_agree"] and s["ppl_ratio"] == pytest.approx(full["ppl_ratio"])
    assert full["kld_kind"] == "exact" and full["kld_mean"] == pytest.approx(exact) and full["kinds"]["kld_p99"] == "exact"
    # Without the candidate's floor (every server): a lower bound, open above, never "has an upper side".
    no_floor = [(a, PromptDistributions(targets=b.targets, target_logprobs=b.target_logprobs, top_ids=b.top_ids,
                                        top_logprobs=b.top_logprobs)) for a, b in rows]
    s2 = divergence.summarize(divergence.compare_distributions(no_floor))
    assert s2["kld_upper"] is None and s2["kld_mean_ci"][1] is None and not divergence.has_upper_side(s2)
    assert s2["kinds"]["kld_mean_ci"] == "lower_bound_only"


def test_padded_server_rows_are_ignored() -> None:
    """A server may return fewer than k entries at a position (-1 ids, -inf log-probs pad the row)."""
    p, q = _pair(4.0, n=40)
    tp, tq = kl_bounds.truncate(p, 8, keep_floor=False), kl_bounds.truncate(q, 8, keep_floor=True)
    ref = kl_bounds.topk_bounds(tp, tq)
    for d in (tp, tq):
        d.top_ids = np.concatenate([d.top_ids, np.full((d.n, 3), -1)], axis=1)
        d.top_logprobs = np.concatenate([d.top_logprobs, np.full((d.n, 3), -np.inf, np.float32)], axis=1)
    padded = kl_bounds.topk_bounds(tp, tq)
    assert np.isfinite(padded.lower).all() and np.isfinite(padded.upper).all()
    assert (padded.lower <= divergence.exact_kld(p.full, q.full) + 1e-12).all()
    np.testing.assert_allclose(padded.lower, ref.lower, atol=1e-5)


def test_reference_is_stored_exactly_and_checked_against_the_tokens(tmp_path) -> None:
    from qeval.backends.base import DistributionRoute
    from qeval.reference import Reference, write_reference

    p, q = _pair(2.0, n=30)
    seqs = [list(range(11)), list(range(21))]
    dists = [PromptDistributions.from_full(p.full[:10], seqs[0]), PromptDistributions.from_full(p.full[10:30], seqs[1])]
    route = DistributionRoute(name="test-full", exact=True)
    info = write_reference(tmp_path / "ref", seqs, iter([dists[:1], dists[1:]]), lambda: route)
    assert info["n_tokens"] == 30 and info["bytes"] > 30 * 400 * 4
    ref = Reference(tmp_path / "ref")
    assert ref.route == route and len(ref) == 2 and ref.matches(seqs) and not ref.matches([seqs[1], seqs[0]])
    for i, d in enumerate(dists):
        got = ref.get(i)
        np.testing.assert_array_equal(np.asarray(got.full), d.full)
        np.testing.assert_array_equal(got.targets, d.targets)
    assert not (tmp_path / "ref.tmp").exists()


def test_references_are_pruned_only_when_no_candidate_can_need_them(tmp_path) -> None:
    from types import SimpleNamespace

    from qeval.engine_divergence import prune_references
    from qeval.runner import Cell
    from qeval.store import RunStore

    store = RunStore(tmp_path)
    for base in ("bf16-hf", "bf16-vllm"):
        (store.cell_dir(base) / "reference" / "heldout").mkdir(parents=True)
    cells = [Cell("bf16", "hf", True), Cell("bf16", "vllm", True), Cell("fp8", "hf", False), Cell("fp8", "vllm", False),
             Cell("int8_wo", "vllm", False)]
    ctx = SimpleNamespace(store=store, suite=SimpleNamespace(baseline="bf16"))
    store.write_status("fp8-hf", {"state": "ok"})
    store.write_json("fp8-hf", "divergence.json", {"role": "candidate"})
    store.write_status("fp8-vllm", {"state": "error", "cause": "boom"})  # a resume retries it: it needs the reference
    store.write_status("int8_wo-vllm", {"state": "not_run", "reason": "no load path"})  # never will
    assert prune_references(ctx, cells) == ["bf16-hf"]
    assert not (store.cell_dir("bf16-hf") / "reference").exists() and (store.cell_dir("bf16-vllm") / "reference").exists()
    store.write_status("fp8-vllm", {"state": "ok"})
    store.write_json("fp8-vllm", "divergence.json", {"role": "candidate"})
    assert prune_references(ctx, cells) == ["bf16-vllm"]
