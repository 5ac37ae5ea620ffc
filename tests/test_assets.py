"""The offline assets are real: a model that runs and BIG-bench tasks lm-eval resolves."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from qeval.assets import bigbench
from qeval.assets.download import Distribution, verify
from qeval.assets.model import model_hash
from qeval.errors import QevalError


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_model_folder_loads_and_runs(qeval_model_dir: Path, qeval_tokenizer, dtype: torch.dtype) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(qeval_model_dir, dtype=dtype, local_files_only=True)
    ids = qeval_tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    assert qeval_tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"


def test_model_hash_is_stable_and_sees_weight_changes(qeval_model_dir: Path, tmp_path: Path) -> None:
    assert model_hash(qeval_model_dir) == model_hash(qeval_model_dir)
    copy = tmp_path / "m"
    shutil.copytree(qeval_model_dir, copy)
    assert model_hash(copy) == model_hash(qeval_model_dir)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert model_hash(copy) != model_hash(qeval_model_dir)


@pytest.mark.bigbench
def test_task_pack_has_the_bigbench_mc_tasks(qeval_task_pack: Path) -> None:
    tasks = bigbench.list_tasks()
    assert len(tasks) >= 80
    for name in ("phrase_relatedness", "social_iqa", "physics", "general_knowledge", "strategyqa"):
        assert f"bigbench_mc_{name}" in tasks
    manager = bigbench.task_manager()
    assert "bigbench_mc_physics" in manager.all_tasks


@pytest.mark.bigbench
def test_lm_eval_builds_docs_from_the_pack(qeval_task_pack: Path) -> None:
    from lm_eval.tasks import get_task_dict

    task = get_task_dict(["bigbench_mc_physics"], bigbench.task_manager())["bigbench_mc_physics"]
    docs = list(task.test_docs())
    assert len(docs) == 229
    doc = docs[0]
    choices = task.doc_to_choice(doc)
    assert len(choices) == 4 and 0 <= task.doc_to_target(doc) < len(choices)
    assert task.doc_to_text(doc).endswith("A:") and "choice: F = q * E" in task.doc_to_text(doc)
    assert (qeval_task_pack / ".datasets-cache").is_dir()  # datasets' Arrow cache stays inside the pack


def test_corrupt_download_is_rejected(tmp_path: Path) -> None:
    good = Distribution("x", "1", "x.bin", "0" * 64)
    path = tmp_path / "x.bin"
    path.write_bytes(b"not the pinned bytes")
    with pytest.raises(QevalError) as info:
        verify(path, good)
    assert "sha256" in info.value.render() and "qeval fetch" in info.value.fix


@pytest.mark.bigbench
def test_unknown_and_hub_tasks_get_clear_messages(qeval_task_pack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    manager = bigbench.task_manager()
    with pytest.raises(QevalError) as info:
        bigbench.resolve_task("bigbench_mc_phsyics", manager)
    assert "bigbench_mc_physics" in info.value.render()
    with pytest.raises(QevalError) as info:
        bigbench.resolve_task("arc_easy", manager)
    assert "dataset hub" in info.value.problem and "bigbench_mc_" in info.value.fix
    bigbench.resolve_task("bigbench_mc_physics", manager)  # no error


@pytest.mark.bigbench
def test_second_fetch_rebuilds_nothing(qeval_model_dir: Path, qeval_task_pack: Path) -> None:
    from qeval.assets import fetch_all
    from qeval.assets.model import ASSET_FILE

    stamps = [(qeval_model_dir / ASSET_FILE).stat().st_mtime_ns, (qeval_task_pack / bigbench.DONE).stat().st_mtime_ns]
    assert fetch_all() == {"smollm2-135m-instruct": qeval_model_dir, "bigbench task pack": qeval_task_pack}
    assert stamps == [(qeval_model_dir / ASSET_FILE).stat().st_mtime_ns,
                      (qeval_task_pack / bigbench.DONE).stat().st_mtime_ns]
