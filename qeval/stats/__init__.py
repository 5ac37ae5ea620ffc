"""Paired statistics behind the gate: pure functions over per-sample scores.

Conventions (docs/statistics.md says what the gate builds from them):
- `baseline` and `candidate` are per-sample scores matched by lm-eval doc_id
  (same order), in the metric's own units (0/1 for accuracy-like metrics).
  d_i = candidate_i - baseline_i, so a negative delta is a regression.
- For binary scores, n10 counts samples the baseline got right and the
  candidate got wrong (a lost answer), n01 the reverse (a gained answer).
- Non-inferiority at margin m: H0 "delta <= -m" (absolute) or
  "candidate/baseline <= 1 - m" (relative "recovery", Kurtic et al. 2024).
  One-sided level alpha, so the interval that carries the decision is the
  two-sided (1 - 2 alpha) interval: its lower end is the one-sided bound.
- Every function is deterministic: bootstraps draw from
  `np.random.default_rng(seed)`.

Nothing here reads or writes files; results are small frozen dataclasses.

The package, one concern per module: anytime, paired, bootstrap, tango, multiplicity, planning, noninferiority, percentiles, trtllm, sequential, simulate.
Every name is re-exported here: `from qeval import stats; stats.noninferiority(...)`.
"""

from __future__ import annotations

from qeval.stats._inputs import (  # noqa: F401
    Correction,
    IntervalMethod,
    MarginKind,
    SequentialVerdict,
    Spending,
    Verdict,
    _CHUNK_ELEMENTS,
    _as_scores,
    _cluster_index,
    _paired,
    is_binary,
)
from qeval.stats.paired import (  # noqa: F401
    McNemar,
    PairedDelta,
    Recovery,
    Wilcoxon,
    _fieller,
    _mean_covariance,
    _resolve_method,
    _se_from,
    clustered_se,
    mcnemar_exact,
    mcnemar_from_counts,
    paired_delta,
    recovery_ratio,
    wilcoxon_signed_rank,
)
from qeval.stats.bootstrap import (  # noqa: F401
    _Bootstrap,
    _bca_level,
    _bias_z0,
    _bootstrap_bounds,
    _bootstrap_pvalues,
    _bootstrap_statistic,
    _delta_units,
    _jackknife_acceleration,
    _quantile_sorted,
    _ratio_of_sums,
    _ratio_units,
    _resample_sums,
)
from qeval.stats.tango import (  # noqa: F401
    _tango_interval,
    _tango_restricted_p10,
    _tango_z,
)
from qeval.stats.multiplicity import (  # noqa: F401
    adjust_pvalues,
    bh_adjust,
    holm_adjust,
    next_rejection_level,
)
from qeval.stats.planning import (  # noqa: F401
    SamplePlan,
    _n_for_distance,
    _required_n_binary,
    _sd_for_plan,
    minimum_detectable_effect,
    required_n,
)
from qeval.stats.noninferiority import (  # noqa: F401
    NonInferiority,
    _binary_ni_arrays,
    _binary_wald,
    _n_to_settle,
    _normal_pvalues,
    noninferiority,
    noninferiority_verdict,
)
from qeval.stats.percentiles import (  # noqa: F401
    PercentileEstimate,
    SpeedUp,
    percentile_ci,
    samples_for_upper_bound,
    speedup_ratio,
)
from qeval.stats.trtllm import (  # noqa: F401
    PairingGain,
    TRTLLM_DEFAULTS,
    TrtllmDecision,
    TrtllmParams,
    pairing_gain,
    trtllm_rule,
    trtllm_scale,
    trtllm_theta,
    trtllm_threshold,
)
from qeval.stats.sequential import (  # noqa: F401
    GroupSequentialDesign,
    SequentialDecision,
    _sequential_outcome,
    _upper_boundaries,
    crossing_probability,
    group_sequential_design,
    inflation_factor,
    planned_n,
    sequential_noninferiority,
    spending_function,
)
from qeval.stats.anytime import (  # noqa: F401
    AnytimeDecision,
    anytime_noninferiority,
    confidence_sequence,
    predictable_bets,
    wealth,
)
from qeval.stats.simulate import (  # noqa: F401
    DecisionSimulation,
    SequentialSimulation,
    paired_binary_scores,
    simulate_coverage,
    simulate_noninferiority,
    simulate_paired_binary,
    simulate_sequential,
    wilson_interval,
)

__all__ = [
    'AnytimeDecision',
    'anytime_noninferiority',
    'confidence_sequence',
    'predictable_bets',
    'wealth',
    'Correction',
    'DecisionSimulation',
    'GroupSequentialDesign',
    'IntervalMethod',
    'MarginKind',
    'McNemar',
    'NonInferiority',
    'PairedDelta',
    'PairingGain',
    'PercentileEstimate',
    'Recovery',
    'SamplePlan',
    'SequentialDecision',
    'SequentialSimulation',
    'SequentialVerdict',
    'SpeedUp',
    'Spending',
    'TRTLLM_DEFAULTS',
    'TrtllmDecision',
    'TrtllmParams',
    'Verdict',
    'Wilcoxon',
    'adjust_pvalues',
    'bh_adjust',
    'clustered_se',
    'group_sequential_design',
    'crossing_probability',
    'inflation_factor',
    'planned_n',
    'holm_adjust',
    'is_binary',
    'mcnemar_exact',
    'mcnemar_from_counts',
    'minimum_detectable_effect',
    'next_rejection_level',
    'noninferiority',
    'noninferiority_verdict',
    'paired_binary_scores',
    'paired_delta',
    'pairing_gain',
    'percentile_ci',
    'recovery_ratio',
    'required_n',
    'samples_for_upper_bound',
    'sequential_noninferiority',
    'simulate_coverage',
    'simulate_noninferiority',
    'simulate_paired_binary',
    'simulate_sequential',
    'speedup_ratio',
    'spending_function',
    'trtllm_rule',
    'trtllm_scale',
    'trtllm_theta',
    'trtllm_threshold',
    'wilcoxon_signed_rank',
    'wilson_interval',
]
