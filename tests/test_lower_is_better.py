"""A lower-is-better lm-eval metric end to end (issue 17, metric semantics from lm-eval): the example task
folder's perplexity task (suites/examples/tasks/fact_claims_ppl.yaml, real offline text) gets its direction
from lm-eval, its per-document score is lm-eval's bits per byte, and a clustered test reports the clustered
SE beside the plain one."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "qeval" / "suites" / "examples"


@pytest.mark.bigbench
def test_perplexity_task_direction_scores_and_clusters(qeval_model_dir: Path, qeval_tokenizer: Any,
                                                        qeval_task_pack: Path, tmp_path: Path) -> None:
    from qeval.assets.bigbench import suite_task_manager
    from qeval.backends.hf import HFBackend, load_hf_model
    from qeval.evaluate import lm_eval_task, metric_semantics, run_look
    from qeval.harness import QevalLM
    from qeval.store import RequestCache
    from qeval.suite import Suite
    from qeval.suite_sections import Seeds, TaskSpec

    spec = TaskSpec(name="fact_claims_ppl", metric="bits_per_byte", cluster="subtask")
    suite = Suite(name="lib", candidates=["int8_wo"], tasks=[spec], task_dirs=["tasks"])
    manager = suite_task_manager(suite, EXAMPLES / "lower-is-better.yaml")
    task = lm_eval_task(manager, "fact_claims_ppl")
    docs = task.eval_docs
    assert len(docs) == 120 and {d["subtask"] for d in docs} == {"covid19_scientific", "fever", "politifact"}
    sem = metric_semantics(task, spec)
    assert sem.higher_is_better is False and "lm-eval" in sem.source  # lm-eval's registry, not assumed
    assert sem.aggregation == "bits_per_byte" and sem.points_per_unit == 1.0
    lm = QevalLM(HFBackend(load_hf_model(qeval_model_dir, "float32"), qeval_tokenizer), qeval_tokenizer,
                 RequestCache(tmp_path / "requests.jsonl"))
    ids = [0, 40, 80]  # one claim of each source
    records = run_look(lm, spec, manager, Seeds(), ids, positions=range(3), look=0, aggregation=sem.aggregation)
    assert [r["cluster"] for r in records] == ["covid19_scientific", "fever", "politifact"]
    for r, d in zip(records, ids):
        ll, n_bytes = r["metrics"]["bits_per_byte"]
        assert n_bytes == len(docs[d]["text"].encode("utf-8")) and ll < 0
        assert math.isclose(r["score"], -ll / (n_bytes * math.log(2)))  # lm-eval's bits_per_byte, per document
        assert 0.5 < r["score"] < 5


def test_lower_is_better_is_oriented_and_the_clustered_se_sits_beside_the_plain_one() -> None:
    from qeval.gate import GatePolicy, TaskEvidence
    from qeval.gate.rules import task_rule, task_stats

    rng = np.random.default_rng(0)
    base = rng.uniform(1.5, 2.5, 60)
    clusters = tuple(str(i % 3) for i in range(60))
    shift = np.array([0.0, 0.02, 0.04])[np.arange(60) % 3]  # the candidate is worse by source
    cand = base + shift + rng.normal(0, 0.005, 60)
    ev = TaskEvidence(task="ppl", metric="bits_per_byte", candidate="fp8", backend="hf", baseline_scores=base,
                      candidate_scores=cand, doc_ids=tuple(range(60)), clusters=clusters, higher_is_better=False,
                      points_per_unit=1.0, planned_n=60, semantics="direction from lm-eval's task config")
    policy = GatePolicy(margin=5.0, task_margins={"ppl": 0.05})
    st = task_stats(policy, ev, "ppl")
    t = task_rule(policy, st, level=0.05, multiplier=1.0, correction="none")
    assert t.higher_is_better is False and t.semantics.startswith("direction from lm-eval")
    assert t.delta_pts < 0 and math.isclose(t.delta_pts, -float(np.mean(cand - base)))  # higher bpb is worse
    ni = t.noninferiority
    assert ni.n_clusters == 3 and ni.se_unclustered is not None
    d = -(cand - base)
    assert math.isclose(ni.se_unclustered, float(np.std(d, ddof=1) / math.sqrt(60)))
    assert ni.se > ni.se_unclustered  # the shift shared within each source widens the clustered SE
