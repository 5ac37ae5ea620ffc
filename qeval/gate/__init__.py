"""The gate: a policy, the planned family and a run's evidence -> SHIP / BLOCK / INCONCLUSIVE per cell.

One concern per module, in the order the decision flows:
- policy: the `gate:` section of a suite (pydantic);
- evidence: the frozen records `decide` reads (per-sample task scores, divergence, latency, crashes);
- family: which claims share alpha (fixed by the suite's plan);
- rules: each rule's statistics and verdict — the only place a verdict is decided;
- messages: each outcome in words (renders, never decides);
- outcomes: RuleResult, TaskDecision, Decision;
- decide: the orchestration.
"""

from __future__ import annotations

from qeval.gate.decide import RESERVED, decide, planned_rules, safe_rule_id
from qeval.gate.evidence import (DivergenceEvidence, ErrorEvidence, Evidence, LatencyEvidence, NotEvaluated,
                                 TaskEvidence)
from qeval.gate.family import Family
from qeval.gate.outcomes import Decision, GateVerdict, RuleResult, RuleVerdict, TaskDecision
from qeval.gate.policy import GatePolicy, LatencySLO, TrtllmRulePolicy
from qeval.gate.rules import aggregate, sequential_blocker

__all__ = ["Decision", "DivergenceEvidence", "ErrorEvidence", "Evidence", "Family", "GatePolicy", "GateVerdict",
           "LatencyEvidence", "LatencySLO", "NotEvaluated", "RESERVED", "RuleResult", "RuleVerdict", "TaskDecision", "TaskEvidence",
           "TrtllmRulePolicy", "aggregate", "decide", "planned_rules", "safe_rule_id", "sequential_blocker"]
