"""Real ModelOpt quantization of the real model: calibration, artifact cache, divergence."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from qeval import artifacts, compute
from qeval.backends.hf import HFBackend, load_hf_model
from qeval.calibration import load_calibration
from qeval.errors import QevalError
from qeval.suite import Suite


@dataclass
class _Ctx:
    """The parts of a run's context the quantizer reads (a real suite, model and tokenizer)."""

    suite: Suite
    model_dir: Path
    tokenizer: Any
    calibration: Any = None
    model_hash: str | None = None
    artifacts: dict = field(default_factory=dict)
    compute: Any = field(default_factory=compute.choose)  # what a run's Context chooses on this machine


@pytest.fixture(scope="module")
def ctx(qeval_model_dir: Path, qeval_tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> _Ctx:
    cal = tmp_path_factory.mktemp("cal") / "tiny.yaml"
    # Local text (the README): quantizing needs no BIG-bench archive.
    cal.write_text(f"name: tiny\nsource: {{kind: text, path: {Path(__file__).parents[1] / 'README.md'}}}\n"
                   "num_samples: 4\nseq_len: 64\nseed: 3\n")
    suite = Suite.model_validate({"name": "q", "candidates": ["int8_wo"], "calibration": str(cal),
                                  "tasks": [{"name": "bigbench_mc_physics", "limit": 4}]})
    return _Ctx(suite=suite, model_dir=qeval_model_dir, tokenizer=qeval_tokenizer)


@pytest.mark.bigbench
def test_calibration_refuses_overlap_with_eval_tasks(qeval_task_pack: Path, qeval_tokenizer: Any) -> None:
    with pytest.raises(QevalError) as info:
        load_calibration("bigbench-mixed", ["bigbench_mc_strategyqa"], qeval_tokenizer)
    assert "bigbench_mc_strategyqa" in info.value.problem and info.value.field == "source.tasks"


@pytest.mark.bigbench
def test_calibration_is_deterministic_and_disjoint(qeval_task_pack: Path, qeval_tokenizer: Any) -> None:
    a = load_calibration("bigbench-mixed", ["bigbench_mc_physics"], qeval_tokenizer)
    b = load_calibration("bigbench-mixed", ["bigbench_mc_physics"], qeval_tokenizer)
    assert a.content_hash == b.content_hash and a.calibration == b.calibration
    assert len(a.calibration) == a.spec.num_samples and all(len(s) <= a.spec.seq_len for s in a.calibration)
    assert not {tuple(s) for s in a.calibration} & {tuple(s) for s in a.heldout}


def test_cache_key_changes_with_every_input() -> None:
    base = dict(kind="k", model_hash="m", precision="fp8", recipe={"quant_cfg": [{"num_bits": 8}]},
                calibration_hash="c", versions={"torch": "2.13"}, device="cpu", compute_dtype="float32")
    key = artifacts.artifact_key(**base)
    assert artifacts.artifact_key(**dict(base)) == key
    for name, other in [("model_hash", "m2"), ("precision", "int8_wo"), ("recipe", {"quant_cfg": [{"num_bits": 4}]}),
                        ("calibration_hash", "c2"), ("versions", {"torch": "2.14"}), ("device", "NVIDIA H100"),
                        ("kind", "k2"), ("compute_dtype", "bfloat16")]:
        assert artifacts.artifact_key(**{**base, name: other}) != key, name


def test_int4_awq_on_width_576_fails_early_with_a_fix(ctx: _Ctx) -> None:
    from qeval.quantize import quantize_simulated

    model = load_hf_model(ctx.model_dir)
    with pytest.raises(QevalError) as info:
        quantize_simulated(model, "int4_awq", ctx)
    assert "576" in info.value.render() and "int4_awq_g64" in info.value.render()


def test_quantize_then_reuse_then_rebuild_corrupt(ctx: _Ctx) -> None:
    from qeval import divergence
    from qeval.quantize import quantize_simulated

    model, first = quantize_simulated(load_hf_model(ctx.model_dir), "int8_wo", ctx)
    folder = Path(artifacts.cache_subdir("artifacts")) / first["key"]
    if first["reused"]:  # a cache from an earlier session: corrupt-and-rebuild below still builds once
        pass
    again, second = quantize_simulated(load_hf_model(ctx.model_dir), "int8_wo", ctx)
    assert second["reused"] is True and second["key"] == first["key"]
    assert "calibration_passes" in second and "restored_seconds" in second
    # The restored model computes what the freshly quantized one did.
    base = HFBackend(load_hf_model(ctx.model_dir), ctx.tokenizer)
    seqs = [ctx.calibration.heldout[0][:32]]
    a = divergence.summarize(divergence.compare_backends(base, HFBackend(model, ctx.tokenizer), seqs))
    b = divergence.summarize(divergence.compare_backends(base, HFBackend(again, ctx.tokenizer), seqs))
    assert a["kld_mean"] == pytest.approx(b["kld_mean"], rel=1e-4)
    assert 0 < a["kld_mean"] < 0.1 and a["top1_agree"] > 0.8  # INT8 weight-only: small but real damage
    # Corrupt one file: detected on read, rebuilt.
    state = folder / "modelopt_state.pt"
    state.write_bytes(state.read_bytes()[:-10] + b"corrupted!")
    assert artifacts.verify(folder) is not None
    _, third = quantize_simulated(load_hf_model(ctx.model_dir), "int8_wo", ctx)
    assert third["reused"] is False and artifacts.verify(folder) is None
    assert json.loads((folder / artifacts.MANIFEST).read_text())["info"]["calibration_passes"] == 4


def test_export_checkpoint_writes_modelopt_fp8_for_the_engines(ctx: _Ctx) -> None:
    from qeval.quantize import export_checkpoint

    folder = export_checkpoint(ctx, "fp8")
    quant = json.loads((folder / "hf_quant_config.json").read_text())
    assert quant["quantization"]["quant_algo"] == "FP8"
    assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))
    assert (folder / "tokenizer.json").exists()
    assert export_checkpoint(ctx, "fp8") == folder  # second call: from the artifact cache
    assert export_checkpoint(ctx, "bf16") == ctx.model_dir  # the baseline is the model folder itself
