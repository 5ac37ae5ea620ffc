"""The gate's messages: each rule's outcome in plain words with its evidence. Renders; never decides.

Every function reads a verdict already decided in qeval.gate.rules and the numbers behind it.
"""

from __future__ import annotations

from typing import Sequence

from qeval.gate.outcomes import RuleResult, TaskDecision
from qeval.gate.policy import GatePolicy
from qeval.gate.rules import FlipOutcome, KldOutcome, LatencyOutcome, TaskStats

CORRECTION_NAME = {"bonferroni": "Bonferroni", "holm": "Holm", "bh": "BH", "none": "unadjusted"}


def fmt_p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def _pts(x: float) -> str:
    return f"{x:+.2f}"


def task_message(cell: str, st: TaskStats, td: TaskDecision, policy: GatePolicy) -> str:
    ev, ni = st.ev, td.noninferiority
    corr = CORRECTION_NAME.get(td.correction, td.correction)
    conf = f"{td.confidence:.0%}"
    name = f"{ev.task} {ev.metric}"
    if td.margin_kind == "absolute":
        what = (f"delta {_pts(td.estimate)} pts [{_pts(td.ci[0])}, {_pts(td.ci[1])}] ({conf} CI, {td.method}), "
                f"margin -{td.margin:.2f} pts")
        where_lo, where_hi = "lower bound above the margin", "upper bound below the margin"
    else:
        what = (f"recovery {td.estimate:.2%} [{td.ci[0]:.2%}, {td.ci[1]:.2%}] ({conf} CI, {td.method}; "
                f"delta {_pts(td.delta_pts)} pts), required {1 - td.margin:.2%}")
        where_lo, where_hi = "lower bound above the requirement", "upper bound below the requirement"
    direction = "" if ev.higher_is_better else " (lower is better; oriented so negative is worse)"
    flips = ""
    if td.n10 is not None:
        flips = (f", {td.n10} answers lost / {td.n01} gained (flip rate {td.flip_rate:.1%}, "
                 f"McNemar p={fmt_p(td.mcnemar_p)})")  # type: ignore[arg-type]
    elif td.wilcoxon_p is not None:
        flips = f", Wilcoxon p={fmt_p(td.wilcoxon_p)}"
    p_text = f"non-inferiority p={fmt_p(td.pvalue)}"
    if td.correction != "none":
        p_text += f", {corr}-adjusted p={fmt_p(td.adjusted_pvalue)}"
    level = f"level {td.level:.3g}"
    trt = st.trt
    op = ">=" if trt.higher_is_better else "<="
    trt_text = (f"TRT-LLM rule: {'PASS' if trt.passed else 'FAIL'} ({trt.accuracy:.2f} "
                f"{op if trt.passed else ('<' if trt.higher_is_better else '>')} threshold {trt.threshold:.2f}; "
                f"sigma {trt.sigma:g}, theta {trt.theta:.2f} pts, scale {trt.scale:.2f} vs our paired SE "
                f"{st.gain.paired_se:.2f} pts: {st.gain.ratio:.1f}x)")
    verdict = td.verdict
    if td.decided_by == "trtllm":
        why = f"decided by the TRT-LLM rule (policy: trtllm); qeval paired rule: {ni.verdict} ({p_text})"
    elif td.sequential is not None:
        s = td.sequential
        looks = len(s.design.looks)
        if s.verdict == "PASS":
            why = (f"stopped at group-sequential look {s.look}/{looks} (n={s.n} of {s.design.max_n}): "
                   f"z={s.z:.2f} above the {s.design.spending} boundary {s.boundary:+.2f} ({level})")
        elif s.verdict == "FAIL":  # FAIL spends the unadjusted alpha, O'Brien-Fleming (qeval.gate.rules.task_rule)
            why = (f"stopped at group-sequential look {s.look}/{looks} (n={s.n} of {s.design.max_n}): "
                   f"z={s.z:.2f} below the FAIL boundary {s.fail_boundary:+.2f} (O'Brien-Fleming spending of "
                   "the unadjusted alpha)")
        elif s.verdict == "CONTINUE":
            why = (f"not settled: look {s.look}/{looks} reached (n={td.n} of {s.design.max_n} planned), z={s.z:.2f} "
                   f"between the boundaries {s.fail_boundary:+.2f} and {s.boundary:+.2f}; the run stopped here "
                   "(budget, or another rule of the cell failed)")
        else:
            why = (f"not settled at the final look {s.look}/{looks} (n={s.n}): z={s.z:.2f} between the FAIL "
                   f"boundary {s.fail_boundary:+.2f} and the {s.design.spending} PASS boundary {s.boundary:+.2f} "
                   f"({level})")
    elif td.anytime is not None:
        a = td.anytime
        if a.verdict == "PASS":
            why = (f"anytime-valid PASS at n={a.stopped_at}: the bet against inferiority reached "
                   f"{1 / a.alpha_pass:.3g} ({level}; e-value {a.e_pass:.3g}, p<={fmt_p(a.pvalue)})")
        elif a.verdict == "FAIL":
            why = f"anytime-valid FAIL at n={a.stopped_at}: the bet against non-inferiority reached {1 / a.alpha_fail:.3g}"
        else:
            why = (f"not settled: e-value {a.e_pass:.3g} of the {1 / a.alpha_pass:.3g} a PASS needs ({level}); "
                   f"confidence sequence [{_pts(a.lower * ev.points_per_unit)}, {_pts(a.upper * ev.points_per_unit)}] "
                   "pts; extending the run keeps alpha")
    elif verdict == "PASS":
        why = f"{where_lo} ({p_text} <= alpha {policy.alpha:g}; {level})"
    elif verdict == "FAIL":
        if ni.pvalue_inferior <= ni.alpha:
            why = f"{where_hi} (inferiority p={fmt_p(ni.pvalue_inferior)}; {p_text})"
        else:
            why = (f"point estimate below the margin with n={td.n} >= planned n={ni.n_adequate} "
                   f"for this discordance ({p_text})")
    else:
        adjusted = td.adjusted_pvalue
        why = f"not settled ({p_text} > alpha {policy.alpha:g}"
        if td.pvalue <= policy.alpha < adjusted:
            why += f"; passes unadjusted but not at the cell's {level} ({corr} over the planned cells)"
        why += ")"
    if td.verdict == "INCONCLUSIVE" and td.n_to_settle is not None:
        more = td.n_to_settle - td.n
        why += (f"; about {more:,} more samples (n={td.n_to_settle:,} in all) would settle it if the true "
                f"{'delta' if td.margin_kind == 'absolute' else 'recovery'} is near the observed one")
    if td.note:
        why += f"; decided by the fixed-n rule at the planned n ({td.note})"
    return f"{cell}: {verdict} — {name} {what}{direction}, n={td.n}{flips}; {why}. {trt_text}."


def flip_message(cell: str, out: FlipOutcome | None, policy: GatePolicy) -> str:
    if out is None:
        return (f"{cell}: INCONCLUSIVE — max flip rate {policy.max_flip_rate:.1%} is set but no 0/1-scored task was "
                "run, so flips cannot be counted.")
    interval = "per-task anytime-valid confidence sequences, combined" if out.method.startswith("betting") else \
        f"one-sided Wilson bounds at level {out.level:.3g} / {policy.alpha:g}"
    evidence = (f"flip rate {out.rate:.2%} [{out.lo:.2%}, {out.hi:.2%}] ({interval}; {out.flips} of {out.n} "
                f"answers over {out.tasks}), max {policy.max_flip_rate:.2%}")
    if out.verdict == "PASS":
        return f"{cell}: PASS — {evidence}."
    if out.verdict == "FAIL":
        return (f"{cell}: FAIL — {evidence}: even the lower bound is above it "
                "(Dutta et al. 2024: flips hide behind a steady accuracy).")
    return f"{cell}: INCONCLUSIVE — {evidence}: the interval straddles the limit."


def kld_message(cell: str, out: KldOutcome, policy: GatePolicy) -> str:
    limit = policy.max_kld_mean
    if out.ev is None:
        return f"{cell}: INCONCLUSIVE — max KLD mean {limit:g} is set but there is {out.reason}."
    dv = out.ev
    bounds = (f" [{out.lower:.4g}, {out.upper:.4g}]" if out.upper is not None and out.lower is not None
              and out.upper != out.lower else " (no interval recorded)")
    kind = "" if dv.bound == "exact" else f" ({dv.bound.replace('_', ' ')} from {dv.route or 'top-k'})"
    sim = " (simulated quantization)" if dv.simulated else ""
    evidence = (f"mean KL(baseline||candidate) {dv.kld_mean:.4g}{kind}{bounds} nats/token over {dv.n_tokens:,} "
                f"tokens (one-sided bounds at level {out.level:.3g} / {policy.alpha:g}), max {limit:g}; p99 "
                f"{dv.kld_p99:.4g}, top-1 agreement {dv.top1_agree:.2%}{sim}")
    if out.verdict in ("PASS", "FAIL"):
        return f"{cell}: {out.verdict} — {evidence}."
    return f"{cell}: INCONCLUSIVE — {evidence}: {out.reason}."


def _ms_or_dash(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def latency_message(cell: str, out: LatencyOutcome) -> str:
    slo = out.slo
    load = (f"concurrency {slo.concurrency}" if slo.concurrency is not None
            else f"{slo.request_rate:g} req/s" if slo.request_rate is not None else "the measured load")
    label = f"{slo.metric.upper()} p{slo.percentile:g} at {load}"
    if out.x is None:
        return f"{cell}: INCONCLUSIVE — no latency evidence for {label} (SLO {slo.max_ms:g} ms)."
    x = out.x
    ci = f" [{_ms_or_dash(x.ci_ms[0])}, {_ms_or_dash(x.ci_ms[1])}]" if x.ci_ms is not None else " (no CI given)"
    evidence = (f"{label} = {x.value_ms:.1f} ms{ci}, SLO <= {slo.max_ms:g} ms (n={x.n}, "
                f"{x.warmup_excluded} warm-up requests excluded)")
    if out.verdict in ("PASS", "FAIL"):
        return f"{cell}: {out.verdict} — {evidence}."
    if out.reason == "too few samples to bound it":
        return (f"{cell}: INCONCLUSIVE — {evidence}: {x.n} samples cannot bound a p{slo.percentile:g} from above "
                f"at level {out.level:.3g}; it takes at least {out.needed:,} (latency.num_requests).")
    return f"{cell}: INCONCLUSIVE — {evidence}: {out.reason}."


def agree_message(cand: str, required: Sequence[str], verdicts: dict[str, str | None], passed: bool | None) -> str:
    listing = ", ".join(f"{be} {v or 'not run'}" for be, v in verdicts.items())
    if passed is False:
        blocked = ", ".join(be for be, v in verdicts.items() if v == "BLOCK")
        return (f"{cand}: FAIL — it must ship on every one of {', '.join(required)} but is blocked on {blocked} "
                f"({listing}).")
    if passed is True:
        return f"{cand}: PASS — ships on every required backend ({listing})."
    return f"{cand}: INCONCLUSIVE — not yet shippable on every required backend ({listing})."


def summary(cand: str, backend: str, verdict: str, rules: Sequence[RuleResult], simulated: bool) -> str:
    failed = [r.rule_id for r in rules if r.passed is False]
    open_ = [r.rule_id for r in rules if r.passed is None]
    text = f"{cand} on {backend}: {verdict}"
    if failed:
        text += f" — failed: {', '.join(failed)}"
    elif open_:
        text += f" — not settled: {', '.join(open_)}"
    else:
        text += f" — all {len(rules)} rules pass"
    if simulated:
        text += " (simulated quantization)"
    return text
