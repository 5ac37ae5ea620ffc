"""The offline task pack: BIG-bench JSON tasks as lm-eval tasks, multiple-choice and generative.

Source: the PyPI sdist `bigbench==1.0.0` (Apache-2.0), which holds all BIG-bench tasks as
`bigbench/benchmark_tasks/<task>/task.json` and, for tasks made of subtasks,
`<task>/<subtask>/task.json`. Only those members are read, streaming, from the 358 MB archive.

- A multiple-choice task (examples with `target_scores`) becomes `bigbench_mc_<task>`.
- A generative task (examples with `target`, metric `exact_str_match` or
  `numeric_match_with_0_1_relative_error`) becomes `bigbench_gen_<task>`, an lm-eval `generate_until`
  task scored by BIG-bench's own post-processing and metrics (qeval.assets.bigbench_scoring).
- A subtask becomes `bigbench_<kind>_<task>.<subtask>`, and its parent `bigbench_<kind>_<task>` holds
  every converted subtask's documents (its YAML lists their data files; nothing is copied), each with
  its `subtask` field: the cluster key (`cluster: subtask` in a suite).

`pack.json` is the index: every task with its document count, the counts per kind and what was
skipped and why. Conversion details: qeval.assets.bigbench_convert.
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

from qeval.assets import bigbench_convert as convert
from qeval.assets.bigbench_convert import GEN_PREFIX, MC_METRICS, MC_PREFIX, PackTask, format_prompt  # noqa: F401
from qeval.assets.download import Distribution, NotServed, fetch
from qeval.errors import QevalError
from qeval.paths import cache_subdir, name_problem

SDIST = Distribution("bigbench", "1.0.0", "bigbench-1.0.0.tar.gz",
                     "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2")
PREFIX = MC_PREFIX  # kept for callers that mean the multiple-choice pack
PREFIXES = (MC_PREFIX, GEN_PREFIX)
PACK_METRICS = MC_METRICS  # the metric_list of every multiple-choice pack task
# Bump when the conversion changes: a new folder is built beside the old one (which runs that use the
# old code keep reading). 4: generative tasks, subtask folders and parents, the `subtask` field;
# 5: default-regex generative tasks stop at the regex's terminators.
PACK_VERSION = 5
DONE = "pack.json"


def pack_dir() -> Path:
    return cache_subdir("tasks") / f"bigbench-v{PACK_VERSION}"


def ensure_task_pack() -> Path:
    """The converted pack (built once: a minute or two, most of it reading the archive)."""
    pack = pack_dir()
    with FileLock(str(pack) + ".lock"):
        if (pack / DONE).exists():
            return pack
        sdist = fetch(SDIST)
        with tempfile.TemporaryDirectory(dir=pack.parent) as tmp:
            out = Path(tmp) / "pack"
            tasks, skipped = _build(sdist, out)
            counts = _counts(tasks)
            if pack.exists():
                shutil.rmtree(pack)
            out.rename(pack)
            # YAML files name their data by absolute path: write them for the final location.
            for task in tasks:
                (pack / task.folder / f"{task.registered}.yaml").write_text(convert.task_yaml(task, pack))
            (pack / DONE).write_text(json.dumps({
                "source": f"{SDIST.name}=={SDIST.version}", "version": PACK_VERSION, "counts": counts,
                "tasks": {t.registered: t.record() for t in sorted(tasks, key=lambda t: t.registered)},
                "skipped": skipped}, indent=1))
    return pack


def _counts(tasks: list[PackTask]) -> dict[str, int]:
    """How many tasks of each kind the pack registers (the issue's and the README's numbers)."""
    out: dict[str, int] = {}
    for kind in ("mc", "gen"):
        mine = [t for t in tasks if t.kind == kind]
        out[f"{kind}_tasks"] = len(mine)
        out[f"{kind}_top_level"] = sum(1 for t in mine if "." not in t.name and not t.subtasks)
        out[f"{kind}_subtasks"] = sum(1 for t in mine if "." in t.name)
        out[f"{kind}_parents"] = sum(1 for t in mine if t.subtasks)
    return out


def _write_rows(folder: Path, rows: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "data.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _leaf(kind: str, task: dict[str, Any], name: str, subtask: str, folder: str, out: Path) -> PackTask | None:
    """Convert one task.json into one pack task of `kind` (None where it is not of that kind)."""
    rows = convert.mc_rows(task, subtask) if kind == "mc" else convert.gen_rows(task, subtask)
    if rows is None:
        return None
    _write_rows(out / folder, rows)
    pack_task = PackTask(kind=kind, name=name, folder=folder, data=[f"{folder}/data.jsonl"], n_docs=len(rows))
    if kind == "gen":
        pack_task.metrics = convert.gen_metrics(task)
        pack_task.generation = convert.scoring.generation_settings(task, [r["targets"] for r in rows])
        sep = task.get("few_shot_example_separator")
        pack_task.few_shot_separator = "\n" if sep is None else sep
        pack_task.target_delimiter = " " if rows[0]["moved_space"] else ""
        (out / folder / "bigbench_scoring.py").write_text(convert.scoring_shim(pack_task.metrics))
    return pack_task


def _parent(kind: str, name: str, children: list[PackTask], out: Path) -> tuple[PackTask | None, str | None]:
    """The parent task over its converted subtasks, or why there is none."""
    folder = f"{kind}/{name}"
    parent = PackTask(kind=kind, name=name, folder=folder, data=[d for c in children for d in c.data],
                      n_docs=sum(c.n_docs for c in children), subtasks=[c.name.split(".", 1)[1] for c in children])
    if kind == "gen":
        common = [m for m in convert.scoring.METRICS if all(m in c.metrics for c in children)]
        if not common:
            return None, "its subtasks share no exact-match metric"
        if len({(c.few_shot_separator, c.target_delimiter) for c in children}) > 1:
            return None, "its subtasks format few-shot examples differently"
        parent.metrics = tuple(common)
        untils = {tuple(c.generation["until"]) for c in children}
        # A stop sequence only where every subtask may stop there; else each generates to its budget.
        parent.generation = {**children[0].generation, "until": list(untils.pop()) if len(untils) == 1 else [],
                             "max_gen_toks": max(c.generation["max_gen_toks"] for c in children)}
        parent.few_shot_separator, parent.target_delimiter = children[0].few_shot_separator, \
            children[0].target_delimiter
        (out / folder).mkdir(parents=True, exist_ok=True)
        (out / folder / "bigbench_scoring.py").write_text(convert.scoring_shim(parent.metrics))
    return parent, None


def _build(sdist: Path, out: Path) -> tuple[list[PackTask], dict[str, str]]:
    tasks: list[PackTask] = []
    skipped: dict[str, str] = {}
    children: dict[tuple[str, str], list[PackTask]] = {}
    containers: set[str] = set()
    with tarfile.open(sdist, "r|gz") as tf:
        for member in tf:
            if not (member.isfile() and member.name.endswith("/task.json") and "/benchmark_tasks/" in member.name):
                continue
            parts = member.name.split("/benchmark_tasks/", 1)[1].split("/")[:-1]
            where = "/".join(parts)
            if len(parts) not in (1, 2):
                skipped[where] = "nested deeper than task/subtask"
                continue
            bad = next((name_problem(p) for p in parts if name_problem(p) is not None), None)
            if bad is not None:  # an archive member's folder becomes a folder of the pack
                skipped[where] = f"folder name cannot be a file name: {bad}"
                continue
            fileobj = tf.extractfile(member)
            try:
                task = json.load(fileobj) if fileobj else {}
            except json.JSONDecodeError:
                skipped[where] = "task.json is not valid JSON"
                continue
            if len(parts) == 1 and not task.get("examples"):
                containers.add(parts[0])  # its examples live in its subtask folders
                continue
            made = []
            for kind in ("mc", "gen"):
                if len(parts) == 1:
                    leaf = _leaf(kind, task, parts[0], parts[0], f"{kind}/{parts[0]}", out)
                else:
                    leaf = _leaf(kind, task, ".".join(parts), parts[1], f"{kind}/{where}", out)
                    if leaf is not None:
                        children.setdefault((kind, parts[0]), []).append(leaf)
                if leaf is not None:
                    made.append(leaf)
            if not made:
                skipped[where] = ("no examples" if not task.get("examples") else
                                  "neither multiple choice (target_scores) nor scored by exact or numeric match "
                                  "(e.g. BLEU/ROUGE only)")
            tasks.extend(made)
    for (kind, name), kids in sorted(children.items()):
        if name not in containers:
            skipped[f"{kind}:{name}"] = "has examples of its own beside subtask folders (BIG-bench does not support it)"
            continue
        parent, why = _parent(kind, name, sorted(kids, key=lambda c: c.name), out)
        if parent is None:
            skipped[f"{kind}:{name} (parent)"] = why or ""
        else:
            tasks.append(parent)
    return tasks, skipped


def index() -> dict[str, Any]:
    """The pack's index (pack.json): tasks with their document counts, counts per kind, what was skipped."""
    return json.loads((ensure_task_pack() / DONE).read_text())


def list_tasks(kind: str | None = None) -> list[str]:
    """Registered pack task names (kind: "mc", "gen" or None for both)."""
    names = list(index()["tasks"])
    return [n for n in names if kind is None or n.startswith(MC_PREFIX if kind == "mc" else GEN_PREFIX)]


def task_info(task_name: str) -> dict[str, Any] | None:
    """A pack task's index record (None where the pack has no such task)."""
    return index()["tasks"].get(task_name)


@lru_cache(maxsize=4)
def task_manager(extra: tuple[str, ...] = (), *, with_pack: bool = True) -> Any:
    """lm-eval's task manager with the offline pack (unless `with_pack` is False), and a suite's own task
    folders, on its include path."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[*([str(ensure_task_pack())] if with_pack else []), *extra])


def needs_pack(task_names: Any) -> bool:
    """Whether any of these tasks is a pack task: a suite of its own tasks alone never needs the BIG-bench
    archive (which a registry may stop serving), so it is not fetched for one."""
    return any(name.startswith(PREFIXES) for name in task_names)


def suite_task_manager(suite: Any, suite_path: Path) -> Any:
    """The task manager of a suite: its `task_dirs` (relative to the suite file), and the pack where a task
    of the suite is a pack task."""
    dirs = []
    for i, entry in enumerate(suite.task_dirs):
        folder = Path(entry) if Path(entry).is_absolute() else (suite_path.parent / entry).resolve()
        if not folder.is_dir():
            raise QevalError(f"task folder {entry!r} does not exist (looked at {folder})", file=str(suite_path),
                             field=f"task_dirs[{i}]", fix="name a folder of lm-eval task YAML files, relative to "
                             "the suite file")
        dirs.append(str(folder))
    return task_manager(tuple(dirs), with_pack=needs_pack(t.name for t in suite.tasks))


def read_docs(task_name: str) -> list[dict[str, Any]]:
    """The JSONL rows of a pack task in lm-eval's document order (calibration overlap checks, held-out text)."""
    info = task_info(task_name)
    if info is None:
        raise QevalError(f"{task_name!r} is not in the offline BIG-bench pack",
                         fix=f"use one of the bigbench_mc_* or bigbench_gen_* tasks (see `qeval fetch`)"
                         f"{_close(task_name)}")
    pack = ensure_task_pack()
    folders = [info["folder"]] if not info.get("subtasks") else [f"{info['folder']}/{s}" for s in info["subtasks"]]
    rows: list[dict[str, Any]] = []
    for folder in folders:
        with open(pack / folder / "data.jsonl", encoding="utf-8") as f:
            rows.extend(json.loads(line) for line in f)
    return rows


def _close(name: str) -> str:
    matches = difflib.get_close_matches(name, list_tasks(), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(matches)}?" if matches else ""


def resolve_task(name: str, manager: Any, *, file: str | None = None) -> None:
    """Check that lm-eval knows a task; standard hub tasks get an offline-aware message.

    Args:
        file: the suite file that names the task (for the message).
    """
    if name in manager.all_tasks:
        if name.startswith(PREFIXES) or not _ships_with_lm_eval(manager, name):
            return  # the pack's, or a task YAML of the suite's own task_dirs (its data named there)
        if _hub_reachable():
            return
        raise QevalError(
            f"task {name!r} is a standard lm-eval task whose data comes from the Hugging Face dataset hub, "
            "which is not reachable from this machine", file=file, field=f"tasks[{name}]",
            fix="run it where the hub is reachable, or use the offline BIG-bench pack "
            f"(bigbench_mc_<task>, e.g. bigbench_mc_physics){_close(PREFIX + name.split('_')[0])}")
    offline = _pack_tasks_if_served()
    known = list(dict.fromkeys(offline + list(manager.all_tasks)))  # the pack is in both: suggest each once
    matches = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    raise QevalError(f"unknown task {name!r}: neither lm-eval nor the offline BIG-bench pack has it",
                     file=file, field=f"tasks[{name}]",
                     fix=(f"did you mean {', '.join(matches)}? " if matches else "")
                     + f"{len(offline)} offline tasks are named bigbench_mc_<task> and bigbench_gen_<task>")


def _pack_tasks_if_served() -> list[str]:
    """The pack's task names for a suggestion; none where the registry does not serve the archive."""
    try:
        return list_tasks()
    except NotServed:
        return []


def _ships_with_lm_eval(manager: Any, name: str) -> bool:
    """True for a task whose YAML is lm-eval's own (its data comes from the dataset hub)."""
    import lm_eval

    yaml_path = getattr(manager.task_index.get(name), "yaml_path", None)
    if not yaml_path or yaml_path == -1:
        return True
    return Path(yaml_path).resolve().is_relative_to(Path(lm_eval.__file__).resolve().parent)


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
