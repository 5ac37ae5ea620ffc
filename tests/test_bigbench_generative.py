"""The generative pack against BIG-bench itself: its JSON (from the sdist) and its own scoring code.

BIG-bench cannot be imported here (TensorFlow, t5), so its scoring functions are taken from the
sdist's source with `ast` and run as they are: `postprocess_output` (bigbench/models/model_utils.py),
`exact_str_match_fn`, `numeric_match_with_0_1_relative_error_fn` and the helper it calls
(bigbench/api/task_metrics.py), `default_format_fn` (bigbench/api/json_task.py). No model is needed.
"""

from __future__ import annotations

import ast
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qeval.assets import bigbench
from qeval.assets import bigbench_scoring as scoring

API = "bigbench-1.0.0/bigbench/"
SAMPLE_TASKS = ("arithmetic/2_digit_addition", "checkmate_in_one")  # early in the archive: read in ~2 s


def _sdist_members(paths: set[str]) -> dict[str, bytes]:
    """The named members of the bigbench sdist, streaming only as far as the last of them."""
    from qeval.assets.download import fetch

    found: dict[str, bytes] = {}
    with tarfile.open(fetch(bigbench.SDIST), "r|gz") as tf:
        for member in tf:
            if member.name in paths:
                fileobj = tf.extractfile(member)
                found[member.name] = fileobj.read() if fileobj else b""
                if len(found) == len(paths):
                    break
    return found


@pytest.fixture(scope="module")
def bigbench_source() -> dict[str, Any]:
    """BIG-bench's own functions (from the sdist) and the sample tasks' JSON."""
    tasks = {f"{API}benchmark_tasks/{t}/task.json": t for t in SAMPLE_TASKS}
    files = _sdist_members({API + "models/model_utils.py", API + "api/task_metrics.py", API + "api/json_task.py",
                            *tasks})
    namespace: dict[str, Any] = {"np": np, "List": list, "Dict": dict, "Any": Any, "re": __import__("re")}
    wanted = {"postprocess_output", "exact_str_match_fn", "numeric_match_with_0_1_relative_error_fn",
              "check_if_numeric_value_is_within_relative_error", "default_format_fn"}
    for path in ("models/model_utils.py", "api/task_metrics.py", "api/json_task.py"):
        tree = ast.parse(files[API + path])
        funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
        for fn in funcs:
            fn.returns = None
            for arg in fn.args.args:
                arg.annotation = None
        exec(compile(ast.Module(body=funcs, type_ignores=[]), path, "exec"), namespace)  # noqa: S102 - BIG-bench's code
    assert wanted <= set(namespace)
    namespace["tasks"] = {name: json.loads(files[path]) for path, name in tasks.items()}
    return namespace


def _bigbench_prompt(bb: dict[str, Any], task: dict[str, Any], example: dict[str, Any]) -> str:
    sample = bb["default_format_fn"](dict(example), input_prefix=task.get("example_input_prefix", "\nQ: "),
                                     output_prefix=task.get("example_output_prefix", "\nA: "),
                                     choice_prefix=task.get("choice_prefix", "\n  choice: "), random_seed=42,
                                     append_choices_to_input=False)
    return str(task.get("task_prefix", "")) + sample["input"]


@pytest.mark.bigbench
@pytest.mark.parametrize("name", SAMPLE_TASKS)
def test_converted_examples_match_bigbench_json(bigbench_source: dict[str, Any], qeval_task_pack: Path,
                                                name: str) -> None:
    bb, task = bigbench_source, bigbench_source["tasks"][name]
    registered = "bigbench_gen_" + name.replace("/", ".")
    rows = bigbench.read_docs(registered)
    distinct = list({json.dumps(e): e for e in task["examples"]}.values())  # BIG-bench drops duplicates
    assert len(rows) == len(distinct) == bigbench.task_info(registered)["n_docs"]
    for row, example in zip(rows, distinct):
        assert row["input"] + (" " if row["moved_space"] else "") == _bigbench_prompt(bb, task, example)
        targets = example["target"] if isinstance(example["target"], list) else [example["target"]]
        assert row["targets"] == targets
        assert row["subtask"] == name.split("/")[-1]
    assert rows[0]["output_regex"] == scoring.task_regex(task) and rows[0]["stop_string"] == task.get("stop_string")


def _responses(targets: list[str]) -> list[str]:
    """Responses a model could write: right, right with a tail, wrong, empty, punctuation, other lines."""
    t = targets[0]
    return [f" {t}", f" {t}\n\nQ: next", f" {t}. And more", f" {t}#", f" x{t}", " ", "", "\n" + t, f" {t} ; {t}",
            f"{t}", " -3.5", " 1e3", f" {t}0", " ?"]


@pytest.mark.bigbench
@pytest.mark.parametrize("name", SAMPLE_TASKS)
def test_scores_match_bigbench_scoring(bigbench_source: dict[str, Any], qeval_task_pack: Path, name: str) -> None:
    """Our extract + metric == BIG-bench's postprocess_output + its metric, response by response."""
    bb = bigbench_source
    rows = bigbench.read_docs("bigbench_gen_" + name.replace("/", "."))[:25]
    compared = matched = 0
    for row in rows:
        for response in _responses(row["targets"]):
            # What BIG-bench scores: the model's text after BIG-bench's prompt (which ends in the moved space).
            bb_text = response[1:] if row["moved_space"] and response.startswith(" ") else response
            theirs = bb["postprocess_output"](bb_text, None, row["stop_string"], row["output_regex"])
            ours = scoring.extract(response, row)
            assert ours == theirs, (response, row["output_regex"])
            expected = bb["exact_str_match_fn"]([row["targets"]], [theirs])["exact_str_match"]
            assert scoring.exact_str_match(ours, row["targets"]) == expected
            compared += 1
            matched += int(expected)
    assert compared == len(rows) * 14 and matched > 0  # some responses are right, so both outcomes are checked


@pytest.mark.bigbench
def test_numeric_match_is_bigbench_s(bigbench_source: dict[str, Any]) -> None:
    fn = bigbench_source["numeric_match_with_0_1_relative_error_fn"]
    cases = [("10", "10"), ("10.9", "10"), ("11.1", "10"), ("-0.05", "0"), ("0.2", "0"), ("abc", "5"), ("5", "x"),
             ("9", "10"), ("1e1", "10"), ("", "3")]
    for response, target in cases:
        theirs = fn([[target]], [response])["numeric_match_with_0_1_relative_error"]
        assert scoring.numeric_match(response, [target]) == theirs, (response, target)


@pytest.mark.bigbench
def test_pack_index_counts_and_subtasks(qeval_task_pack: Path) -> None:
    index = bigbench.index()
    counts = index["counts"]
    assert index["version"] == bigbench.PACK_VERSION
    for kind in ("mc", "gen"):
        names = bigbench.list_tasks(kind)
        assert counts[f"{kind}_tasks"] == len(names) == (counts[f"{kind}_top_level"] + counts[f"{kind}_subtasks"]
                                                          + counts[f"{kind}_parents"])
    assert counts["mc_top_level"] >= 90 and counts["mc_subtasks"] >= 200 and counts["gen_tasks"] >= 600
    parent = bigbench.task_info("bigbench_gen_arithmetic")
    assert len(parent["subtasks"]) == 20 and "2_digit_addition" in parent["subtasks"]
    docs = bigbench.read_docs("bigbench_gen_arithmetic")
    assert len(docs) == parent["n_docs"] == sum(bigbench.task_info(f"bigbench_gen_arithmetic.{s}")["n_docs"]
                                                 for s in parent["subtasks"])
    assert {d["subtask"] for d in docs} == set(parent["subtasks"])
    mc = bigbench.read_docs("bigbench_mc_arithmetic")  # the same BIG-bench task as multiple choice
    assert {d["subtask"] for d in mc} == set(bigbench.task_info("bigbench_mc_arithmetic")["subtasks"])
    assert {d["subtask"] for d in bigbench.read_docs("bigbench_mc_physics")} == {"physics"}


@pytest.mark.bigbench
def test_lm_eval_loads_generative_and_parent_tasks(qeval_task_pack: Path) -> None:
    from lm_eval.tasks import get_task_dict

    names = ["bigbench_gen_arithmetic.2_digit_addition", "bigbench_gen_arithmetic"]
    tasks = get_task_dict(names, bigbench.task_manager())
    sub, parent = tasks[names[0]], tasks[names[1]]
    assert sub.config.output_type == "generate_until"
    assert sub.config.generation_kwargs["until"] == ["\n"] and sub.config.generation_kwargs["max_gen_toks"] <= 32
    assert sub.doc_to_text(sub.eval_docs[0]) == "\nQ: What is 80 plus 29?\nA:"
    assert len(parent.eval_docs) == bigbench.task_info(names[1])["n_docs"]
    # lm-eval scores through BIG-bench's post-processing: the filter extracts, process_results matches.
    doc = sub.eval_docs[0]
    assert sub.process_results(doc, [scoring.extract(" 109\nQ:", doc)]) == {"exact_str_match": 1.0}


@pytest.mark.bigbench
def test_bad_generative_inputs_name_the_field_and_fix(tmp_path: Path, qeval_task_pack: Path) -> None:
    from qeval.errors import QevalError
    from qeval.runner import prepare_assets
    from qeval.suite import load_suite

    suite = tmp_path / "suite.yaml"
    suite.write_text("name: s\ncandidates: [int8_wo]\ncalibration: bigbench-mixed\n"
                     "tasks: [{name: bigbench_gen_arithmetic, metric: exact_str_match, repeats: 3}]\n")
    with pytest.raises(QevalError) as info:
        load_suite(suite)
    assert info.value.field == "tasks[0]" and "greedy" in info.value.problem and "temperature" in info.value.fix
    suite.write_text("name: s\ncandidates: [int8_wo]\ncalibration: bigbench-mixed\n"
                     "tasks: [{name: bigbench_gen_arithmetic}]\n")  # metric defaults to acc
    with pytest.raises(QevalError) as info:
        prepare_assets(*load_suite(suite))
    assert info.value.field == "tasks[0].metric" and "exact_str_match" in info.value.fix
    suite.write_text("name: s\ncandidates: [int8_wo]\ncalibration: bigbench-mixed\ntask_dirs: [nowhere]\n"
                     "tasks: [{name: bigbench_mc_physics}]\n")
    with pytest.raises(QevalError) as info:
        prepare_assets(*load_suite(suite))
    assert info.value.field == "task_dirs[0]" and "nowhere" in info.value.problem
