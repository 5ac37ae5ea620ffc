"""One BIG-bench JSON task -> the rows and lm-eval YAML of a pack task (multiple-choice or generative).

Prompt format follows BIG-bench's own JSON-task formatting (bigbench/api/json_task.py
`default_format_fn` defaults, as in the `hails/bigbench` data that lm-eval's bigbench
tasks read): task prefix, the input prefix ("\\nQ: "), the input, for multiple choice the
choices listed, the output prefix ("\\nA: "). Every row carries `subtask` (the BIG-bench
subtask it came from; a task without subtasks is its own one), the cluster key of a suite
that clusters by it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qeval.assets import bigbench_scoring as scoring

MC_PREFIX = "bigbench_mc_"
GEN_PREFIX = "bigbench_gen_"
MC_METRICS = ("acc", "acc_norm")


def format_prompt(task: dict[str, Any], example: dict[str, Any], choices: list[str]) -> str:
    """BIG-bench's zero-shot JSON-task prompt for multiple choice (defaults of bigbench/api/json_task.py)."""
    text, _ = _prompt(task, example, choices)
    # lm-eval puts its target delimiter (" ") between prompt and choice: drop ours.
    return text.rstrip(" ")


def _prompt(task: dict[str, Any], example: dict[str, Any], choices: list[str] | None) -> tuple[str, str]:
    """(task prefix + input prefix + input [+ choices] + output prefix, the output prefix)."""
    input_prefix = task.get("example_input_prefix")
    input_prefix = "\nQ: " if input_prefix is None else input_prefix
    output_prefix = task.get("example_output_prefix")
    output_prefix = "\nA: " if output_prefix is None else output_prefix
    choice_prefix = task.get("choice_prefix")
    choice_prefix = "\n  choice: " if choice_prefix is None else choice_prefix
    append = task.get("append_choices_to_input")
    append = True if append is None else append
    text = (task.get("task_prefix") or "") + input_prefix + example["input"]
    if choices is not None and append:
        text += "".join(choice_prefix + c for c in choices)
    return text + output_prefix, output_prefix


def mc_rows(task: dict[str, Any], subtask: str) -> list[dict[str, Any]] | None:
    """Multiple-choice rows (examples with `target_scores`); None where the task is not multiple choice."""
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
                     "gold": choices.index(next(c for c in choices if scores[c] == best)), "subtask": subtask})
    return rows or None


def gen_metrics(task: dict[str, Any]) -> tuple[str, ...]:
    """The exact-match metrics BIG-bench names for a task (BLEU/ROUGE-only tasks are not converted)."""
    return tuple(m for m in scoring.METRICS if m in (task.get("metrics") or []))


def gen_rows(task: dict[str, Any], subtask: str) -> list[dict[str, Any]] | None:
    """Generative rows (examples with `target`, scored by exact string or numeric match); None otherwise.

    Duplicate examples are dropped as BIG-bench's JsonTask drops them (same JSON text), keeping order.
    """
    examples = task.get("examples") or []
    if not examples or not gen_metrics(task) or not all("target" in e for e in examples):
        return None
    seen: set[str] = set()
    rows = []
    regex, stop = scoring.task_regex(task), task.get("stop_string")
    for example in examples:
        text = json.dumps(example)
        if text in seen:
            continue
        seen.add(text)
        prompt, _ = _prompt(task, example, None)
        moved = prompt.endswith(" ")
        targets = example["target"] if isinstance(example["target"], list) else [example["target"]]
        rows.append({"doc_id": len(rows), "input": prompt[:-1] if moved else prompt,
                     "targets": [str(t) for t in targets], "moved_space": moved, "output_regex": regex,
                     "stop_string": stop, "subtask": subtask})
    return rows or None


@dataclass
class PackTask:
    """One registered task of the pack: its name, where its data lies and how lm-eval runs it.

    Attributes:
        kind: "mc" or "gen".
        name: the BIG-bench name, "task" or "task.subtask" (registered as bigbench_<kind>_<name>).
        folder: the task's folder in the pack (relative to the pack root).
        data: the JSONL files of its documents (relative to the pack root; a parent lists its subtasks').
        n_docs: number of documents.
        subtasks: for a parent task, the subtask names it holds.
        generation: lm-eval generation_kwargs (generative tasks).
        metrics: the per-sample metrics of its YAML.
        few_shot_separator, target_delimiter: lm-eval's fewshot_delimiter / target_delimiter (generative).
    """

    kind: str
    name: str
    folder: str
    data: list[str]
    n_docs: int
    subtasks: list[str] = field(default_factory=list)
    generation: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[str, ...] = MC_METRICS
    few_shot_separator: str = "\n"
    target_delimiter: str = " "

    @property
    def registered(self) -> str:
        return (MC_PREFIX if self.kind == "mc" else GEN_PREFIX) + self.name

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.registered, "n_docs": self.n_docs, "folder": self.folder}
        if self.subtasks:
            out["subtasks"] = self.subtasks
        if self.kind == "gen":
            out.update(metrics=list(self.metrics), generation=self.generation)
        return out


def task_yaml(task: PackTask, root: Path) -> str:
    """lm-eval task YAML with absolute data paths (the pack is rewritten when it moves)."""
    files = [json.dumps(str(root / d)) for d in task.data]
    lines = [
        f"task: {task.registered}",
        f"tag: qeval_bigbench_{task.kind}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        "    test:",
        *[f"      - {f}" for f in files],
        # datasets' Arrow cache of the pack stays in the pack, not in ~/.cache/huggingface.
        f"  cache_dir: {json.dumps(str(root / '.datasets-cache'))}",
        "test_split: test",
    ]
    if task.kind == "mc":
        lines += ["output_type: multiple_choice", 'doc_to_text: "{{input}}"', 'doc_to_choice: "{{choices}}"',
                  "doc_to_target: gold"]
    else:
        gen = task.generation
        lines += ["output_type: generate_until", 'doc_to_text: "{{input}}"', 'doc_to_target: "{{targets[0]}}"',
                  f"target_delimiter: {json.dumps(task.target_delimiter)}",
                  f"fewshot_delimiter: {json.dumps(task.few_shot_separator)}",
                  "generation_kwargs:", f"  until: {json.dumps(gen['until'])}",
                  f"  max_gen_toks: {gen['max_gen_toks']}", "  do_sample: false", "  temperature: 0.0",
                  "filter_list:", "  - name: bigbench", "    filter:", "      - function: custom",
                  "        filter_fn: !function bigbench_scoring.extract_answers", "      - function: take_first",
                  "process_results: !function bigbench_scoring.process_results"]
    lines += ["metric_list:",
              *[f"  - {{metric: {m}, aggregation: mean, higher_is_better: true}}" for m in task.metrics],
              "metadata:", "  version: 4.0", "  source: bigbench==1.0.0 (PyPI sdist), converted by qeval", ""]
    return "\n".join(lines)


def scoring_shim(metrics: tuple[str, ...]) -> str:
    """The `bigbench_scoring.py` beside a generative task's YAML (lm-eval's !function imports a file there)."""
    return ("# Written by qeval: BIG-bench's scoring lives in qeval.assets.bigbench_scoring.\n"
            "from qeval.assets.bigbench_scoring import extract_answers, scorer\n\n"
            f"process_results = scorer({metrics!r})\n")
