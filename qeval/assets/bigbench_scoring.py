"""BIG-bench's own scoring of generative JSON tasks, and its lm-eval adapters.

BIG-bench itself cannot be imported here (its package needs TensorFlow and t5), so
the few functions that score a generative example are copied from the sdist
`bigbench==1.0.0` (Apache-2.0) and kept line for line where they decide a score:

- `postprocess_output`: bigbench/models/model_utils.py (cut at max_length, keep up to and
  including the stop string, then the first match of the output regex);
- `exact_str_match`: bigbench/api/task_metrics.py `exact_str_match_fn` (the response is
  one of the targets, no other normalisation);
- `numeric_match`: bigbench/api/task_metrics.py `check_if_numeric_value_is_within_relative_error`
  (relative error <= 0.1, absolute where the target is 0);
- `DEFAULT_REGEX` and the choice of regex: bigbench/api/json_task.py (`_DEFAULT_REGEX` when a
  task names neither `output_regex` nor `stop_string`).

Every document of a converted task carries its own `output_regex` and `stop_string` (a parent
task holds subtasks that may differ), so the lm-eval filter and metric below read them from
the document. The engine's stop sequences (`generation_settings`) only shorten generation
where that cannot change the extracted answer; see its docstring for the one case it can.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

DEFAULT_REGEX = r"[^\.\?\!\;\n]+"  # bigbench/api/json_task.py _DEFAULT_REGEX
DEFAULT_TERMINATORS = ("\n", ".", "?", "!", ";")  # the characters DEFAULT_REGEX excludes
METRICS = ("exact_str_match", "numeric_match_with_0_1_relative_error")
NUMERIC_REL_ERROR = 0.1


def task_regex(task: dict[str, Any]) -> str | None:
    """The output regex BIG-bench applies for a task (json_task.py: the default only where neither is set)."""
    regex = task.get("output_regex")
    if regex is None and task.get("stop_string") is None:
        return DEFAULT_REGEX
    return regex


def postprocess_output(text: str, max_length: int | None, stop_string: str | None,
                       output_regex: str | None) -> str:
    """bigbench/models/model_utils.py postprocess_output, for one string (copied; see the module docstring)."""
    if max_length:
        text = text[:max_length]
    if stop_string:
        index = text.find(stop_string)
        if index > 0:
            text = text[: index + len(stop_string)]
    if output_regex:
        text = next(iter(re.findall(output_regex, text)), "")
        if isinstance(text, tuple):  # BIG-bench asserts; a task regex with several groups is a task bug
            raise ValueError(f"regex {output_regex!r} has several groups")
    return text


def exact_str_match(response: str, targets: Sequence[str]) -> float:
    """task_metrics.exact_str_match_fn for one example: 1 if the response is one of the targets."""
    return 1.0 if response in list(targets) else 0.0


def numeric_match(response: str, targets: Sequence[str], rel_error: float = NUMERIC_REL_ERROR) -> float:
    """task_metrics.check_if_numeric_value_is_within_relative_error for one example (one target)."""
    try:
        ftarget = float(targets[0])
    except ValueError:
        return 0.0
    try:
        fvalue = float(response)
    except ValueError:
        return 0.0
    return 1.0 if abs(fvalue - ftarget) / (ftarget if ftarget != 0 else 1) <= rel_error else 0.0


SCORERS = {"exact_str_match": exact_str_match, "numeric_match_with_0_1_relative_error": numeric_match}


def newline_safe(regex: str | None) -> bool:
    """True where no match of `regex` can contain or look past a newline, so cutting the generation at its
    first newline leaves the first match unchanged whenever the first line has one.

    Conservative on purpose (a syntactic check, not a regex analysis): anything that could match a newline
    or depends on what follows (`$`, `\\Z`, lookarounds, `\\s`, `\\W`, `\\D`, inline flags, a negated class
    that does not exclude `\\n`) makes it False, and such tasks generate to their budget instead.
    """
    if regex is None:
        return False
    if any(tok in regex for tok in ("$", "\\Z", "(?=", "(?!", "(?<", "\\s", "\\W", "\\D", "(?s", "(?m")):
        return False
    for negated in re.findall(r"\[\^((?:\\.|[^\]])*)\]", regex):
        if "\\n" not in negated:
            return False
    return True


def generation_settings(task: dict[str, Any], targets: Sequence[Sequence[str]]) -> dict[str, Any]:
    """lm-eval generation_kwargs for a BIG-bench task: stop sequences and a token budget.

    - Tasks on BIG-bench's default regex stop at any of its terminators (newline . ? ! ;): its first
      match ends at the first of them, so nothing after one can change the answer.
    - Otherwise stop at "\\n" where the task's regex cannot match across a newline (`newline_safe`) and its
      stop string, if any, is "\\n".
    - Either way the answer is the one the whole generation would give, except when the text before the
      stop holds no match at all (BIG-bench would read on; here the answer is "").
      Every record says whether generation stopped on the stop sequence, so such cases can be counted.
    - Any other task: no stop sequence, generate to the budget (or end of sequence) and let
      `postprocess_output` cut, exactly as BIG-bench does.
    - Budget: one token per character of the longest target, plus 16 (BPE tokens of these tokenizers
      are rarely shorter than a character), at most 256 (BIG-bench's HF models' default max_length).
    """
    regex, stop = task_regex(task), task.get("stop_string")
    if regex == DEFAULT_REGEX and stop is None:
        until = list(DEFAULT_TERMINATORS)  # the default regex's first match ends at the first of them anyway
    else:
        until = ["\n"] if newline_safe(regex) and stop in (None, "\n") else []
    longest = max((len(t) for ts in targets for t in ts), default=0)
    return {"until": until, "max_gen_toks": min(256, longest + 16), "do_sample": False, "temperature": 0.0}


# -- lm-eval adapters (the pack's bigbench_scoring.py shim points here) -----------------------------------------

def strip_moved_space(response: str, doc: dict[str, Any]) -> str:
    """BIG-bench prompts end with the output prefix's space ("\\nA: "); the pack moves it out of the prompt
    (a lone trailing space token is not what a model sees in text) and the model writes it, so one leading
    space of the response is BIG-bench's prompt, not the answer."""
    if doc.get("moved_space") and response.startswith(" "):
        return response[1:]
    return response


def extract(response: str, doc: dict[str, Any]) -> str:
    """The answer BIG-bench would score for this response."""
    return postprocess_output(strip_moved_space(response, doc), None, doc.get("stop_string"), doc.get("output_regex"))


def extract_answers(resps: list[list[str]], docs: list[dict[str, Any]]) -> list[list[str]]:
    """lm-eval `custom` filter: every response of every document -> its extracted answer."""
    return [[extract(r, doc) for r in rs] for rs, doc in zip(resps, docs)]


def scorer(metrics: Sequence[str]) -> Any:
    """lm-eval `process_results` for a task scored by `metrics`: each over the filtered (extracted) answer."""
    names = tuple(metrics)

    def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
        return {m: SCORERS[m](results[0], doc["targets"]) for m in names}

    return process_results
