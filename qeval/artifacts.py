"""The content-addressed artifact cache: quantized models, built once, reused, verified.

Key: sha256 over the model weights hash, the recipe (precision name and the
full ModelOpt config), the calibration content hash, the ModelOpt / torch /
transformers versions and the device class. Any change of any input gives a
new key; nothing else does. An artifact is built in a temp dir and renamed
into place (readers never see half of one), under a file lock (two runs never
build the same artifact twice: the second waits and reuses), and its files'
sha256 are recorded and checked on every read: a corrupted artifact is
reported and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from qeval.paths import cache_subdir, under

log = logging.getLogger(__name__)
MANIFEST = "artifact.json"
_KEY = re.compile(r"[0-9a-f]{64}")


def tool_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("nvidia-modelopt", "torch", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_class() -> str:
    """"cpu", or the GPU's name (artifacts built with GPU kernels are kept apart)."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _canonical(value: Any) -> Any:
    """Mappings with mixed key types (ModelOpt's block_sizes: {-1: 16, "type": ...}) as str-keyed dicts."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def artifact_key(*, kind: str, model_hash: str, precision: str, recipe: Any, calibration_hash: str,
                 versions: dict[str, str | None], device: str, compute_dtype: str = "bfloat16") -> str:
    # The compute dtype is part of the key: calibration in fp32 and in bf16 gives different scales.
    payload = {"kind": kind, "model": model_hash, "precision": precision, "recipe": recipe,
               "calibration": calibration_hash, "versions": versions, "device": device,
               "compute_dtype": compute_dtype}
    canonical = json.dumps(_canonical(payload), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _file_hashes(folder: Path) -> dict[str, str]:
    from qeval.assets.download import sha256_of

    return {str(p.relative_to(folder)): sha256_of(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def verify(folder: Path) -> str | None:
    """None if the artifact is intact, else what is wrong."""
    manifest = folder / MANIFEST
    if not manifest.exists():
        return "no artifact.json (an interrupted build)"
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        # A damaged manifest is a corrupt artifact like any other (rebuilt), not a crash of the cell.
        return f"{MANIFEST} is unreadable ({type(exc).__name__})"
    actual = _file_hashes(folder)
    if recorded != actual:
        bad = sorted(k for k in set(recorded) | set(actual) if recorded.get(k) != actual.get(k))
        return f"files differ from their recorded sha256: {', '.join(bad[:3])}"
    return None


def get_or_build(key: str, build: Callable[[Path], dict[str, Any]], *, label: str) -> tuple[Path, bool]:
    """The artifact folder for `key`, building it with `build(tmp_dir)` if absent or corrupt.

    Returns:
        (folder, built): built is False when the cache was reused.
    """
    if not _KEY.fullmatch(key):  # the key names a folder of the cache: only a sha256 may
        raise ValueError(f"artifact key {key!r} is not a sha256 hex digest")
    return get_or_build_at(cache_subdir("artifacts"), key, build, label=label, what="artifact")


def get_or_build_at(root: Path, relpath: str, build: Callable[[Path], dict[str, Any]], *,
                    label: str, what: str = "entry") -> tuple[Path, bool]:
    """`get_or_build` for a cache of its own (TensorRT-LLM engines): `root/relpath`, the same guarantees.

    Built in a temp folder beside the target and renamed into place under a file lock; every file's
    sha256 is recorded in artifact.json and checked on each read (a corrupt entry is rebuilt).
    """
    folder = under(Path(root), Path(root) / relpath, what="cache folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.with_name(folder.name + ".lock"))):
        if folder.exists():
            problem = verify(folder)
            if problem is None:
                log.info("%s: %s %s reused from the cache", label, what, folder.name[:12])
                return folder, False
            log.warning("%s: cached %s %s is corrupt (%s); rebuilding it", label, what, folder.name[:12], problem)
            shutil.rmtree(folder)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name[:12]}-") as tmp:
            work = Path(tmp) / "artifact"
            work.mkdir()
            info = build(work)
            manifest = {"key": relpath, "label": label, "built_seconds": round(time.perf_counter() - started, 2),
                        "info": info, "files": _file_hashes(work)}
            (work / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            work.rename(folder)
    return folder, True


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST).read_text())
