"""Divergence on the engine a cell runs on: the baseline's reference and noise floor, each candidate against it.

Per engine (backend) of a run:

- the baseline cell computes its next-token distributions on the held-out text and the task prompts
  with its own engine and stores them (qeval.reference); then it measures the engine's noise floor:
  the same model on the same engine under a second batch composition (one sequence per engine call
  instead of the usual packing), and, where another engine's baseline reference exists in the run,
  across engines (e.g. KL(bf16 on hf || bf16 on vllm));
- each candidate cell computes its own distributions on the same token ids with its own engine and
  compares them with the stored reference, token by token: KL(baseline || candidate), top-1
  agreement, PPL ratio, each number with its kind (qeval.divergence), the route, and the floor.

Records: `cells/<cell>/divergence.json`. A candidate's section whose KL has no upper side (top-k only
from a server) lives under "lower_bound_only", not at its usual key (see qeval.divergence).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from qeval import divergence
from qeval.backends.base import DistributionSource, PromptDistributions
from qeval.reference import Reference, section_dir, write_reference

log = logging.getLogger(__name__)

SECTIONS = {"heldout": "held-out text", "task_prompts": "task prompts"}
CHUNK_TOKENS = 2048  # prompt tokens handed to an engine per call of prompt_distributions (bounded memory)


def sections(ctx: Any) -> dict[str, list[list[int]]]:
    """The token sequences compared, per section; cut to the model length so no engine truncates them."""
    from qeval.quantize import calibration_for

    spec = ctx.suite.divergence
    limit = max(2, ctx.suite.model.max_length - 1)  # a prompt must leave vLLM room for its one output token
    out = {"heldout": divergence.take_tokens(calibration_for(ctx).heldout, spec.heldout_tokens)}
    prompts = divergence.task_prompt_sequences(ctx, spec.task_prompts)
    if prompts:
        out["task_prompts"] = prompts
    return {name: [list(s)[:limit] for s in seqs if len(s) >= 2] for name, seqs in out.items()}


def _chunks(seqs: Sequence[Sequence[int]]) -> Iterator[tuple[int, list[list[int]]]]:
    start, chunk, used = 0, [], 0
    for i, s in enumerate(seqs):
        if chunk and used + len(s) > CHUNK_TOKENS:
            yield start, chunk
            start, chunk, used = i, [], 0
        chunk.append(list(s))
        used += len(s)
    if chunk:
        yield start, chunk


def _stream(backend: Any, seqs: Sequence[Sequence[int]], batch_size: int | None = None
            ) -> Iterator[list[PromptDistributions]]:
    for _, chunk in _chunks(seqs):
        yield backend.prompt_distributions(chunk, batch_size=batch_size)


def _against(reference: Reference, backend: Any, seqs: Sequence[Sequence[int]],
             batch_size: int | None = None) -> dict[str, Any]:
    """Summary of KL(reference || backend) over `seqs` (the sequences the reference holds)."""
    def pairs() -> Iterator[tuple[PromptDistributions, PromptDistributions]]:
        for start, chunk in _chunks(seqs):
            for j, d in enumerate(backend.prompt_distributions(chunk, batch_size=batch_size)):
                yield reference.get(start + j), d

    return divergence.summarize(divergence.compare_distributions(pairs()))


def _between(p: Reference, q: Reference) -> dict[str, Any]:
    return divergence.summarize(divergence.compare_distributions((p.get(i), q.get(i)) for i in range(len(p))))


def baseline_cell_id(ctx: Any, backend: str) -> str:
    return f"{ctx.suite.baseline}-{backend}"


def _reference(ctx: Any, backend: str, section: str, seqs: Sequence[Sequence[int]]) -> Reference | str:
    """The stored reference of `backend`'s baseline for a section, or why there is none."""
    cell_id = baseline_cell_id(ctx, backend)
    try:
        ref = Reference(section_dir(ctx.store.cell_dir(cell_id), section))
    except FileNotFoundError:
        return (f"the baseline cell {cell_id} stored no reference distributions for the {SECTIONS[section]} "
                "(it has not run, did not finish its divergence step, or ran before qeval stored them)")
    if not ref.matches(seqs):
        return (f"the reference of {cell_id} for the {SECTIONS[section]} was computed on other tokens "
                "(suite or tokenizer changed)")
    return ref


def waiting_for_reference(ctx: Any, cells: Sequence[Any], backend: str) -> list[str]:
    """Candidate cells on `backend` that lack a divergence record and may still compute one (not run yet,
    or ERROR: a resume retries it); NOT RUN cells never will."""
    return [c.id for c in cells if c.backend == backend and not c.is_baseline
            and (ctx.store.read_status(c.id) or {}).get("state") != "not_run"
            and not ctx.store.read_json(c.id, "divergence.json")]


def missing_references(cell_dir: Path) -> list[str]:
    """Sections a finished baseline recorded but whose stored distributions are gone or incomplete.

    A run directory copied without its large arrays (a device's state packed for the next machine, an
    archive that leaves big files out) keeps the baseline's status "ok" and loses what every candidate
    is compared with: resuming must recompute the baseline, not reuse it.
    """
    record_path = cell_dir / "divergence.json"
    if not record_path.is_file():
        return []
    record = json.loads(record_path.read_text(encoding="utf-8"))
    missing = []
    for name in (record.get("reference") or {}):
        folder = section_dir(cell_dir, name)
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            missing.append(name)
            continue
        if any(not (folder / f"{array}.npy").is_file() for array in meta.get("arrays", [])):
            missing.append(name)
    return missing


def run(ctx: Any, cell: Any, backend: Any) -> dict[str, Any]:
    """The divergence record of one cell (baseline: reference + noise floor; candidate: against it)."""
    if not isinstance(backend, DistributionSource):
        return {"engine": cell.backend, "unavailable": f"the {cell.backend} backend returns no next-token "
                                                       "distributions, so no divergence can be computed on it"}
    seqs = sections(ctx)
    try:
        return (_baseline(ctx, cell, backend, seqs) if cell.is_baseline else _candidate(ctx, cell, backend, seqs))
    except divergence.DivergenceUnavailable as exc:
        return {"engine": cell.backend, "unavailable": str(exc)}


def _baseline(ctx: Any, cell: Any, backend: Any, seqs: dict[str, list[list[int]]]) -> dict[str, Any]:
    record: dict[str, Any] = {"role": "baseline", "engine": cell.backend, "reference": {}, "seconds": {},
                              "noise_floor": {"batch": {"description": (
                                  f"{cell.precision} against itself on {cell.backend}: the reference (sequences "
                                  "packed into shared engine calls) vs one sequence per engine call")}}}
    cell_dir = ctx.store.cell_dir(cell.id)
    for name, s in seqs.items():
        t0 = time.perf_counter()
        record["reference"][name] = write_reference(section_dir(cell_dir, name), s, _stream(backend, s),
                                                    lambda: backend.distribution_route)
        record["seconds"][f"reference_{name}"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        ref = Reference(section_dir(cell_dir, name))
        record["noise_floor"]["batch"][name] = _against(ref, backend, s, batch_size=1)
        record["seconds"][f"floor_{name}"] = round(time.perf_counter() - t0, 2)
    record["route"] = dataclasses.asdict(backend.distribution_route)
    cross = {}
    for other in ctx.suite.backends:
        if other == cell.backend:
            continue
        entry: dict[str, Any] = {"reference_cell": baseline_cell_id(ctx, other), "description": (
            f"KL({cell.precision} on {other} || {cell.precision} on {cell.backend}) on the same tokens")}
        for name, s in seqs.items():
            theirs = _reference(ctx, other, name, s)
            if isinstance(theirs, str):
                entry.setdefault("missing", {})[name] = theirs
                continue
            entry[name] = _between(theirs, Reference(section_dir(cell_dir, name)))
        if any(name in entry for name in seqs):
            cross[other] = entry
    if cross:
        record["noise_floor"]["cross_engine"] = cross
    h = record["noise_floor"]["batch"].get("heldout") or {}
    log.info("%s: noise floor (batch composition) KLD %.3g, top-1 %.4f on %d held-out tokens; route %s", cell.id,
             h.get("kld_mean", float("nan")), h.get("top1_agree", float("nan")), h.get("n_tokens", 0),
             record["route"]["name"])
    return record


def floor_summary(ctx: Any, backend: str) -> dict[str, Any] | None:
    """The noise floors of `backend`'s baseline, short form per section, or None when not measured."""
    base = ctx.store.read_json(baseline_cell_id(ctx, backend), "divergence.json") or {}
    floor = base.get("noise_floor")
    if not floor:
        return None
    out: dict[str, Any] = {"batch": {k: divergence.short(v) for k, v in floor.get("batch", {}).items()
                                     if isinstance(v, dict)},
                           "batch_description": floor.get("batch", {}).get("description")}
    for other, entry in (floor.get("cross_engine") or {}).items():
        out.setdefault("cross_engine", {})[other] = {
            "description": entry.get("description"),
            **{k: divergence.short(v) for k, v in entry.items() if k in SECTIONS}}
    return out


def _candidate(ctx: Any, cell: Any, backend: Any, seqs: dict[str, list[list[int]]]) -> dict[str, Any]:
    caps = backend.capabilities
    record: dict[str, Any] = {"role": "candidate", "baseline": baseline_cell_id(ctx, cell.backend),
                              "engine": cell.backend,
                              "simulated": caps.kernels.get(cell.precision) == "simulated", "seconds": {}}
    missing = {}
    for name, s in seqs.items():
        ref = _reference(ctx, cell.backend, name, s)
        if isinstance(ref, str):
            missing[name] = ref
            continue
        record["reference_route"] = dataclasses.asdict(ref.route)
        t0 = time.perf_counter()
        section = _against(ref, backend, s)
        record["seconds"][name] = round(time.perf_counter() - t0, 2)
        if divergence.has_upper_side(section):
            record[name] = section
        else:  # a lower bound only: never where a reader of the usual keys would take it for the value
            record.setdefault("lower_bound_only", {})[name] = section
    if missing and len(missing) == len(seqs):
        raise divergence.DivergenceUnavailable("; ".join(missing.values()))
    if missing:
        record["missing"] = missing
    record["route"] = dataclasses.asdict(backend.distribution_route)
    floor = floor_summary(ctx, cell.backend)
    if floor:
        record["noise_floor"] = floor
    h = record.get("heldout") or (record.get("lower_bound_only") or {}).get("heldout")
    if h:
        log.info("%s: KLD %s %.4g (p99 %.3g), top-1 %.3f, PPL ratio %.3f on %d held-out tokens (%s)", cell.id,
                 "exact" if h["kld_kind"] == "exact" else ">=", h["kld_mean"], h["kld_p99"], h["top1_agree"],
                 h["ppl_ratio"], h["n_tokens"], record["route"]["name"])
    return record


def prune_references(ctx: Any, cells: Sequence[Any]) -> list[str]:
    """Delete each engine's stored reference once no candidate on that engine can still need it.

    A reference is tokens x vocabulary x 4 bytes (0.7 GB per engine for the CPU smoke suite). It is kept
    while any candidate cell on its engine lacks a divergence record and may still compute one (not run
    yet, or ERROR: a resume retries it); NOT RUN cells never will.

    Returns:
        The baseline cells whose reference was deleted.
    """
    pruned = []
    for backend in {c.backend for c in cells}:
        base_id = baseline_cell_id(ctx, backend)
        folder = ctx.store.cell_dir(base_id) / "reference"
        if not folder.is_dir():
            continue
        if waiting_for_reference(ctx, cells, backend):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        pruned.append(base_id)
        log.info("%s: reference distributions deleted (every candidate on %s has its divergence)", base_id, backend)
    return pruned
