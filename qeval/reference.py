"""The baseline's next-token distributions on one engine, stored once for every candidate on that engine.

Each candidate is compared with the baseline on the same engine; an engine serves one model at a time
(the baseline's engine is closed before a candidate's starts), so the baseline cell writes its
distributions here and every candidate cell of that engine reads them back, row block by row block
(memory-mapped), exactly as written: float32 log-probabilities, nothing rounded or dropped. This is
what llama.cpp's `--kl-divergence-base` file is for.

Layout: `<run>/cells/<baseline cell>/reference/<section>/` holds meta.json (route, sequence offsets,
a hash of the token ids) and one .npy per array (targets, target_logprobs, top_ids, top_logprobs,
floor, and full where the route is exact: [tokens, vocab] float32, the large one; about
tokens x vocab x 4 bytes, e.g. 2,048 tokens x 49,152 = 0.4 GB). Written to a temporary folder
and renamed into place: a reader never sees half of one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from qeval.backends.base import DistributionRoute, PromptDistributions

_ARRAYS = ("targets", "target_logprobs", "top_ids", "top_logprobs", "floor", "full")


def tokens_hash(sequences: Sequence[Sequence[int]]) -> str:
    """sha256 of the token ids of a section (both sides must have scored exactly these)."""
    h = hashlib.sha256()
    for seq in sequences:
        h.update(np.asarray(seq, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def section_dir(cell_dir: Path, section: str) -> Path:
    return cell_dir / "reference" / section


def write_reference(folder: Path, sequences: Sequence[Sequence[int]], batches: Iterator[list[PromptDistributions]],
                    route: Callable[[], DistributionRoute]) -> dict[str, Any]:
    """Write the distributions of `sequences` (given as they come, batch by batch) to `folder`.

    `route` is asked once the batches are through (an engine's route detail can depend on the first call).

    Returns:
        The summary kept in the baseline's divergence record (tokens, bytes, route).
    """
    rows = [len(s) - 1 for s in sequences]
    offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    arrays: dict[str, np.ndarray] = {}
    i = 0
    for batch in batches:
        for d in batch:
            if d.n != rows[i]:
                raise ValueError(f"sequence {i}: {d.n} rows from the engine, {rows[i]} expected")
            if not arrays:
                arrays = _open(tmp, int(offsets[-1]), d)
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            for name in _ARRAYS:
                value = getattr(d, name)
                if name in arrays and value is not None:
                    arrays[name][lo:hi] = value[:, : arrays[name].shape[1]] if value.ndim == 2 else value
            i += 1
    if i != len(sequences):
        raise ValueError(f"the engine returned {i} of {len(sequences)} sequences")
    nbytes = 0
    for arr in arrays.values():
        arr.flush()
        nbytes += arr.nbytes
    meta = {"route": dataclasses.asdict(route()), "offsets": offsets.tolist(), "tokens_sha256": tokens_hash(sequences),
            "n_tokens": int(offsets[-1]), "n_sequences": len(sequences), "arrays": sorted(arrays), "bytes": nbytes}
    (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    del arrays
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return {k: meta[k] for k in ("n_tokens", "n_sequences", "bytes")} | {"path": str(folder)}


def _open(folder: Path, n: int, first: PromptDistributions) -> dict[str, np.ndarray]:
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {
        "targets": ((n,), np.int64), "target_logprobs": ((n,), np.float32),
        "top_ids": ((n, first.top_ids.shape[1]), np.int64), "top_logprobs": ((n, first.top_ids.shape[1]), np.float32)}
    if first.floor is not None:
        shapes["floor"] = ((n,), np.float32)
    if first.full is not None:
        shapes["full"] = ((n, first.full.shape[1]), np.float32)
    return {name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
            for name, (shape, dtype) in shapes.items()}


class Reference:
    """A stored section, read back sequence by sequence (memory-mapped)."""

    def __init__(self, folder: Path) -> None:
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no stored reference at {folder}")
        self.folder = folder
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.route = DistributionRoute(**self.meta["route"])
        self.offsets = self.meta["offsets"]
        self._arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in self.meta["arrays"]}

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def matches(self, sequences: Sequence[Sequence[int]]) -> bool:
        return self.meta["tokens_sha256"] == tokens_hash(sequences)

    def get(self, i: int) -> PromptDistributions:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        a = self._arrays
        return PromptDistributions(targets=np.asarray(a["targets"][lo:hi]),
                                   target_logprobs=np.asarray(a["target_logprobs"][lo:hi]),
                                   top_ids=np.asarray(a["top_ids"][lo:hi]),
                                   top_logprobs=np.asarray(a["top_logprobs"][lo:hi]),
                                   floor=np.asarray(a["floor"][lo:hi]) if "floor" in a else None,
                                   full=a["full"][lo:hi] if "full" in a else None)
