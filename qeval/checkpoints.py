"""A user's own quantized Hugging Face folder as a candidate, compared with the baseline like any recipe.

```yaml
checkpoints:
  - name: my-int8                 # the candidate's name (cells/my-int8-<backend>/)
    path: ckpt/smollm2-w8a8       # a local folder, relative to this suite file
    description: llm-compressor W8A8, 512 calibration samples
candidates: [int8_sq, my-int8]
```

Nothing is quantized here: the folder is what runs. Its format is read from its own files (config.json's
`quantization_config.quant_method`, or ModelOpt's `hf_quant_config.json`): compressed-tensors (llm-compressor,
qeval.export_ct), ModelOpt's unified HF export, AWQ, GPTQ, FP8. Each suite backend loads it where that engine has a
load path for the format (qeval.checkpoint_formats.load_path, each with where it was read or measured); a backend without one, or
without kernels for it on this machine, makes the cell NOT RUN with the reason, as for any precision. The
candidate's cells are paired with the suite's baseline on the same backend, sample by sample, and their KL is
measured against the baseline's distributions on that engine.

Checked before anything heavy (one message each, naming the file, the field and the fix; exit 2): the folder
exists and is a Hugging Face folder; it is quantized (a config.json without `quantization_config` and no
hf_quant_config.json is the unquantized model, no candidate); some suite backend has a load path for its format;
its tokenizer is the baseline's (the same token ids for the same text: the candidate is fed the baseline's token
ids); its architecture is the baseline's (model_type, widths, layers, heads, vocabulary). A hub id (`hub:`) is
fetched into the qeval cache where the hub is reachable, and refused with the reason where it is not.

Provenance: the folder's content hash (sha256 over every file's name and sha256) is the candidate's artifact key,
in the manifest before any cell runs, stamped on every record, and part of the resume identity: a folder whose
files changed since the run started is refused on resume. The report says who made each candidate's artifact: a
qeval recipe (ModelOpt, with its cache key) or an external folder (its path, format, producer and hash).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from pydantic import Field, model_validator

from qeval import precisions
from qeval.checkpoint_formats import (FP8_E4M3_MAX, Format, NotQuantized, UnknownFormat, kernels, load_path,
                                      loaded_anywhere, read_format)
from qeval.errors import QevalError
from qeval.suite_fields import FieldProblem, Strict

KIND = "external checkpoint"
MANIFEST_KEY = "checkpoints"
# What a tokenizer is made of: files whose content decides which ids a text becomes.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
                   "special_tokens_map.json", "added_tokens.json")
# config.json fields that make two checkpoints the same network (text_config merged in for multimodal ones).
ARCHITECTURE_FIELDS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
                       "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
                       "tie_word_embeddings", "moe_intermediate_size", "num_experts", "num_local_experts")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


class CheckpointSpec(Strict):
    """A quantized Hugging Face folder (or hub id) that a candidate names."""

    name: str = Field(description="the candidate's name (a candidate names it); not a registered precision")
    path: str | None = Field(None, description="a local Hugging Face folder, relative to the suite file")
    hub: str | None = Field(None, description="a Hugging Face hub id (org/name), fetched into the qeval cache "
                            "where the hub is reachable (refused where it is not, e.g. HF_HUB_OFFLINE=1)")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit); only with hub")
    description: str = Field("", description="one line for reports (default: the format read from the folder)")

    @model_validator(mode="after")
    def _one_source(self) -> "CheckpointSpec":

        if (self.path is None) == (self.hub is None):
            raise FieldProblem(f"checkpoint {self.name!r} needs exactly one of path and hub",
                               "give `path: <folder>` (relative to the suite file) or `hub: org/name`")
        if self.revision is not None and self.hub is None:
            raise FieldProblem(f"checkpoint {self.name!r}: revision applies to a hub id only",
                               "drop revision, or give hub instead of path")
        if self.hub is not None and not _HUB_ID.fullmatch(self.hub):
            raise FieldProblem(f"checkpoint {self.name!r}: {self.hub!r} is not a hub id",
                               "write it as org/name, e.g. RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w8a8")
        if self.path is not None and not self.path.strip():
            raise FieldProblem(f"checkpoint {self.name!r}: path is empty", "give the folder's path")
        return self


# ---- content, tokenizer, architecture ---------------------------------------------------------------
def content_hash(folder: Path) -> dict[str, Any]:
    """sha256 over every file of the folder (relative name and content sha256), hidden files and locks aside."""
    from qeval.assets.download import sha256_of

    digest = hashlib.sha256()
    n, size = 0, 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts) or path.name.endswith(".lock"):
            continue
        digest.update(str(rel).encode() + b"\0" + sha256_of(path).encode() + b"\n")
        n += 1
        size += path.stat().st_size
    return {"sha256": digest.hexdigest(), "files": n, "bytes": size}


def _text_config(config: Mapping[str, Any]) -> dict[str, Any]:
    cfg = dict(config)
    if isinstance(cfg.get("text_config"), Mapping):
        cfg = {**cfg, **cfg["text_config"]}
    return cfg


def architecture_differences(baseline: Mapping[str, Any], candidate: Mapping[str, Any]) -> list[str]:
    """The architecture fields (config.json) whose values differ, as 'field: baseline X, checkpoint Y'."""
    b, c = _text_config(baseline), _text_config(candidate)
    out = []
    for key in ARCHITECTURE_FIELDS:
        if key not in b and key not in c:
            continue
        bv, cv = b.get(key), c.get(key)
        if key == "head_dim" and (bv is None or cv is None):
            continue  # derived from hidden_size / heads where one side leaves it out
        if key == "tie_word_embeddings":  # transformers' default is True for Llama-family configs
            bv, cv = bool(b.get(key, True)), bool(c.get(key, True))
        if bv != cv:
            out.append(f"{key}: baseline {bv!r}, checkpoint {cv!r}")
    return out


def _file_sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def tokenizer_difference(baseline_dir: Path, folder: Path) -> str | None:
    """None when the checkpoint's tokenizer turns every text into the baseline's ids, else what differs.

    Same tokenizer files (by content) are the same tokenizer. Otherwise both are loaded and compared where it
    decides the ids: the vocabulary (token -> id), the added tokens, the special tokens' ids, and the
    tokenization model itself (tokenizer.json's model, normalizer and pre-tokenizer: merges and rules).
    """
    from transformers import AutoTokenizer

    present = [n for n in TOKENIZER_FILES if (folder / n).is_file() or (baseline_dir / n).is_file()]
    if not any((folder / n).is_file() for n in TOKENIZER_FILES):
        return (f"the folder has no tokenizer files ({', '.join(TOKENIZER_FILES[:4])} ...): the engines load the "
                "tokenizer from it")
    if all(_file_sha(folder / n) == _file_sha(baseline_dir / n) for n in present):
        return None
    try:
        base = AutoTokenizer.from_pretrained(baseline_dir, local_files_only=True)
        cand = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - an unloadable tokenizer is a refusal with its reason
        return f"its tokenizer does not load ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    bv, cv = base.get_vocab(), cand.get_vocab()
    if bv != cv:
        only_b = sorted(set(bv) - set(cv))[:3]
        only_c = sorted(set(cv) - set(bv))[:3]
        moved = sorted(t for t in set(bv) & set(cv) if bv[t] != cv[t])[:3]
        bits = [f"{len(bv)} tokens in the baseline's vocabulary, {len(cv)} in the checkpoint's"]
        if only_b:
            bits.append(f"only the baseline has {only_b}")
        if only_c:
            bits.append(f"only the checkpoint has {only_c}")
        if moved:
            bits.append(f"different ids for {moved}")
        return "the vocabularies differ: " + "; ".join(bits)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        if getattr(base, attr, None) != getattr(cand, attr, None):
            return f"{attr} differs: baseline {getattr(base, attr, None)}, checkpoint {getattr(cand, attr, None)}"
    bj, cj = folder / "tokenizer.json", baseline_dir / "tokenizer.json"
    if bj.is_file() and cj.is_file():
        b, c = json.loads(cj.read_text(encoding="utf-8")), json.loads(bj.read_text(encoding="utf-8"))
        for part in ("model", "normalizer", "pre_tokenizer", "added_tokens"):
            if b.get(part) != c.get(part):
                return f"tokenizer.json's {part} differs (same vocabulary, different tokenization rules)"
    return None


# ---- from the suite to checked candidates ---------------------------------------------------------------
def to_precision(spec: CheckpointSpec, resolved: Mapping[str, Any] | None = None) -> precisions.Precision:
    """The registry entry of a checkpoint: no ModelOpt recipe, `external` holding where and what it is.

    Args:
        resolved: after the run's checks, the folder, format and content hash (:func:`prepare`); before them
            (suite validation) only the spec is known.
    """
    fmt = (resolved or {}).get("format")
    source = spec.path if spec.path is not None else f"hub:{spec.hub}" + (f"@{spec.revision}" if spec.revision else "")
    description = spec.description or (f"external checkpoint {source}: {fmt['scheme']}" if fmt
                                       else f"external checkpoint {source}")
    external = {"source": source, **json.loads(json.dumps(dict(resolved or {}), default=str))}
    kern = kernels(_format_from(fmt)) if fmt else ()
    details = (fmt or {}).get("details") or {}
    modelopt = bool(fmt) and fmt["family"] == "modelopt"  # TensorRT-LLM reads the same quant_algo from the folder
    return precisions.Precision(
        name=spec.name, description=description, modelopt_cfg=None,
        trtllm_quant_algo=str(details.get("quant_algo")).upper() if modelopt and details.get("quant_algo") else None,
        trtllm_kv_cache_quant_algo=(str(details["kv_cache_quant_algo"]).upper()
                                    if modelopt and details.get("kv_cache_quant_algo") else None),
        vllm=precisions.VllmArgs(checkpoint=MappingProxyType({"quantization": fmt["vllm_quantization"]})
                                 if fmt and fmt.get("vllm_quantization") else None,
                                 note="the folder itself", checkpoint_format="external"),
        kernels=kern, external=MappingProxyType(external))


def _format_from(record: Mapping[str, Any]) -> Format:
    return Format(record["family"], record["scheme"], record["producer"], record.get("vllm_quantization"),
                  record.get("weights"), record.get("activations"), record.get("source", ""),
                  MappingProxyType(dict(record.get("details") or {})))


def register(specs: list[CheckpointSpec]) -> None:
    """Put a suite's checkpoints into the registry (unresolved: the run resolves and checks them)."""
    for spec in specs:
        precisions.register_custom(to_precision(spec))


def check_spec(spec: CheckpointSpec) -> None:
    """Checks that need only the registry (at suite validation)."""

    existing = precisions.PRECISIONS.get(spec.name)
    if existing is not None and existing.external is None:
        what = "custom recipe" if existing.custom else "registered precision"
        raise FieldProblem(f"checkpoint name {spec.name!r} is a {what}",
                           f"give the checkpoint a name of its own, e.g. {spec.name}_ckpt")


def is_external(name: str) -> bool:
    try:
        return precisions.get(name).external is not None
    except QevalError:
        return False


def _recorded_folder(suite_path: Path, name: str) -> str | None:
    """A run directory's copy of the suite: the folder its manifest recorded (a relative path was the original
    suite file's, not the run directory's)."""
    manifest = suite_path.parent / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        record = (json.loads(manifest.read_text(encoding="utf-8")).get(MANIFEST_KEY) or {}).get(name) or {}
    except (OSError, ValueError):
        return None
    return record.get("folder")


def resolve_folder(spec: CheckpointSpec, suite_path: Path, field: str) -> Path:
    """The checkpoint's local folder: its path (relative to the suite file), or the hub id fetched into the cache.

    Raises:
        QevalError: missing, not a folder, unreadable, no config.json; a hub id where the hub is unreachable.
    """
    file = str(suite_path)
    if spec.hub is not None:
        return _from_hub(spec, file, field)
    recorded = _recorded_folder(suite_path, spec.name)
    raw = Path(spec.path)  # type: ignore[arg-type]
    folder = Path(recorded) if recorded else (raw if raw.is_absolute() else (suite_path.parent / raw)).resolve()
    fix_path = "give the path of a local Hugging Face folder (relative to the suite file, or absolute)"
    if not folder.exists():
        raise QevalError(f"checkpoint {spec.name!r}: folder {spec.path!r} does not exist (looked at {folder})",
                         file=file, field=f"{field}.path", fix=fix_path)
    if not folder.is_dir():
        raise QevalError(f"checkpoint {spec.name!r}: {folder} is a file, not a folder", file=file,
                         field=f"{field}.path", fix="point it at the folder that holds config.json and the weights")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise QevalError(f"checkpoint {spec.name!r}: {folder} is not readable by this user", file=file,
                         field=f"{field}.path", fix=f"give this user read access (chmod -R u+rX {folder})")
    if not (folder / "config.json").is_file():
        raise QevalError(f"checkpoint {spec.name!r}: {folder} has no config.json, so it is not a Hugging Face "
                         "model folder", file=file, field=f"{field}.path",
                         fix="point it at the folder save_pretrained (or the quantizer's save) wrote")
    return folder


def _hub_offline_reason() -> str | None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]} (qeval sets it unless you set it yourself: it never reaches a hub " \
                   "implicitly)"
    return None


def _from_hub(spec: CheckpointSpec, file: str, field: str) -> Path:
    """A hub id, downloaded into the qeval cache (a folder named by the hash of id and revision, never by them)."""
    from qeval.paths import cache_subdir, under

    offline = _hub_offline_reason()
    fix = ("download it where the hub is reachable (`huggingface-cli download " + str(spec.hub)
           + " --local-dir DIR`), copy DIR here and give `path: DIR`; or run with HF_HUB_OFFLINE=0 where the hub "
           "is reachable")
    if offline is not None:
        raise QevalError(f"checkpoint {spec.name!r}: hub id {spec.hub!r} cannot be fetched: the Hugging Face hub is "
                         f"off for this run ({offline})", file=file, field=f"{field}.hub", fix=fix)
    key = hashlib.sha256(f"{spec.hub}@{spec.revision or 'main'}".encode()).hexdigest()
    root = cache_subdir("hub")
    target = under(root, root / key, what="hub download")
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id=spec.hub, revision=spec.revision, local_dir=str(target))
    except Exception as exc:  # noqa: BLE001 - unreachable, unknown repo, gated: one refusal with the reason
        raise QevalError(f"checkpoint {spec.name!r}: hub id {spec.hub!r} could not be fetched "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})", file=file,
                         field=f"{field}.hub", fix=fix) from None
    return target


def prepare(suite: Any, suite_path: Path, model_dir: Path) -> dict[str, dict[str, Any]]:
    """Resolve and check every checkpoint candidate of a suite against its baseline model; register the result.

    Returns:
        name -> the manifest's record (source, folder, format, content hash, checks).

    Raises:
        QevalError: the first bad checkpoint, naming the suite file, the field and the fix (exit 2).
    """
    out: dict[str, dict[str, Any]] = {}
    specs = {s.name: (i, s) for i, s in enumerate(getattr(suite, "checkpoints", []) or [])}
    used = [n for n in suite.candidates if n in specs]
    if not used:
        return out
    file = str(suite_path)
    base_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    for name in used:
        i, spec = specs[name]
        where = f"checkpoints[{i}]"
        folder = resolve_folder(spec, suite_path, where)
        field_src = f"{where}.path" if spec.path is not None else f"{where}.hub"
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            fmt = read_format(folder)
        except NotQuantized as exc:
            raise QevalError(f"checkpoint {name!r}: {folder} is not a quantized checkpoint ({exc})", file=file,
                             field=field_src, fix="point it at the quantized folder (its config.json has a "
                             "quantization_config), or list a qeval recipe (e.g. int8_sq) to quantize the baseline")
        except UnknownFormat as exc:
            raise QevalError(f"checkpoint {name!r}: no engine qeval drives loads this format: {exc}", file=file,
                             field=field_src, fix="use a compressed-tensors, ModelOpt, AWQ, GPTQ or FP8 checkpoint "
                             "(convert it with its tool), or drop this candidate") from None
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError) as exc:
            raise QevalError(f"checkpoint {name!r}: {folder}'s config is not valid ({type(exc).__name__}: {exc})",
                             file=file, field=field_src, fix="restore the folder's config.json") from None
        paths = {b: load_path(fmt, b, precisions.current_arch()) for b in suite.backends}
        if not any(loaded_anywhere(fmt, b) for b in suite.backends):
            reasons = "; ".join(f"{b}: {lp.reason}" for b, lp in paths.items())
            others = [e for e in ("hf", "vllm", "trtllm") if e not in suite.backends and loaded_anywhere(fmt, e)]
            raise QevalError(f"checkpoint {name!r} ({fmt.scheme}): no backend of this suite loads it ({reasons})",
                             file=file, field="backends",
                             fix=(f"add a backend that loads it ({', '.join(others)})" if others else
                                  "convert it to a format one of the suite's backends loads (compressed-tensors "
                                  "for vLLM and hf, ModelOpt FP8/NVFP4 for vLLM and TensorRT-LLM)")
                             + f", or drop {name!r} from candidates")
        diffs = architecture_differences(base_config, config)
        if diffs:
            raise QevalError(f"checkpoint {name!r} is not the baseline's architecture: {'; '.join(diffs)}",
                             file=file, field=field_src, fix=f"use a checkpoint quantized from the baseline "
                             f"model ({model_dir}), or set model.source to the model it was quantized from")
        problem = tokenizer_difference(model_dir, folder)
        if problem is not None:
            raise QevalError(f"checkpoint {name!r} does not tokenize like the baseline: {problem}", file=file,
                             field=field_src, fix="save the baseline's tokenizer into the checkpoint folder "
                             "(AutoTokenizer.from_pretrained(BASELINE).save_pretrained(FOLDER)), or use the "
                             "checkpoint quantized from this baseline")
        content = content_hash(folder)
        record = {"source": spec.path if spec.path is not None else f"hub:{spec.hub}", "folder": str(folder),
                  "format": fmt.record(), "sha256": content["sha256"], "files": content["files"],
                  "bytes": content["bytes"], "made_by": "external folder",
                  "checks": {"tokenizer": "same as the baseline's", "architecture": "same as the baseline's"},
                  "backends": {b: {"kind": lp.kind, "reason": lp.reason} for b, lp in paths.items()}}
        precisions.register_custom(to_precision(spec, record))
        out[name] = record
    return out


def artifact(name: str) -> dict[str, Any]:
    """The artifact record of a checked checkpoint (the cells' status and the manifest name it)."""
    ext = precisions.get(name).external or {}
    if "sha256" not in ext:
        raise RuntimeError(f"checkpoint {name!r} was not checked (qeval.checkpoints.prepare) before use")
    return {"kind": KIND, "key": ext["sha256"], "made_by": "external folder", "folder": ext["folder"],
            "source": ext["source"], "format": (ext.get("format") or {}).get("scheme"),
            "producer": (ext.get("format") or {}).get("producer"), "files": ext.get("files")}


def folder_of(name: str) -> Path:
    return Path(artifact(name)["folder"])


def fmt_of(name: str) -> Format:
    return _format_from((precisions.get(name).external or {})["format"])


def manifest_records(suite: Any) -> dict[str, dict[str, Any]]:
    """The manifest's `checkpoints`: each checked checkpoint candidate's provenance (who made it, where, what)."""
    out = {}
    for name in suite.candidates:
        ext = precisions.get(name).external
        if ext is not None and "sha256" in ext:
            out[name] = json.loads(json.dumps(dict(ext), default=str))
    return out


def check_engine(cell: Any) -> None:
    """A cell of a checkpoint whose format its engine cannot load (here): NOT RUN with the reason, as measured or
    read (:func:`load_path`); "unknown" (not measured) lets the engine's own load decide."""
    from qeval.backends.base import EngineUnavailable

    fmt = fmt_of(cell.precision)
    arch = precisions.current_arch()
    lp = load_path(fmt, cell.backend, arch)
    if lp.kind != "none":
        return
    anywhere = loaded_anywhere(fmt, cell.backend)
    fix = (f"run this cell where {cell.backend} has kernels for {fmt.weights or fmt.family} (an NVIDIA GPU)"
           if anywhere else f"drop {cell.backend} for {cell.precision!r}: it has no load path for {fmt.family} "
           "checkpoints")
    raise EngineUnavailable(f"{cell.precision} ({fmt.scheme}) on {cell.backend}: {lp.reason}", engine=cell.backend,
                            fix=fix, probe={"format": f"{fmt.family}, read from {fmt.source}", "arch": arch,
                                            "source": lp.source})


def load_hf(folder: Path, dtype: str, trust_remote_code: bool = False) -> Any:
    """A quantized folder through transformers' own quantizer for its format (never a hub), on this machine's
    default device, in `dtype` (weights dequantized into it where the quantizer does so)."""
    from transformers import AutoModelForCausalLM

    from qeval.backends.hf import default_device, resolve_dtype

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=resolve_dtype(dtype), local_files_only=True,
                                                 trust_remote_code=trust_remote_code)
    _skip_weight_requantization(model)
    return model.to(default_device()).eval()


def _skip_weight_requantization(model: Any) -> int:
    """compressed-tensors' forward fake-quantizes a decompressed module's weight again on every call (its values
    are already the checkpoint's quantized ones, dequantized): marking the module compressed skips that, as its
    own guard does for compressed weights, and leaves the input activations' quantization as it was. Measured on
    qeval's INT8 export of SmolLM2: logits identical (max |diff| 0.0, bf16 and fp32), 1.6-2.8x faster."""
    try:
        from compressed_tensors.quantization import QuantizationStatus
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (getattr(module, "quantization_scheme", None) is not None and weight is not None
                and weight.is_floating_point()
                and getattr(module, "quantization_status", None) == QuantizationStatus.DECOMPRESSED):
            module.quantization_status = QuantizationStatus.COMPRESSED
            n += 1
    return n


def load_modelopt_fp8(folder: Path, dtype: str, trust_remote_code: bool = False) -> Any:
    """ModelOpt's FP8 unified export (quant_algo FP8) as a transformers model that computes what the export means.

    transformers has no ModelOpt quantizer (it would read the FP8 weights without their scales), so: the
    architecture from config.json without its quantization_config; every FP8 weight times its `weight_scale`;
    before each linear that has an `input_scale`, its input fake-quantized to FP8 E4M3 with that scale
    (x / s clamped to +-448, rounded to E4M3, times s) - static per-tensor W8A8 FP8, as the export's engines run
    it; modules the export left out (lm_head) as they are.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from qeval.backends.hf import default_device, resolve_dtype

    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    torch_dtype = resolve_dtype(dtype)
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    state: dict[str, Any] = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(str(shard)))
    weight_scales = {k[: -len(".weight_scale")]: state.pop(k) for k in list(state) if k.endswith(".weight_scale")}
    input_scales = {k[: -len(".input_scale")]: state.pop(k) for k in list(state) if k.endswith(".input_scale")}
    other = [k for k in state if k.endswith(("_scale", "_amax", ".pre_quant_scale"))]
    if other:
        raise ValueError(f"{folder}: scales qeval does not simulate ({other[:3]}): only quant_algo FP8 per tensor")
    for name, scale in weight_scales.items():
        state[f"{name}.weight"] = (state[f"{name}.weight"].float() * scale.float()).to(torch_dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{folder}: weights do not fit the architecture (missing {sorted(set(missing) - tied)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()
    modules = dict(model.named_modules())
    for name, scale in input_scales.items():
        modules[name].register_forward_pre_hook(_fp8_input_hook(float(scale)))
    model.qeval_fp8_inputs = len(input_scales)
    return model.to(default_device()).eval()


def _fp8_input_hook(scale: float) -> Any:
    import torch

    def hook(module: Any, args: tuple) -> tuple:
        x = args[0]
        q = (x.float() / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn).float() * scale
        return (q.to(x.dtype), *args[1:])
    return hook


def hf_backend(ctx: Any, cell: Any) -> Any:
    """The hf cell of a checkpoint: transformers loads the folder itself (nothing quantized by qeval)."""
    from qeval.backends.hf import HFBackend

    check_engine(cell)
    ctx.artifacts[cell.id] = artifact(cell.precision)
    fmt = fmt_of(cell.precision)
    load = load_modelopt_fp8 if fmt.family == "modelopt" else load_hf
    model = load(folder_of(cell.precision), ctx.compute.dtype, ctx.suite.model.trust_remote_code)
    lp = load_path(fmt, "hf", precisions.current_arch())
    return HFBackend(model, ctx.tokenizer, precision=cell.precision, simulated=lp.kind == "simulated",
                     max_length=ctx.suite.model.max_length,
                     notes=f"transformers loads the external checkpoint {folder_of(cell.precision)}: {lp.reason}")
