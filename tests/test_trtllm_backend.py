"""The TensorRT-LLM backend, tested where it can be without TensorRT-LLM (it is not installable here).

What is real here: our translation code (precision -> QuantConfig / CalibConfig /
BuildConfig keyword arguments, checked against the field names read in the
TensorRT-LLM source, commits below), the engine cache key, the checkpoint check,
the scoring arithmetic, and the clear error when tensorrt_llm is missing. The
engine build / reload / generate orchestration is exercised against a recording
stand-in for the LLM API (``FakeLLM``): that tests our calls, not TensorRT-LLM.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import json
import types

import pytest
import torch

from qeval import precisions as P
from qeval.backends import BACKENDS, load_backend_class
from qeval.backends import trtllm as T
from qeval.backends.base import Backend, EngineUnavailable, GenerationRequest, LoglikelihoodRequest
from qeval.errors import QevalError

# Field names as read in NVIDIA/TensorRT-LLM:
# QuantConfig: tensorrt_llm/models/modeling_utils.py @ 01ea6d79d454bb3ab10c7510a6f706ba039090c2
QUANT_CONFIG_FIELDS = frozenset("""quant_algo kv_cache_quant_algo group_size smoothquant_val clamp_val
    use_meta_recipe has_zero_point pre_quant_scale exclude_modules""".split())
# CalibConfig: tensorrt_llm/_tensorrt_engine/llm_args.py @ e3cc74ce1dd8ad7323891f9e56522b685d9a8fe7
CALIB_CONFIG_FIELDS = frozenset("""device calib_dataset calib_batches calib_batch_size calib_max_seq_length
    random_seed tokenizer_max_seq_length""".split())
# BuildConfig: tensorrt_llm/builder.py @ 008b2b8d23af95e4e19fa6f354f9c5f6349b2bfc (first fields)
BUILD_CONFIG_FIELDS = frozenset("""max_input_len max_seq_len opt_batch_size max_batch_size max_beam_width
    max_num_tokens opt_num_tokens max_prompt_embedding_table_size kv_cache_type gather_context_logits
    gather_generation_logits strongly_typed""".split())
# SamplingParams: tensorrt_llm/sampling_params.py @ 000a01de66f0eab4ab05640711f0253f50f5209c
SAMPLING_PARAMS_FIELDS = frozenset("""end_id pad_id max_tokens bad bad_token_ids stop stop_token_ids
    include_stop_str_in_output n best_of use_beam_search top_k top_p seed temperature min_tokens
    logprobs prompt_logprobs return_context_logits return_generation_logits exclude_input_from_output
    ignore_eos detokenize add_special_tokens skip_special_tokens""".split())

TRT_INSTALLED = importlib.util.find_spec("tensorrt_llm") is not None


# ---- import and the not-installed error ------------------------------------------------------
def test_module_imports_without_tensorrt_llm():
    mod = importlib.import_module("qeval.backends.trtllm")
    assert load_backend_class("trtllm") is mod.TRTLLMBackend
    assert BACKENDS["trtllm"] == "qeval.backends.trtllm"


@pytest.mark.skipif(TRT_INSTALLED, reason="tensorrt_llm is installed on this machine")
def test_constructing_without_tensorrt_llm_says_what_was_measured(tmp_path):
    """Not installed is "this engine cannot run here" (the cell is NOT RUN), not bad input (exit 2)."""
    with pytest.raises(EngineUnavailable) as e:
        T.TRTLLMBackend(tmp_path, precision="fp8", artifact_key="k", cache_root=tmp_path)
    err = e.value
    assert not isinstance(err, QevalError) and err.engine == "trtllm"
    assert "does not import here" in err.reason and "No module named 'tensorrt_llm'" in err.reason
    assert err.probe["import tensorrt_llm"].startswith("ModuleNotFoundError")
    assert err.probe["gpu"].startswith("none visible")  # this machine has no GPU: measured, not assumed
    assert "pypi.nvidia.com" in err.fix and "nvcr.io/nvidia/tensorrt-llm" in err.fix
    record = err.as_record()
    assert record["state"] == "not_run" and record["reason"] == err.reason and record["probe"] == err.probe


def test_capabilities_come_from_what_was_measured():
    caps = T.trtllm_capabilities("hopper", version="1.2.0rc6", gpu="NVIDIA H200", engine_quant_algo="FP8",
                                 precision="fp8")
    assert caps.backend == "trtllm" and caps.run_here is True
    assert caps.precisions == ("fp8",) and caps.kernels["fp8"] == "real"
    assert "1.2.0rc6" in caps.notes and "NVIDIA H200" in caps.notes and "FP8" in caps.notes
    assert "not run here" not in caps.notes.lower()
    assert caps.engine_report == {"tensorrt_llm_version": "1.2.0rc6", "gpu": "NVIDIA H200", "arch": "hopper",
                                  "quant_algo": "FP8"}
    assert "nvfp4" not in T.trtllm_capabilities("hopper", version="x", gpu="g").precisions  # no NVFP4 kernels
    assert "nvfp4" in T.trtllm_capabilities("blackwell", version="x", gpu="g").precisions


def test_engine_quant_algo_is_read_from_the_engine_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"pretrained_config": {"quantization": {"quant_algo": "FP8"}}}))
    assert T.engine_quant_algo(tmp_path) == "FP8"
    assert T.engine_quant_algo(tmp_path / "missing") is None


def test_unknown_backend_name():
    with pytest.raises(QevalError) as e:
        load_backend_class("trt-llm")
    assert "did you mean 'trtllm'" in e.value.fix and "openai" in e.value.fix


# ---- translation: precision -> LLM API keyword arguments -------------------------------------
def test_quant_config_kwargs_per_precision():
    assert T.quant_config_kwargs("bf16") == {"quant_algo": None, "kv_cache_quant_algo": None}
    assert T.quant_config_kwargs("fp8") == {"quant_algo": "FP8", "kv_cache_quant_algo": None}
    assert T.quant_config_kwargs("fp8_kv") == {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}
    assert T.quant_config_kwargs("int8_sq") == {"quant_algo": "W8A8_SQ_PER_CHANNEL", "kv_cache_quant_algo": None}
    assert T.quant_config_kwargs("int8_wo") == {"quant_algo": "W8A16", "kv_cache_quant_algo": None}
    assert T.quant_config_kwargs("nvfp4") == {"quant_algo": "NVFP4", "kv_cache_quant_algo": None,
                                              "group_size": 16}
    awq = {"quant_algo": "W4A16_AWQ", "kv_cache_quant_algo": None, "group_size": 128,
           "has_zero_point": False, "pre_quant_scale": True}
    assert T.quant_config_kwargs("int4_awq") == awq
    assert T.quant_config_kwargs("int4_awq_g64") == {**awq, "group_size": 64}
    assert T.quant_config_kwargs("w4a8_awq_g64") == {**awq, "quant_algo": "W4A8_AWQ", "group_size": 64}


@pytest.mark.parametrize("name", P.names())
def test_translations_use_only_real_field_names(name):
    assert set(T.quant_config_kwargs(name)) <= QUANT_CONFIG_FIELDS


def test_calib_and_build_config_kwargs():
    calib = T.calib_config_kwargs(dataset="/data/calib", batches=32, max_seq_length=256, seed=7)
    assert set(calib) == CALIB_CONFIG_FIELDS
    assert calib["calib_dataset"] == "/data/calib" and calib["calib_batches"] == 32 and calib["random_seed"] == 7
    with pytest.raises(QevalError):
        T.calib_config_kwargs(dataset="x", batches=1, device="tpu")
    build = T.build_config_kwargs(max_input_len=1024)
    assert set(build) <= BUILD_CONFIG_FIELDS
    assert build["gather_context_logits"] is True and build["max_seq_len"] > 1024


# ---- engine cache key ----------------------------------------------------------------------------
KEY = dict(gpu_sku="NVIDIA H100 80GB HBM3", trtllm_version="1.2.0rc6", artifact_key="ab12cd34ef56" * 4,
           build={"max_input_len": 2048, "gather_context_logits": True})


def test_engine_cache_key_is_pure_readable_and_path_safe():
    key = T.engine_cache_key(**KEY)
    assert key == T.engine_cache_key(**KEY)
    assert key == T.engine_cache_key(**{**KEY, "build": dict(reversed(list(KEY["build"].items())))})
    assert key.startswith("nvidia-h100-80gb-hbm3/trtllm-1.2.0rc6/ab12cd34ef56ab12-")
    assert " " not in key and ".." not in key and not key.startswith("/")


@pytest.mark.parametrize("change", [{"gpu_sku": "NVIDIA H200"}, {"trtllm_version": "1.2.0"},
                                    {"artifact_key": "ab12cd34ef56" * 3 + "ffffffffffff"},
                                    {"build": {"max_input_len": 4096, "gather_context_logits": True}}])
def test_engine_cache_key_changes_with_every_input(change):
    assert T.engine_cache_key(**{**KEY, **change}) != T.engine_cache_key(**KEY)


def test_engine_cache_key_requires_its_inputs():
    with pytest.raises(ValueError):
        T.engine_cache_key(**{**KEY, "gpu_sku": ""})


# ---- checkpoint check ----------------------------------------------------------------------------
def _write_quant_config(path, payload):
    path.mkdir(parents=True, exist_ok=True)
    (path / "hf_quant_config.json").write_text(json.dumps(payload))
    return path


def test_read_quant_algo_both_modelopt_shapes(tmp_path):
    legacy = _write_quant_config(tmp_path / "a", {"producer": {"name": "modelopt"}, "quantization":
                                 {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}})
    flat = _write_quant_config(tmp_path / "b", {"quant_method": "modelopt", "quant_algo": "nvfp4",
                               "kv_cache_scheme": {"type": "float", "num_bits": 8}})
    assert T.read_quant_algo(legacy) == ("FP8", "FP8")
    assert T.read_quant_algo(flat) == ("NVFP4", "FP8")
    assert T.read_quant_algo(tmp_path / "none") == (None, None)
    T.check_checkpoint_matches("fp8_kv", legacy)
    T.check_checkpoint_matches("bf16", tmp_path / "none")


def test_check_checkpoint_mismatch_names_file_and_fix(tmp_path):
    ckpt = _write_quant_config(tmp_path / "c", {"quantization": {"quant_algo": "FP8"}})
    with pytest.raises(QevalError) as e:
        T.check_checkpoint_matches("fp8_kv", ckpt)
    assert e.value.file.endswith("hf_quant_config.json") and "fp8_kv" in e.value.problem and e.value.fix


# ---- scoring arithmetic -----------------------------------------------------------------------------
def test_continuation_logprobs_matches_log_softmax():
    g = torch.Generator().manual_seed(0)
    tokens = [5, 1, 7, 3, 2]
    logits = torch.randn(len(tokens), 11, generator=g)
    res = T.continuation_logprobs(logits, tokens, n_context=3)
    lp = torch.log_softmax(logits, -1)
    expected = [lp[2, 3].item(), lp[3, 2].item()]
    assert res.token_logprobs == pytest.approx(expected, abs=1e-6)
    assert res.logprob == pytest.approx(sum(expected), abs=1e-6)
    assert res.is_greedy == all(logits[i].argmax().item() == tokens[i + 1] for i in (2, 3))
    assert T.continuation_logprobs(logits[None], tokens, 3) == res  # [1, T, V] as the engine may return
    peaked = torch.full((3, 4), -10.0)
    peaked[0, 2] = peaked[1, 3] = 10.0
    assert T.continuation_logprobs(peaked, [0, 2, 3], 1).is_greedy
    with pytest.raises(ValueError):
        T.continuation_logprobs(logits, tokens, 0)


def test_fit_tokens_cuts_context_from_the_left():
    assert T.fit_tokens([1, 2, 3], [4, 5], 10) == ([1, 2, 3, 4, 5], 3)
    assert T.fit_tokens([1, 2, 3], [4, 5], 4) == ([2, 3, 4, 5], 2)
    with pytest.raises(QevalError):
        T.fit_tokens([1], [2, 3, 4], 3)


def test_truncate_at_stop():
    assert T.truncate_at_stop("a\n\nb###c", ("###", "\n\n")) == "a"
    assert T.truncate_at_stop("abc", ()) == "abc"


# ---- orchestration against a recording stand-in for the LLM API ----------------------------------
class _Fields:
    """Accepts only the field names read in the TensorRT-LLM source."""

    fields: frozenset = frozenset()

    def __init__(self, **kw):
        unknown = set(kw) - self.fields
        assert not unknown, f"{type(self).__name__} has no field(s) {unknown}"
        self.__dict__.update(kw)


def _fake_trtllm():
    from test_precisions import TRTLLM_QUANT_ALGO_MEMBERS

    llmapi = types.SimpleNamespace(
        QuantAlgo=enum.Enum("QuantAlgo", sorted(TRTLLM_QUANT_ALGO_MEMBERS)),
        QuantConfig=type("QuantConfig", (_Fields,), {"fields": QUANT_CONFIG_FIELDS}),
        CalibConfig=type("CalibConfig", (_Fields,), {"fields": CALIB_CONFIG_FIELDS}),
        BuildConfig=type("BuildConfig", (_Fields,), {"fields": BUILD_CONFIG_FIELDS}),
        SamplingParams=type("SamplingParams", (_Fields,), {"fields": SAMPLING_PARAMS_FIELDS}),
    )
    return types.SimpleNamespace(__version__="1.2.0rc6"), llmapi


class FakeLLM:
    """Records how the backend drives the LLM API; logits are a fixed function of the tokens."""

    calls: list = []
    VOCAB = 16

    def __init__(self, model, tokenizer=None, **kwargs):
        FakeLLM.calls.append(("init", model, kwargs))
        self.tokenizer = types.SimpleNamespace(eos_token_id=0)

    @classmethod
    def logits(cls, tokens):
        g = torch.Generator().manual_seed(sum(tokens))
        return torch.randn(len(tokens), cls.VOCAB, generator=g)

    def save(self, path):
        import pathlib

        pathlib.Path(path).mkdir(parents=True)
        (pathlib.Path(path) / "config.json").write_text("{}")
        FakeLLM.calls.append(("save", path))

    def generate(self, prompts, sampling_params, use_tqdm=True):
        sps = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        out = []
        for p, sp in zip(prompts, sps):
            co = types.SimpleNamespace(text=f"gen({len(p)})###tail")
            out.append(types.SimpleNamespace(outputs=[co], context_logits=self.logits(p)
                                             if getattr(sp, "return_context_logits", False) else None))
        FakeLLM.calls.append(("generate", len(prompts)))
        return out

    def generate_async(self, prompt, sampling_params, streaming=False):
        assert streaming
        for piece in ("He", "llo", ""):
            yield types.SimpleNamespace(outputs=[types.SimpleNamespace(
                text_diff=piece, token_ids_diff=[1] * len(piece))])

    def shutdown(self):
        FakeLLM.calls.append(("shutdown",))


@pytest.fixture
def fake_gpu(monkeypatch):
    FakeLLM.calls = []
    monkeypatch.setattr(T, "import_trtllm", _fake_trtllm)
    monkeypatch.setattr(T, "_trt_llm_class", lambda mod: FakeLLM)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (9, 0))


def _ckpt(tmp_path, algo="FP8", kv=None):
    return _write_quant_config(tmp_path / "ckpt", {"quantization": {"quant_algo": algo, "kv_cache_quant_algo": kv}})


def test_builds_once_then_reloads_from_the_cache(fake_gpu, tmp_path):
    ckpt = _ckpt(tmp_path)
    a = T.TRTLLMBackend(ckpt, precision="fp8", artifact_key="art1", cache_root=tmp_path / "engines")
    assert a.built_now and T.cached_engine(a.engine_dir)
    marker = json.loads((a.engine_dir / T.ENGINE_MARKER).read_text())
    assert marker["precision"] == "fp8" and marker["gpu_sku"] == "NVIDIA H100 80GB HBM3"
    assert a.engine_dir == tmp_path / "engines" / T.engine_cache_key(
        gpu_sku="NVIDIA H100 80GB HBM3", trtllm_version="1.2.0rc6", artifact_key="art1", build=marker["build"])
    build_init = FakeLLM.calls[0]
    assert build_init[1] == str(ckpt) and build_init[2]["build_config"].gather_context_logits is True
    assert "quant_config" not in build_init[2]  # prequantized: TensorRT-LLM reads hf_quant_config.json
    assert isinstance(a, Backend)
    FakeLLM.calls = []
    b = T.TRTLLMBackend(ckpt, precision="fp8", artifact_key="art1", cache_root=tmp_path / "engines")
    assert not b.built_now and b.engine_dir == a.engine_dir
    assert [c[0] for c in FakeLLM.calls] == ["init"] and FakeLLM.calls[0][1] == str(a.engine_dir)
    c = T.TRTLLMBackend(ckpt, precision="fp8", artifact_key="art2", cache_root=tmp_path / "engines")
    assert c.built_now and c.engine_dir != a.engine_dir


def test_a_corrupt_cached_engine_is_rebuilt_not_loaded(fake_gpu, tmp_path):
    """The engine cache verifies every file's sha256 on read (the artifact cache's machinery)."""
    ckpt = _ckpt(tmp_path)
    a = T.TRTLLMBackend(ckpt, precision="fp8", artifact_key="art1", cache_root=tmp_path / "engines")
    assert a.built_now and (a.engine_dir / "artifact.json").is_file()
    (a.engine_dir / "config.json").write_text('{"tampered": true}')
    assert not T.cached_engine(a.engine_dir)
    FakeLLM.calls = []
    b = T.TRTLLMBackend(ckpt, precision="fp8", artifact_key="art1", cache_root=tmp_path / "engines")
    assert b.built_now and T.cached_engine(b.engine_dir)
    assert [c[0] for c in FakeLLM.calls] == ["init", "save", "shutdown", "init"]  # built from the checkpoint again
    assert (b.engine_dir / "config.json").read_text() == "{}"


def test_quantize_in_trtllm_passes_real_quant_and_calib_configs(fake_gpu, tmp_path):
    bf16 = tmp_path / "bf16"
    bf16.mkdir()
    with pytest.raises(QevalError):
        T.TRTLLMBackend(bf16, precision="int4_awq_g64", artifact_key="a", cache_root=tmp_path, prequantized=False)
    calib = T.calib_config_kwargs(dataset="/data/calib", batches=8)
    T.TRTLLMBackend(bf16, precision="int4_awq_g64", artifact_key="a", cache_root=tmp_path / "e",
                    prequantized=False, calibration=calib)
    kwargs = FakeLLM.calls[0][2]
    q = kwargs["quant_config"]
    assert q.quant_algo.name == "W4A16_AWQ" and q.kv_cache_quant_algo is None and q.group_size == 64
    assert kwargs["calib_config"].calib_dataset == "/data/calib"


def test_refuses_a_checkpoint_of_another_precision(fake_gpu, tmp_path):
    with pytest.raises(QevalError):
        T.TRTLLMBackend(_ckpt(tmp_path, "FP8"), precision="fp8_kv", artifact_key="a", cache_root=tmp_path)


def test_loglikelihood_generate_stream(fake_gpu, tmp_path):
    be = T.TRTLLMBackend(_ckpt(tmp_path), precision="fp8", artifact_key="a", cache_root=tmp_path / "e")
    reqs = [LoglikelihoodRequest((3, 4, 5), (6, 7)), LoglikelihoodRequest((1,), (2,))]
    res = be.loglikelihood(reqs)
    for r, got in zip(reqs, res):
        tokens = list(r.context_tokens + r.continuation_tokens)
        assert got == T.continuation_logprobs(FakeLLM.logits(tokens), tokens, len(r.context_tokens))
    assert be.generate([GenerationRequest("hi", 8, stop=("###",)), GenerationRequest((1, 2), 8)]) == \
        ["gen(2)", "gen(2)###tail"]
    events = list(be.stream(GenerationRequest("hi", 4)))
    assert [e.text for e in events] == ["He", "llo"] and [e.n_tokens for e in events] == [2, 3]
    assert events[0].t <= events[1].t
    be.close()
    assert FakeLLM.calls[-1] == ("shutdown",)


# ---- the runner's entry point -------------------------------------------------------------------
def test_directory_content_key(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"abc")
    k = T.directory_content_key(d)
    assert k == T.directory_content_key(d) and len(k) == 64
    (d / "model.safetensors").write_bytes(b"abd")
    assert T.directory_content_key(d) != k
    with pytest.raises(QevalError):
        T.directory_content_key(tmp_path / "empty")


def _ctx(tmp_path, **extra):
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    suite = types.SimpleNamespace(model=types.SimpleNamespace(max_length=1024))
    return types.SimpleNamespace(model_dir=model, suite=suite, **extra)


@pytest.mark.skipif(TRT_INSTALLED, reason="tensorrt_llm is installed on this machine")
def test_from_cell_without_tensorrt_llm(tmp_path):
    cell = types.SimpleNamespace(precision="bf16", backend="trtllm", is_baseline=True)
    with pytest.raises(EngineUnavailable) as e:
        T.TRTLLMBackend.from_cell(_ctx(tmp_path), cell)
    assert "does not import here" in e.value.reason


def test_from_cell_without_kernels_for_the_precision_is_not_run(fake_gpu, tmp_path):
    cell = types.SimpleNamespace(precision="nvfp4", backend="trtllm", is_baseline=False)
    with pytest.raises(EngineUnavailable) as e:
        T.TRTLLMBackend.from_cell(_ctx(tmp_path), cell)
    assert "no kernels for nvfp4 on hopper" in e.value.reason and e.value.probe["arch"] == "hopper"


def test_a_built_engine_reports_what_it_runs(fake_gpu, tmp_path):
    be = T.TRTLLMBackend(_ckpt(tmp_path), precision="fp8", artifact_key="a", cache_root=tmp_path / "e")
    caps = be.capabilities
    assert caps.run_here and caps.engine_report["gpu"] == "NVIDIA H100 80GB HBM3"
    assert caps.engine_report["tensorrt_llm_version"] == "1.2.0rc6" and caps.engine_report["arch"] == "hopper"
    assert caps.engine_report["quant_algo"] is None  # the stand-in's saved config.json records none


def test_from_cell_baseline_and_quantized(fake_gpu, tmp_path, monkeypatch):
    monkeypatch.setenv("QEVAL_ENGINE_CACHE", str(tmp_path / "engines"))
    base = T.TRTLLMBackend.from_cell(_ctx(tmp_path), types.SimpleNamespace(precision="bf16", is_baseline=True))
    assert base.engine_dir.is_relative_to(tmp_path / "engines") and base.build["max_input_len"] == 1024
    cell = types.SimpleNamespace(precision="fp8", is_baseline=False)
    with pytest.raises(QevalError) as e:
        T.TRTLLMBackend.from_cell(_ctx(tmp_path), cell)
    assert "ModelOpt-exported checkpoint" in e.value.problem
    ckpt = _ckpt(tmp_path)
    (ckpt / "config.json").write_text("{}")
    be = T.TRTLLMBackend.from_cell(_ctx(tmp_path, checkpoint_for=lambda p: ckpt), cell)
    assert be.precision.name == "fp8" and be.engine_dir != base.engine_dir
