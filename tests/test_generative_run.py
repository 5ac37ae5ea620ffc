"""Generation end to end on the real model: a suite of two generative BIG-bench tasks through `qeval run`,
sampled repeats, and a standard lm-eval task YAML (gsm8k) on local files with few-shot and the chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qeval.store import RequestCache, RunStore

GEN_SUITE = """\
name: gen-small
description: two generative BIG-bench tasks (one a parent clustered by subtask) on hf, int8_wo against bf16
model: {{source: {model}}}
baseline: bf16
candidates: [int8_wo]
backends: [hf]
tasks:
  - {{name: bigbench_gen_simple_arithmetic_json_subtasks.one_digit, metric: exact_str_match, limit: 6,
     generation: {{max_gen_toks: 8}}}}
  - {{name: bigbench_gen_arithmetic, metric: exact_str_match, limit: 6, cluster: subtask,
     generation: {{max_gen_toks: 8}}}}
  - {{name: bigbench_mc_physics, limit: 6}}
calibration: bigbench-mixed
divergence: {{heldout_tokens: 64, task_prompts: 2}}
latency: {{enabled: false}}
gate: {{margin: 5.0, max_kld_mean: 0.1}}
"""

GEN_FIELDS = {"response", "extracted", "target", "score", "generated_tokens", "stop_reason"}


@pytest.mark.bigbench
@pytest.mark.slow
def test_a_suite_of_generative_tasks_runs_with_records_and_verdicts(tmp_path: Path, qeval_model_dir: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from qeval.cli import main

    suite = tmp_path / "suite.yaml"
    suite.write_text(GEN_SUITE.format(model=qeval_model_dir))
    rc = main(["run", str(suite), "--reports-dir", str(tmp_path / "reports")])
    out = capsys.readouterr()
    assert rc in (0, 1), out.err
    [run_dir] = list((tmp_path / "reports").iterdir())
    store = RunStore(run_dir)
    for cell in ("bf16-hf", "int8_wo-hf"):
        assert store.read_status(cell)["state"] == "ok", cell
        for task in ("bigbench_gen_simple_arithmetic_json_subtasks.one_digit", "bigbench_gen_arithmetic"):
            records = store.read_samples(cell, task)
            assert len(records) == 6
            for r in records:
                assert GEN_FIELDS <= set(r), r
                assert r["stop_reason"] in ("stop", "eos", "length") and 0 < r["generated_tokens"] <= 32
                assert r["score"] == float(r["extracted"] in r["target"])  # BIG-bench's exact_str_match
                assert r["response"].lstrip(" ").startswith(r["extracted"])  # the extraction is a prefix here
            assert all(r["generated_tokens"] <= 8 for r in records)  # the suite's generation override
            if task == "bigbench_gen_arithmetic":
                assert len({r["cluster"] for r in records}) > 1  # subtasks as clusters
    baseline = store.read_samples("bf16-hf", "bigbench_gen_simple_arithmetic_json_subtasks.one_digit")
    assert sum(r["score"] for r in baseline) >= 3  # this task is well above 0 for the 135M model (9/10 measured)
    results = json.loads((run_dir / "results.json").read_text())
    [decision] = [d for d in results["decisions"] if d["cell_id"] == "int8_wo-hf"]
    by_task = {t["task"]: t for t in decision["tasks"]}
    for task in ("bigbench_gen_simple_arithmetic_json_subtasks.one_digit", "bigbench_gen_arithmetic",
                 "bigbench_mc_physics"):
        t = by_task[task]
        assert t["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE") and t["n"] == 6
        assert t["flip_rate_ci"] is not None  # paired 0/1 scores: flips counted as for multiple choice
    assert "bigbench_gen_arithmetic" in (run_dir / "report.md").read_text()


@pytest.mark.bigbench
def test_sampled_repeats_draw_different_samples_and_cluster_by_item(qeval_model_dir: Path, qeval_tokenizer: Any,
                                                                    qeval_task_pack: Path, tmp_path: Path) -> None:
    from qeval.assets.bigbench import task_manager
    from qeval.backends.hf import HFBackend, load_hf_model
    from qeval.evaluate import run_look
    from qeval.harness import QevalLM
    from qeval.stats import paired_delta
    from qeval.suite_sections import Seeds, TaskSpec

    backend = HFBackend(load_hf_model(qeval_model_dir, "float32"), qeval_tokenizer)
    task = TaskSpec(name="bigbench_gen_simple_arithmetic_json_subtasks.one_digit", metric="exact_str_match",
                    repeats=2, generation={"temperature": 1.5, "do_sample": True, "max_gen_toks": 4})
    cache_path = tmp_path / "requests.jsonl"
    lm = QevalLM(backend, qeval_tokenizer, RequestCache(cache_path))
    docs = [0, 1, 2]
    records = run_look(lm, task, task_manager(), Seeds(), docs, positions=range(3), look=0)
    assert len(records) == 6 and {(r["doc_id"], r["repeat"]) for r in records} == {(d, k) for d in docs
                                                                                   for k in range(2)}
    assert all(r["cluster"] == r["doc_id"] for r in records)
    per_doc = {d: [r for r in records if r["doc_id"] == d] for d in docs}
    assert all(len({r["seed"] for r in rs}) == 2 for rs in per_doc.values())  # one seed per draw
    assert any(len({r["response"] for r in rs}) > 1 for rs in per_doc.values())  # draws differ
    assert len(RequestCache(cache_path)) == 6  # each draw its own cache entry, not one sample served twice
    # Resume: the same draws come back from the cell's cache, none recomputed.
    again = run_look(QevalLM(backend, qeval_tokenizer, RequestCache(cache_path)), task, task_manager(), Seeds(),
                     docs, positions=range(3), look=0)
    assert [r["response"] for r in again] == [r["response"] for r in records]
    # Clustered SE by item over the draws (against an all-wrong reference, so the SE is the draws' own).
    import numpy as np

    scores = np.array([r["score"] for r in records])
    clustered = paired_delta(np.zeros_like(scores), scores, clusters=[r["cluster"] for r in records])
    plain = paired_delta(np.zeros_like(scores), scores)
    assert clustered.n == 6 and clustered.n_clusters == 3 and plain.n_clusters is None
    assert np.isfinite(clustered.se) and np.isfinite(plain.se)


FIXTURE = Path(__file__).parent / "fixtures" / "gsm8k_schema"


def _gsm8k_local(folder: Path) -> Path:
    """lm-eval's own gsm8k.yaml, included unchanged, with only its data pointed at the local fixture."""
    import lm_eval

    gsm8k = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    folder.mkdir()
    (folder / "gsm8k_local.yaml").write_text("\n".join([
        f"include: {json.dumps(str(gsm8k))}",
        "task: gsm8k_local",
        "dataset_path: json",
        "dataset_name: null",
        "dataset_kwargs:",
        "  data_files:",
        f"    train: {json.dumps(str(FIXTURE / 'train.jsonl'))}",
        f"    test: {json.dumps(str(FIXTURE / 'test.jsonl'))}",
        f"  cache_dir: {json.dumps(str(folder / '.datasets-cache'))}", ""]))
    return folder


def test_gsm8k_yaml_on_local_files_with_fewshot_and_chat_template(qeval_model_dir: Path, qeval_tokenizer: Any,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from qeval.assets.bigbench import resolve_task, suite_task_manager
    from qeval.backends.hf import HFBackend, load_hf_model
    from qeval.evaluate import run_look
    from qeval.harness import QevalLM
    from qeval.suite import Suite
    from qeval.suite_sections import Seeds, TaskSpec

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    _gsm8k_local(tmp_path / "tasks")
    spec = TaskSpec(name="gsm8k_local", metric="exact_match", num_fewshot=2, apply_chat_template=True,
                    filter="flexible-extract", generation={"max_gen_toks": 24})
    suite = Suite(name="gsm8k-local", candidates=["int8_wo"], tasks=[spec], task_dirs=["tasks"])
    manager = suite_task_manager(suite, tmp_path / "suite.yaml")
    resolve_task("gsm8k_local", manager)  # a local-data task: no dataset-hub refusal
    lm = QevalLM(HFBackend(load_hf_model(qeval_model_dir, "float32"), qeval_tokenizer),
                 qeval_tokenizer, RequestCache(tmp_path / "requests.jsonl"))
    records = run_look(lm, spec, manager, Seeds(), [0, 2], positions=range(2), look=0)
    assert [r["doc_id"] for r in records] == [0, 2]
    contexts = [key[0] for key in lm.generation_log]
    assert len(contexts) == 2
    for context in contexts:  # the model's chat template: 2 few-shot turns from train, then the question
        assert context.count("<|im_start|>user") == 3 and context.count("<|im_start|>assistant") == 3
        assert "#### " in context
    assert any("Ben has 5 marbles" in c for c in contexts) and any("Mia baked" in c for c in contexts)
    for r in records:
        assert {"response", "extracted", "generated_tokens", "stop_reason"} <= set(r)
        assert r["score"] in (0.0, 1.0) and r["target"].endswith(("#### 7", "#### 10"))
