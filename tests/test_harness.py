"""The lm-eval adapter on the real model: per-sample records, and a resumed run recomputes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mc_items import FIXTURE_TASKS

from qeval.backends.hf import HFBackend, load_hf_model
from qeval.evaluate import run_look
from qeval.harness import QevalLM
from qeval.store import RequestCache
from qeval.suite_sections import Seeds, TaskSpec


class CountingBackend:
    """The real HF backend, counting the requests that reach it (to see what the cache saves)."""

    def __init__(self, inner: HFBackend) -> None:
        self.inner, self.name, self.calls = inner, inner.name, 0

    def loglikelihood(self, requests: list[Any]) -> list[Any]:
        self.calls += len(requests)
        return self.inner.loglikelihood(requests)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)


def test_records_and_resume(qeval_model_dir: Path, qeval_tokenizer: Any, tmp_path: Path) -> None:
    from functools import partial

    from qeval.assets import bigbench

    # A task the tests make (tests/fixtures/tasks): the adapter's records do not need the BIG-bench archive.
    task_manager = partial(bigbench.task_manager, (str(FIXTURE_TASKS),),
                           with_pack=False)
    backend = CountingBackend(HFBackend(load_hf_model(qeval_model_dir), qeval_tokenizer))
    task = TaskSpec(name="qeval_addition_mc", limit=6)
    cache_path = tmp_path / "requests.jsonl"
    lm = QevalLM(backend, qeval_tokenizer, RequestCache(cache_path), batch_size=5)
    order = [5, 0, 3, 1, 4, 2]  # the sampling design's order, not lm-eval's first N
    records = run_look(lm, task, task_manager(), Seeds(), order, positions=range(6), look=0)
    assert [r["doc_id"] for r in records] == order
    assert [r["order"] for r in records] == list(range(6)) and {r["look"] for r in records} == {0}
    first = records[0]
    assert len(first["loglikelihoods"]) == len(first["choices"]) and 0 <= first["gold"] < len(first["choices"])
    assert first["chosen"] == max(range(len(first["choices"])), key=first["loglikelihoods"].__getitem__)
    assert first["correct"] == (first["chosen"] == first["gold"]) and first["score"] == float(first["correct"])
    calls = backend.calls
    assert calls == len(RequestCache(cache_path)) > 0
    # A torn last line (killed mid-write) is skipped; a fresh adapter over the same file
    # recomputes only that request and gives identical records.
    with open(cache_path, "a") as f:
        f.write('{"key": "torn')
    again = CountingBackend(backend.inner)
    records2 = run_look(QevalLM(again, qeval_tokenizer, RequestCache(cache_path)), task, task_manager(), Seeds(),
                        order, positions=range(6), look=0)
    assert again.calls == 0 and records2 == records
    assert cache_path.read_text().endswith("}\n")  # the torn half line is gone: appends start clean
    assert len(RequestCache(cache_path)) == calls
