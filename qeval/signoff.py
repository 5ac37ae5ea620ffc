"""A release sign-off bound to its evidence: `qeval sign-off` writes it, `qeval verify` checks it.

signoff.json says who approved what, when, with a note, and binds it to the evidence: the sha256 of
results.json, the manifest, the suite as it ran and every record file of every cell (per-sample records,
status, divergence, latency, the engine responses), with the gate's verdicts at signing. `verify` recomputes
the hashes and re-gates the records: any file changed, removed or added since the sign-off, or a verdict the gate
no longer reaches, fails it, naming the file or the cell. This is tamper evidence, not a signature: whoever can
write the run directory can also rewrite signoff.json (signing with a key is out of scope), but then its own
hash, printed in the report, changes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from qeval.errors import QevalError
from qeval.store import write_json_atomic

SIGNOFF_FILE = "signoff.json"
SCHEMA = "qeval.signoff/1"
ACTIONS = ("ship", "block")
# The evidence: what the run recorded. Not the reports (re-rendered to show the sign-off), timings (appended by
# every `qeval report`), locks, server logs or temp files.
BOUND_TOP = ("results.json", "manifest.json", "suite.yaml")
BOUND_DIR = "cells"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def evidence_files(run_dir: Path) -> list[str]:
    """The run directory's evidence files, relative paths in a stable order."""
    names = [name for name in BOUND_TOP if (run_dir / name).is_file()]
    base = run_dir / BOUND_DIR
    if base.is_dir():
        names += sorted(str(p.relative_to(run_dir)) for p in base.rglob("*")
                        if p.is_file() and not p.name.startswith("."))
    return names


def hash_evidence(run_dir: Path) -> dict[str, str]:
    return {name: sha256_file(run_dir / name) for name in evidence_files(run_dir)}


def evidence_digest(files: dict[str, str]) -> str:
    """One hash for the whole evidence (the one a person quotes): sha256 of the sorted name -> hash list."""
    return hashlib.sha256(json.dumps(sorted(files.items()), separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Decision:
    """What the signer decided for one candidate cell, beside what the gate said."""

    cell: str
    action: str
    gate_verdict: str

    @property
    def overrides_gate(self) -> bool:
        return (self.action == "ship") != (self.gate_verdict == "SHIP")


def parse_decisions(values: Iterable[str] | None) -> list[tuple[str, str]]:
    """`--decision ship:fp8-vllm,block:int8_sq-hf` (repeatable) -> [(action, cell), ...]."""
    out: list[tuple[str, str]] = []
    for value in values or []:
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            action, sep, cell = part.partition(":")
            if not sep or action not in ACTIONS or not cell:
                raise QevalError(f"--decision {part!r} is not ACTION:CELL", field="--decision",
                                 fix=f"write e.g. ship:fp8-vllm or block:int8_sq-hf (actions: {', '.join(ACTIONS)})")
            out.append((action, cell))
    return out


def _gate_verdicts(results: dict[str, Any]) -> dict[str, str]:
    return {d["cell_id"]: d["verdict"] for d in results["decisions"]}


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QevalError(f"{path.parent} has no {path.name}", file=str(path),
                         fix="run `qeval report RUN_DIR` first (it writes results.json)" if what == "results"
                         else "sign it first: `qeval sign-off RUN_DIR --by NAME`") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QevalError(f"{path.name} is not valid JSON ({type(exc).__name__})", file=str(path),
                         fix="restore it from a backup") from None
    if not isinstance(data, dict):
        raise QevalError(f"{path.name} is not a JSON object", file=str(path), fix="restore it from a backup")
    return data


def sign(run_dir: Path, *, by: str, decisions: list[tuple[str, str]], note: str | None = None) -> dict[str, Any]:
    """Write RUN_DIR/signoff.json and return it.

    Refuses (QevalError, exit 2): a run without results.json or already signed; results.json that no longer
    matches the records (re-gated here, so what is signed is what the records say); a decision for a cell that
    is not a candidate cell of the run, or listed twice. Without decisions, the sign-off approves the gate's own
    verdicts (ship what it SHIPs). A decision against the gate is allowed (a person's call) and recorded so.
    """
    from qeval.report import same_results
    from qeval.report.results import build_results

    by = by.strip()
    if not by or any(not c.isprintable() for c in by):
        raise QevalError(f"--by {by!r} is not a name", field="--by", fix="give the signer's name, e.g. --by 'A. Lee'")
    path = run_dir / SIGNOFF_FILE
    if path.exists():
        raise QevalError(f"{run_dir} is already signed ({SIGNOFF_FILE} exists)", file=str(path),
                         fix="verify it with `qeval verify RUN_DIR`; to sign again, move the old sign-off away")
    results = _read_json(run_dir / "results.json", "results")
    gate = _gate_verdicts(results)
    rebuilt = build_results(run_dir)
    if not same_results(results, rebuilt):  # sign what the records say, not an older report of them
        fresh = _gate_verdicts(rebuilt)
        cell = next((c for c in sorted(set(gate) | set(fresh)) if gate.get(c) != fresh.get(c)), None)
        said = (f"it says {cell} is {gate.get(cell)}, the records now give {fresh.get(cell)}" if cell
                else "its numbers differ from what the records give now")
        raise QevalError(f"results.json is out of date: {said}", file=str(run_dir / "results.json"),
                         fix="run `qeval report RUN_DIR` and sign the report it writes")
    if not decisions:
        decisions = [("ship" if verdict == "SHIP" else "block", cell) for cell, verdict in gate.items()]
    seen: set[str] = set()
    chosen = []
    for action, cell in decisions:
        if cell not in gate:
            raise QevalError(f"--decision {action}:{cell}: {cell!r} is not a candidate cell of this run",
                             field="--decision", fix=f"use one of {', '.join(gate)}")
        if cell in seen:
            raise QevalError(f"--decision names {cell!r} twice", field="--decision", fix="decide each cell once")
        seen.add(cell)
        chosen.append(Decision(cell, action, gate[cell]))
    files = hash_evidence(run_dir)
    manifest = _read_json(run_dir / "manifest.json", "manifest")
    record = {
        "schema": SCHEMA,
        "run_id": manifest.get("run_id"),
        "signed_by": by,
        "signed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "note": note,
        "decisions": [{"cell": d.cell, "decision": d.action, "gate_verdict": d.gate_verdict,
                       "overrides_gate": d.overrides_gate} for d in chosen],
        "gate": gate,
        "results_sha256": files["results.json"],
        "manifest_sha256": files["manifest.json"],
        "evidence_sha256": evidence_digest(files),
        "files": files,
    }
    write_json_atomic(path, record)
    return record


@dataclass
class Verification:
    """What `verify` found: each list names what changed since the sign-off."""

    signoff: dict[str, Any]
    signoff_sha256: str
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)  # "cell: SHIP at sign-off, now BLOCK"
    problems: list[str] = field(default_factory=list)  # a sign-off that does not describe this run

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.added or self.verdicts or self.problems)

    def lines(self) -> list[str]:
        s = self.signoff
        head = (f"signed by {s.get('signed_by')} at {s.get('signed_at')}; evidence sha256 "
                f"{str(s.get('evidence_sha256'))[:16]}, signoff.json sha256 {self.signoff_sha256[:16]}")
        if self.ok:
            return [f"verified: nothing changed since the sign-off ({len(s.get('files', {}))} files, "
                    f"{len(s.get('gate', {}))} verdicts re-gated)", head]
        out = ["CHANGED since the sign-off:", head]
        out += [f"  changed: {name}" for name in self.changed]
        out += [f"  removed: {name}" for name in self.missing]
        out += [f"  added:   {name}" for name in self.added]
        out += [f"  verdict: {v}" for v in self.verdicts]
        out += [f"  {p}" for p in self.problems]
        return out


def load(run_dir: Path) -> dict[str, Any] | None:
    """The run's sign-off, or None when it has none."""
    path = run_dir / SIGNOFF_FILE
    return _read_json(path, "signoff") if path.exists() else None


def verify(run_dir: Path, *, regate: bool = True) -> Verification:
    """Recompute every bound hash and (with `regate`) the gate's verdicts from the records.

    Raises:
        QevalError: the run has no sign-off, or it is not a qeval sign-off (exit 2).
    """
    path = run_dir / SIGNOFF_FILE
    record = _read_json(path, "signoff")
    if record.get("schema") != SCHEMA or not isinstance(record.get("files"), dict):
        raise QevalError(f"{SIGNOFF_FILE} is not a qeval sign-off (schema {record.get('schema')!r})", file=str(path),
                         fix="restore it, or sign the run again")
    out = Verification(signoff=record, signoff_sha256=sha256_file(path))
    bound: dict[str, str] = record["files"]
    now = hash_evidence(run_dir)
    out.changed = sorted(n for n in bound if n in now and now[n] != bound[n])
    out.missing = sorted(n for n in bound if n not in now)
    out.added = sorted(n for n in now if n not in bound)
    if evidence_digest(bound) != record.get("evidence_sha256"):
        out.problems.append("the file list in signoff.json does not give its evidence_sha256 (signoff.json edited)")
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("run_id") != record.get("run_id"):
            out.problems.append(f"signed run {record.get('run_id')!r}, this is run {manifest.get('run_id')!r}")
    except (OSError, ValueError):
        pass  # already named as changed or removed
    if regate:
        from qeval.report.results import build_results

        try:
            fresh = _gate_verdicts(build_results(run_dir))
        except QevalError as err:  # records damaged past reading: that is a change too
            out.problems.append(f"the records cannot be gated any more: {err.problem}")
        except Exception as exc:  # noqa: BLE001 - a damaged record can break any reader: report, not a traceback
            out.problems.append(f"the records cannot be gated any more: {type(exc).__name__}: {exc}")
        else:
            signed = record.get("gate", {})
            out.verdicts = [f"{c}: {signed.get(c, 'absent')} at sign-off, now {fresh.get(c, 'absent')}"
                            for c in sorted(set(signed) | set(fresh)) if signed.get(c) != fresh.get(c)]
    return out


def view(run_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """What the report prints of a sign-off: who, when, what, the hashes, and whether the evidence still
    matches (hashes only: the report has just gated the records itself)."""
    check = verify(run_dir, regate=False)
    return {"by": record.get("signed_by"), "at": record.get("signed_at"), "note": record.get("note"),
            "decisions": record.get("decisions", []), "evidence_sha256": record.get("evidence_sha256"),
            "results_sha256": record.get("results_sha256"), "signoff_sha256": check.signoff_sha256,
            "n_files": len(record.get("files", {})), "ok": check.ok,
            "status": "evidence unchanged since the sign-off" if check.ok
            else "EVIDENCE CHANGED since the sign-off: " + "; ".join(line.strip() for line in check.lines()[2:6])}
