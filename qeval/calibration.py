"""Calibration sets: what ModelOpt sees while it chooses scales, and held-out text for divergence.

A set (calibration_sets/<name>.yaml) names a source, a number of samples, a
sequence length and a seed. Sampling is deterministic. The texts are split
once, by the seed, into a calibration part and a disjoint held-out part; the
divergence metrics use only the held-out part, and no part may overlap the
suite's evaluation data (checked: a BIG-bench source naming an eval task is
refused, naming the task).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, PositiveInt, ValidationError

from qeval.errors import QevalError
from qeval.suite_fields import Strict


class BigbenchSource(Strict):
    kind: Literal["bigbench"]
    tasks: list[str] = Field(min_length=1, description="offline pack task names (bigbench_mc_*)")


class FileSource(Strict):
    kind: Literal["text", "jsonl"]
    path: str = Field(description="relative to the calibration set file")
    field: str = Field("text", description="the JSONL field holding the text")


class HubSource(Strict):
    kind: Literal["hub"]
    dataset: str = Field(description="a dataset hub name, e.g. cnn_dailymail or pile-val (needs the hub)")
    split: str = "train"
    field: str = "text"


class CalibrationSpec(Strict):
    name: str
    source: Annotated[Union[BigbenchSource, FileSource, HubSource], Field(discriminator="kind")]
    num_samples: PositiveInt = 32
    seq_len: PositiveInt = 256
    seed: int = 0


@dataclass(frozen=True)
class CalibrationSet:
    """Token sequences for calibration and held-out evaluation, and their content hash."""

    spec: CalibrationSpec
    calibration: list[list[int]]
    heldout: list[list[int]]
    content_hash: str


def _builtin(name: str) -> Path:
    return Path(str(resources.files("qeval") / "calibration_sets" / f"{name}.yaml"))


def load_spec(name_or_path: str) -> tuple[CalibrationSpec, Path]:
    from qeval.suite import read_yaml
    from qeval.suite_fields import validation_error_to_qeval

    path = Path(name_or_path)
    if not path.exists():
        path = _builtin(name_or_path)
    if not path.exists():
        known = sorted(p.stem for p in _builtin("x").parent.glob("*.yaml"))
        raise QevalError(f"calibration set {name_or_path!r} not found", field="calibration",
                         fix=f"use one of {', '.join(known)} or the path of a calibration set YAML")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise QevalError("a calibration set must be a YAML mapping", file=str(path), fix="see bigbench-mixed.yaml")
    try:
        return CalibrationSpec.model_validate(data), path
    except ValidationError as err:
        raise validation_error_to_qeval(err, str(path), CalibrationSpec) from None


def _texts(spec: CalibrationSpec, spec_path: Path, eval_tasks: list[str]) -> list[str]:
    source = spec.source
    if isinstance(source, BigbenchSource):
        from qeval.assets.bigbench import read_docs

        overlap = sorted(set(source.tasks) & set(eval_tasks))
        if overlap:
            raise QevalError(f"calibration source task {overlap[0]} is also an evaluation task of the suite: "
                             "calibrating on evaluation data inflates the candidate's scores",
                             file=str(spec_path), field="source.tasks",
                             fix=f"remove {', '.join(overlap)} from the calibration set, or pick another set")
        texts = []
        for task in source.tasks:
            try:
                docs = read_docs(task)
            except QevalError as err:  # name the calibration file, where the task is listed
                raise QevalError(err.problem, file=str(spec_path), field="source.tasks", fix=err.fix) from None
            for doc in docs:
                texts.append(doc["input"] + " " + doc["choices"][doc["gold"]])
        return texts
    if isinstance(source, FileSource):
        path = (spec_path.parent / source.path).resolve()
        if not path.is_file():
            raise QevalError(f"calibration file {path} does not exist", file=str(spec_path), field="source.path",
                             fix="give a path relative to the calibration set file")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (PermissionError, IsADirectoryError, UnicodeDecodeError) as exc:
            raise QevalError(f"cannot read calibration file {path} as UTF-8 text ({type(exc).__name__})",
                             file=str(spec_path), field="source.path",
                             fix="point it at a readable UTF-8 text or JSONL file") from None
        if source.kind == "jsonl":
            texts = []
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    texts.append(str(row[source.field]))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise QevalError(f"line {n} of {path} has no {source.field!r} text field "
                                     f"({type(exc).__name__})", file=str(spec_path), field="source.field",
                                     fix=f"make every line a JSON object with a {source.field!r} string, "
                                         "or name the right field") from None
        else:
            texts = [line for line in lines if line.strip()]
        if not texts:
            raise QevalError(f"calibration file {path} has no text", file=str(spec_path), field="source.path",
                             fix="point it at a file with at least one non-empty line")
        return texts
    try:
        import datasets

        rows = datasets.load_dataset(source.dataset, split=source.split)
        return [str(r[source.field]) for r in rows.select(range(min(len(rows), 10 * spec.num_samples)))]
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear message
        raise QevalError(f"could not load dataset {source.dataset!r} from the hub ({type(exc).__name__})",
                         file=str(spec_path), field="source.dataset",
                         fix="use a bigbench or local text source where the hub is unreachable") from None


def check_calibration(name_or_path: str, eval_tasks: list[str], *, suite_file: str | None = None) -> None:
    """Check a calibration set before any model is loaded: it exists, validates, has text, does not
    overlap the evaluation tasks. Hub sources are checked when loaded (they need the network).

    Args:
        suite_file: the suite that names the set, for messages that have no file of their own.
    """
    try:
        spec, path = load_spec(name_or_path)
        if not isinstance(spec.source, HubSource):
            _texts(spec, path, eval_tasks)
    except QevalError as err:
        if err.file is None:
            raise QevalError(err.problem, file=suite_file, field=err.field, fix=err.fix) from None
        raise


def definition_hash(name_or_path: str, eval_tasks: list[str]) -> str:
    """sha256 of a set's definition and every source text, without a tokenizer: what a resume compares
    (qeval.identity). A hub source is identified by its definition only (its content needs the network)."""
    spec, path = load_spec(name_or_path)
    texts = None if isinstance(spec.source, HubSource) else _texts(spec, path, eval_tasks)
    payload = json.dumps({"spec": spec.model_dump(), "texts": texts}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def load_calibration(name_or_path: str, eval_tasks: list[str], tokenizer: Any,
                     num_samples: int | None = None) -> CalibrationSet:
    """Load a set, refuse overlap with `eval_tasks`, and split it into calibration / held-out tokens.

    Args:
        num_samples: calibration samples instead of the set's own number (a custom recipe's edit).
    """
    spec, path = load_spec(name_or_path)
    if num_samples is not None:
        spec = spec.model_copy(update={"num_samples": num_samples})
    texts = _texts(spec, path, eval_tasks)
    rng = random.Random(spec.seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    # Held-out first, so the calibration part's size can change without moving the held-out text.
    n_heldout = max(1, len(order) // 4)
    heldout_texts = [texts[i] for i in order[:n_heldout]]
    calib_texts = [texts[i] for i in order[n_heldout:]] or heldout_texts
    def encode(items: list[str], limit: int) -> list[list[int]]:
        seqs = []
        for text in items:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][: spec.seq_len]
            if len(ids) >= 2:
                seqs.append(ids)
            if len(seqs) >= limit:
                break
        return seqs
    calibration = encode(calib_texts, spec.num_samples)
    heldout = encode(heldout_texts, 10_000)
    if not calibration:
        raise QevalError("the calibration set yields no usable text (every sample is shorter than 2 tokens)",
                         file=str(path), fix="use a source with real text")
    content = hashlib.sha256(json.dumps([spec.model_dump(), calibration], separators=(",", ":")).encode())
    return CalibrationSet(spec=spec, calibration=calibration, heldout=heldout, content_hash=content.hexdigest())
