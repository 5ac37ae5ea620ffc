"""The offline task pack: every BIG-bench multiple-choice JSON task as an lm-eval task.

Source: the PyPI sdist `bigbench==1.0.0` (Apache-2.0), which holds all
BIG-bench tasks as `bigbench/benchmark_tasks/<task>/task.json`. Only those
members are read, streaming, from the 358 MB archive. Each multiple-choice
task (examples with `target_scores`) becomes `<pack>/<task>/data.jsonl` and an
lm-eval YAML `bigbench_mc_<task>` (local data files, no dataset hub).

Prompt format follows BIG-bench's own JSON-task formatting, as in the
`hails/bigbench` data that lm-eval's `bigbench_*_multiple_choice` tasks read:
task prefix, "Q: " input, the choices listed, "A:"; each choice is scored as
the continuation.
"""

from __future__ import annotations

import difflib
import json
import shutil
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from filelock import FileLock

from qeval.assets.download import Distribution, fetch
from qeval.errors import QevalError
from qeval.paths import cache_subdir, name_problem

SDIST = Distribution("bigbench", "1.0.0", "bigbench-1.0.0.tar.gz",
                     "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2")
PREFIX = "bigbench_mc_"
PACK_METRICS = ("acc", "acc_norm")  # the metric_list of every pack task (see _task_yaml)
PACK_VERSION = 3  # bump when the conversion changes: the pack is rebuilt (3: datasets' cache inside the pack)
DONE = "pack.json"


def format_prompt(task: dict[str, Any], example: dict[str, Any], choices: list[str]) -> str:
    """BIG-bench's zero-shot JSON-task prompt (defaults of bigbench/api/json_task.py)."""
    input_prefix = task.get("example_input_prefix")
    input_prefix = "\nQ: " if input_prefix is None else input_prefix
    output_prefix = task.get("example_output_prefix")
    output_prefix = "\nA: " if output_prefix is None else output_prefix
    choice_prefix = task.get("choice_prefix")
    choice_prefix = "\n  choice: " if choice_prefix is None else choice_prefix
    append = task.get("append_choices_to_input")
    append = True if append is None else append
    text = (task.get("task_prefix") or "") + input_prefix + example["input"]
    if append:
        text += "".join(choice_prefix + c for c in choices)
    # lm-eval puts its target delimiter (" ") between prompt and choice: drop ours.
    return (text + output_prefix).rstrip(" ")


def _convert(task: dict[str, Any]) -> list[dict[str, Any]] | None:
    examples = task.get("examples") or []
    if not examples or not all("target_scores" in e for e in examples):
        return None
    rows = []
    for doc_id, example in enumerate(examples):
        scores = example["target_scores"]
        choices = list(scores)
        if len(choices) < 2:
            continue
        best = max(scores.values())
        rows.append({"doc_id": doc_id, "input": format_prompt(task, example, choices), "choices": choices,
                     "gold": choices.index(next(c for c in choices if scores[c] == best))})
    return rows or None


def _task_yaml(name: str, data: Path) -> str:
    return "\n".join([
        f"task: {PREFIX}{name}",
        "tag: qeval_bigbench_mc",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data))}",
        # datasets' Arrow cache of the pack stays in the pack, not in ~/.cache/huggingface.
        f"  cache_dir: {json.dumps(str(data.parent / '.datasets-cache'))}",
        "test_split: test",
        "output_type: multiple_choice",
        'doc_to_text: "{{input}}"',
        'doc_to_choice: "{{choices}}"',
        "doc_to_target: gold",
        "metric_list:",
        *[f"  - {{metric: {m}, aggregation: mean, higher_is_better: true}}" for m in PACK_METRICS],
        "metadata:",
        f"  version: {PACK_VERSION}.0",
        "  source: bigbench==1.0.0 (PyPI sdist), converted by qeval",
        "",
    ])


def ensure_task_pack() -> Path:
    """The converted pack (built once: about a minute, most of it the download)."""
    pack = cache_subdir("tasks") / f"bigbench-mc-v{PACK_VERSION}"
    with FileLock(str(pack) + ".lock"):
        if (pack / DONE).exists():
            return pack
        sdist = fetch(SDIST)
        with tempfile.TemporaryDirectory(dir=pack.parent) as tmp:
            out = Path(tmp) / "pack"
            converted, skipped = _build(sdist, out)
            (out / DONE).write_text(json.dumps({"source": f"{SDIST.name}=={SDIST.version}",
                                                "tasks": converted, "skipped": skipped}, indent=1))
            if pack.exists():
                shutil.rmtree(pack)
            out.rename(pack)
            # YAML files name their data by absolute path: rewrite them for the final location.
            for yaml_path in pack.glob(f"*/{PREFIX}*.yaml"):
                yaml_path.write_text(_task_yaml(yaml_path.parent.name, yaml_path.parent / "data.jsonl"))
    return pack


def _build(sdist: Path, out: Path) -> tuple[list[str], dict[str, str]]:
    converted: list[str] = []
    skipped: dict[str, str] = {}
    with tarfile.open(sdist, "r|gz") as tf:
        for member in tf:
            if not (member.isfile() and member.name.endswith("/task.json") and "/benchmark_tasks/" in member.name):
                continue
            parts = member.name.split("/benchmark_tasks/", 1)[1].split("/")
            if len(parts) != 2:
                # Subtask folders (e.g. abstract_narrative_understanding/4_distractors): their
                # parent task.json is the task; the subtasks are variants we do not register.
                skipped["/".join(parts[:-1])] = "subtask variant (the parent task is converted if it has examples)"
                continue
            name = parts[0]
            if name_problem(name) is not None:  # an archive member's folder becomes a folder of the pack
                skipped[name] = f"task folder name cannot be a file name: {name_problem(name)}"
                continue
            fileobj = tf.extractfile(member)
            try:
                task = json.load(fileobj) if fileobj else {}
            except json.JSONDecodeError:
                skipped[name] = "task.json is not valid JSON"
                continue
            rows = _convert(task)
            if rows is None:
                skipped[name] = "not multiple choice (no target_scores), or a programmatic task"
                continue
            folder = out / name
            folder.mkdir(parents=True)
            with open(folder / "data.jsonl", "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            (folder / f"{PREFIX}{name}.yaml").write_text(_task_yaml(name, folder / "data.jsonl"))
            converted.append(name)
    return sorted(converted), skipped


def list_tasks() -> list[str]:
    pack = ensure_task_pack()
    return [f"{PREFIX}{t}" for t in json.loads((pack / DONE).read_text())["tasks"]]


@lru_cache(maxsize=1)
def task_manager() -> Any:
    """lm-eval's task manager with the offline pack on its include path."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(ensure_task_pack()))


def read_docs(task_name: str) -> list[dict[str, Any]]:
    """The JSONL rows of a pack task (for calibration overlap checks and held-out text)."""
    name = task_name.removeprefix(PREFIX)
    path = ensure_task_pack() / name / "data.jsonl"
    if not path.exists():
        raise QevalError(f"{task_name!r} is not in the offline BIG-bench pack",
                         fix=f"use one of the bigbench_mc_* tasks (see `qeval fetch`){_close(task_name)}")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _close(name: str) -> str:
    matches = difflib.get_close_matches(name, list_tasks(), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(matches)}?" if matches else ""


def resolve_task(name: str, manager: Any, *, file: str | None = None) -> None:
    """Check that lm-eval knows a task; standard hub tasks get an offline-aware message.

    Args:
        file: the suite file that names the task (for the message).
    """
    if name in manager.all_tasks:
        if name.startswith(PREFIX):
            return
        if _hub_reachable():
            return
        raise QevalError(
            f"task {name!r} is a standard lm-eval task whose data comes from the Hugging Face dataset hub, "
            "which is not reachable from this machine", file=file, field=f"tasks[{name}]",
            fix="run it where the hub is reachable, or use the offline BIG-bench pack "
            f"(bigbench_mc_<task>, e.g. bigbench_mc_physics){_close(PREFIX + name.split('_')[0])}")
    offline = list_tasks()
    known = list(dict.fromkeys(offline + list(manager.all_tasks)))  # the pack is in both: suggest each once
    matches = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    raise QevalError(f"unknown task {name!r}: neither lm-eval nor the offline BIG-bench pack has it",
                     file=file, field=f"tasks[{name}]",
                     fix=(f"did you mean {', '.join(matches)}? " if matches else "")
                     + f"{len(offline)} offline tasks are named bigbench_mc_<task>")


def _hub_reachable() -> bool:
    import os
    import socket

    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False
