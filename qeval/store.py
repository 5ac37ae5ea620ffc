"""The results store: append-only JSONL files under one run directory.

Why JSONL with fsync rather than SQLite: every record is one line a person
can read with `head`, the files diff and archive well next to the report,
and an append + fsync per batch gives the durability we need (a SIGKILL
loses at most the batch in flight). A torn last line (the process died in
the middle of a write) is skipped on read, with a warning.

Layout of a run directory::

    <run>/manifest.json           versions, hashes, seeds, hardware
    <run>/suite.yaml              the suite as it was run
    <run>/cells/<cell>/status.json          ok | error, with the cause
    <run>/cells/<cell>/requests.jsonl       engine responses (the resume cache)
    <run>/cells/<cell>/samples/<task>.jsonl per-sample records, in evaluation order
    <run>/cells/<cell>/progress.json        each task's plan (documents, looks) and where it stands
    <run>/cells/<cell>/divergence.jsonl     token-level comparison with the baseline
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from qeval.paths import check_name, under

log = logging.getLogger(__name__)


def request_key(kind: str, *parts: Any) -> str:
    """A stable key for one engine request (kind + its exact inputs)."""
    payload = json.dumps([kind, *parts], separators=(",", ":"), default=list)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def pair_key(record: dict) -> Any:
    """What pairs a candidate's record with the baseline's: the doc_id, and the draw of a repeated task."""
    return record["doc_id"] if "repeat" not in record else f"{record['doc_id']}#{record['repeat']}"


def append_jsonl(path: Path, records: Iterable[dict]) -> None:
    """Append records as lines and fsync: durable once this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_manifest(run_dir: Path) -> dict:
    """manifest.json of a run; a corrupt one is bad input (exit 2), not a traceback."""
    from qeval.errors import QevalError

    path = run_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
        manifest["suite"]["sha256"]  # noqa: B018 - every reader needs it: check it here, once
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise QevalError(f"manifest.json is corrupt ({type(exc).__name__}: {exc})", file=str(path),
                         fix="restore it from a backup, or start a new run (its per-sample records stay "
                             "where they are)") from exc
    return manifest


def read_jsonl(path: Path) -> list[dict]:
    """Read every complete line; a torn last line (crash mid-write) is skipped."""
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if n >= len(lines) - 2:  # only the last line may be torn
                log.warning("%s: skipping a torn last line (the run was interrupted mid-write)", path)
                continue
            # Damage in the middle is not a crash mid-write: refuse rather than gate on a silently shorter file.
            from qeval.errors import QevalError

            raise QevalError(f"line {n + 1} is not JSON ({exc.msg}); only a torn last line is tolerated",
                             file=str(path), fix="delete the damaged file and run `qeval run --resume RUN_DIR` "
                                                 "to recompute it (the other results are kept)") from exc
    return records


def _drop_torn_tail(path: Path) -> None:
    """Truncate a file after its last newline: removes the half line a killed writer left."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, and rename over the target: readers (another process,
    a crash) see the old file or the new one, never half of one. The temp name is unique, so two writers of
    one path (two pytest-xdist workers, two threads) never share it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a report is meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """`write_bytes_atomic` of UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON atomically (`write_bytes_atomic`): readers never see half a file."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


class RequestCache:
    """Engine responses of one cell, keyed by `request_key`, appended batch by batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, dict] | None = None

    def _load(self) -> dict[str, dict]:
        if self._entries is None:
            self._entries = {r["key"]: r["value"] for r in read_jsonl(self.path)}
            _drop_torn_tail(self.path)  # so the next append starts on a line of its own
        return self._entries

    def lookup(self, keys: Iterable[str]) -> dict[str, dict]:
        entries = self._load()
        return {k: entries[k] for k in keys if k in entries}

    def append(self, new: dict[str, dict]) -> None:
        append_jsonl(self.path, ({"key": k, "value": v} for k, v in new.items()))
        self._load().update(new)

    def __len__(self) -> int:
        return len(self._load())


class RunStore:
    """One run directory: where every result of a run is written as it is produced.

    Every path it hands out is built from names checked by `qeval.paths.check_name` and checked to stay under
    the run directory (`qeval.paths.under`): a cell id or task name can never point a write elsewhere.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.artifact_keys: dict[str, str] = {}  # cell id -> key of the artifact producing its records

    def bind_artifacts(self, keys: dict[str, str | None]) -> None:
        """Stamp every record written from now on for these cells with their artifact's key (qeval.provenance)."""
        self.artifact_keys.update({cell: key for cell, key in keys.items() if key})

    def _stamped(self, cell: str, record: Any) -> Any:
        key = self.artifact_keys.get(cell)
        if key is None or not isinstance(record, dict) or "artifact_key" in record:
            return record  # a record already stamped keeps the artifact that produced it
        return {**record, "artifact_key": key}

    def _path(self, *parts: str, what: str = "file") -> Path:
        return under(self.root, self.root.joinpath(*parts), what=what)

    def cell_dir(self, cell: str) -> Path:
        return self._path("cells", check_name(cell, what="cell id"), what="cell directory")

    def request_cache(self, cell: str) -> RequestCache:
        return RequestCache(self.cell_dir(cell) / "requests.jsonl")

    def samples_path(self, cell: str, task: str) -> Path:
        name = check_name(task, what="task name") + ".jsonl"
        return under(self.root, self.cell_dir(cell) / "samples" / name, what="sample file")

    def has_samples(self, cell: str, task: str) -> bool:
        return self.samples_path(cell, task).exists()

    def write_samples(self, cell: str, task: str, records: list[dict]) -> None:
        """Per-sample records of one task, written whole (atomic rename): a task's
        records exist completely or not at all, so `has_samples` means finished."""
        data = "".join(json.dumps(self._stamped(cell, r), separators=(",", ":")) + "\n" for r in records)
        write_text_atomic(self.samples_path(cell, task), data)

    def merge_samples(self, cell: str, task: str, records: list[dict]) -> None:
        """Add one look's records to a task's file (rewritten whole, atomically): a record for a doc_id
        already there replaces it, so a look repeated after a crash never counts twice."""
        new = {pair_key(r): r for r in records}
        kept = [r for r in self.read_samples(cell, task) if pair_key(r) not in new]
        merged = sorted(kept + list(new.values()), key=lambda r: (r.get("order", r["doc_id"]), r["doc_id"]))
        self.write_samples(cell, task, merged)

    def read_samples(self, cell: str, task: str) -> list[dict]:
        return read_jsonl(self.samples_path(cell, task))

    def cells(self) -> list[str]:
        base = self.root / "cells"
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.exists() else []

    def tasks(self, cell: str) -> list[str]:
        base = self.cell_dir(cell) / "samples"
        return sorted(p.stem for p in base.glob("*.jsonl")) if base.exists() else []

    def json_path(self, cell: str, name: str) -> Path:
        return under(self.root, self.cell_dir(cell) / check_name(name, what="record file name"), what="record")

    def write_json(self, cell: str, name: str, obj: Any) -> None:
        write_json_atomic(self.json_path(cell, name), self._stamped(cell, obj))

    def read_json(self, cell: str, name: str) -> Any:
        path = self.json_path(cell, name)
        return json.loads(path.read_text()) if path.exists() else None

    def write_status(self, cell: str, status: dict) -> None:
        self.write_json(cell, "status.json", status)

    def read_status(self, cell: str) -> dict | None:
        return self.read_json(cell, "status.json")
