"""Run lm-eval tasks on one cell, a look at a time, and turn lm-eval's sample logs into our per-sample records.

A look evaluates an explicit list of document ids (lm-eval's `samples=` selection),
so the runner decides which documents and in which order; each record keeps its
position in that order and its look, which the sequential rules read back.

What a metric means comes from lm-eval's task config (`higher_is_better`, the
aggregation), overridable by the suite; its scale (points per unit) from a table of
lm-eval's metrics, overridable by the suite, else read off the scores.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

from qeval.errors import QevalError
from qeval.harness import QevalLM
from qeval.suite_sections import Seeds, TaskSpec

log = logging.getLogger(__name__)


def _not_the_metadata_hint(record: logging.LogRecord) -> bool:
    # lm-eval warns on every load of a `custom_dataset` task that kwargs "can be passed to `--metadata` in
    # console": advice for lm-eval's own CLI, which a qeval user does not run (the task YAML's metadata is
    # passed as it is). Dropped, so a suite's own task_dirs do not print it before each look.
    return "Custom kwargs can be passed to `--metadata`" not in record.getMessage()


logging.getLogger("lm_eval.api.task").addFilter(_not_the_metadata_hint)

# lm-eval metrics whose per-sample value is a fraction in [0, 1]: one unit is 100 points.
UNIT_METRICS = {"acc", "acc_norm", "acc_mutual_info", "exact_match", "em", "f1", "mcc", "brier_score",
                "pass@1", "prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc",
                "inst_level_loose_acc", "contains", "exact_str_match", "numeric_match"}
# Already in points (0-100) or unbounded: margins are in the metric's own units.
POINT_METRICS = {"bleu", "chrf", "ter", "rouge1", "rouge2", "rougeL", "rougeLsum", "perplexity", "word_perplexity",
                 "byte_perplexity", "bits_per_byte"}


@dataclass(frozen=True)
class MetricSemantics:
    """What the gate needs to know about a task's metric.

    Attributes:
        higher_is_better: direction.
        points_per_unit: points in one unit of the per-sample score (margins in points are divided by it).
        aggregation: lm-eval's aggregation name (mean, weighted_perplexity, bits_per_byte, perplexity ...).
        score_range: (low, high) of per-sample scores where known (0-1 metrics: (0, 1)).
        source: where each part came from, in words.
    """

    higher_is_better: bool
    points_per_unit: float | None
    aggregation: str
    score_range: tuple[float, float] | None
    source: str

    def record(self) -> dict[str, Any]:
        return {"higher_is_better": self.higher_is_better, "points_per_unit": self.points_per_unit,
                "aggregation": self.aggregation,
                "score_range": list(self.score_range) if self.score_range else None, "source": self.source}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "MetricSemantics":
        rng = record.get("score_range")
        return cls(bool(record["higher_is_better"]), record.get("points_per_unit"), record.get("aggregation", "mean"),
                   tuple(rng) if rng else None, record.get("source", ""))  # type: ignore[arg-type]


def lm_eval_task(task_manager: Any, name: str) -> Any:
    """lm-eval's task object (its documents loaded from the task's own data files)."""
    from lm_eval.tasks import get_task_dict

    task = get_task_dict([name], task_manager)[name]
    return task


def metric_semantics(task: Any, spec: TaskSpec, *, file: str | None = None) -> MetricSemantics:
    """Direction and aggregation from lm-eval's task config, scale from the metric's name; the suite overrides."""
    directions = task.higher_is_better() or {}
    aggregations = task.aggregation() or {}
    if spec.metric not in directions and spec.higher_is_better is None:
        raise QevalError(f"task {spec.name!r} has no metric {spec.metric!r} (lm-eval's config lists "
                         f"{', '.join(sorted(directions)) or 'none'})", file=file, field=f"tasks[{spec.name}].metric",
                         fix="set metric to one of those")
    parts = []
    if spec.higher_is_better is not None:
        hib, parts = spec.higher_is_better, ["direction from the suite"]
    else:
        hib, parts = bool(directions[spec.metric]), ["direction from lm-eval's task config"]
    agg_fn = aggregations.get(spec.metric)
    aggregation = getattr(agg_fn, "__name__", "mean") if agg_fn is not None else "mean"
    if spec.points_per_unit is not None:
        ppu: float | None = spec.points_per_unit
        parts.append("scale from the suite")
    elif spec.metric in UNIT_METRICS:
        ppu = 100.0
        parts.append("scale: a 0-1 metric (100 points per unit)")
    elif spec.metric in POINT_METRICS or aggregation in ("perplexity", "weighted_perplexity", "bits_per_byte"):
        ppu = 1.0
        parts.append("scale: already in points or unbounded (margins in the metric's units)")
    else:
        ppu = None  # read off the scores once they exist (see resolve_scale)
        parts.append("scale read off the scores")
    rng = spec.score_range or ((0.0, 1.0) if spec.metric in UNIT_METRICS else None)
    return MetricSemantics(hib, ppu, aggregation, rng, "; ".join(parts))


def resolve_scale(sem: MetricSemantics, scores: Sequence[float]) -> tuple[float, str]:
    """Points per unit for a metric the table does not know: 100 if every score lies in [0, 1], else 1."""
    if sem.points_per_unit is not None:
        return sem.points_per_unit, sem.source
    inside = all(0.0 <= s <= 1.0 for s in scores)
    return (100.0 if inside else 1.0), sem.source + (" (all in [0, 1]: 100 per unit)" if inside
                                                     else " (outside [0, 1]: 1 per unit)")


def per_sample_value(value: Any, aggregation: str) -> float:
    """lm-eval's per-sample metric value as one number per document, in the aggregate's own direction.

    Perplexity-type metrics log (log-likelihood, count) pairs per document: per document that is
    exp(-ll / words) for weighted_perplexity, -ll / (bytes ln 2) for bits_per_byte, and a bare
    log-likelihood is exp(-ll) for perplexity, so "lower is better" holds per item as in the aggregate.
    """
    if isinstance(value, (list, tuple)) and len(value) == 2 and aggregation in ("weighted_perplexity",
                                                                                 "bits_per_byte"):
        ll, count = float(value[0]), float(value[1])
        if count <= 0:
            return math.nan
        return math.exp(-ll / count) if aggregation == "weighted_perplexity" else -ll / (count * math.log(2))
    if aggregation == "perplexity":
        return math.exp(-float(value))
    return float(value)


def sample_record(sample: dict[str, Any], metric: str, aggregation: str = "mean",
                  cluster_key: str | None = None, generation: dict[str, Any] | None = None) -> dict[str, Any]:
    """One per-sample record from an lm-eval logged sample.

    For multiple-choice tasks it keeps every choice's log-likelihood, the chosen
    answer (argmax), the gold answer and whether the chosen one is right; for
    generative tasks the response as generated, the answer the task's filters extracted from
    it (what the metric scored), the targets, and from `generation` (the harness's log) the
    number of generated tokens and why generation ended: "stop" (a stop sequence), "eos",
    "length" (the token budget).
    """
    record: dict[str, Any] = {
        "doc_id": sample["doc_id"],
        "prompt_hash": sample["prompt_hash"],
        "doc_hash": sample["doc_hash"],
        "metrics": {m: _number(sample[m]) for m in sample.get("metrics", []) if m in sample},
    }
    args = sample.get("arguments") or []
    is_choice = bool(args) and all(isinstance(a, (list, tuple)) and len(a) == 2 and isinstance(a[1], str)
                                   for a in args) and _looks_like_loglikelihood(sample)
    if is_choice:
        logliks = [float(r[0]) for r in sample["filtered_resps"]]
        chosen = max(range(len(logliks)), key=logliks.__getitem__)
        gold = sample["target"]
        record.update({
            "choices": [a[1] for a in args],
            "loglikelihoods": logliks,
            "chosen": chosen,
            "gold": gold,
            "correct": bool(chosen == gold) if isinstance(gold, int) else bool(chosen in gold),
        })
    else:
        filtered = sample["filtered_resps"][0] if sample.get("filtered_resps") else None
        resps = sample.get("resps") or []
        raw = resps[0][0] if resps and isinstance(resps[0], (list, tuple)) and resps[0] else filtered
        record["response"] = raw
        record["extracted"] = filtered
        doc = sample.get("doc") or {}
        record["target"] = doc["targets"] if isinstance(doc.get("targets"), list) else sample.get("target")
        if generation is not None:
            record.update(generated_tokens=generation.get("n_tokens"), stop_reason=generation.get("finish"))
            if generation.get("seed") is not None:
                record["seed"] = generation["seed"]
    if metric not in record["metrics"]:
        raise KeyError(metric)
    record["score"] = per_sample_value(record["metrics"][metric], aggregation)
    if cluster_key is not None:
        doc = sample.get("doc") or {}
        if cluster_key not in doc:
            raise KeyError(f"cluster:{cluster_key}")
        record["cluster"] = doc[cluster_key]
    return record


def _one_filter(samples: list[dict[str, Any]], task: TaskSpec) -> list[dict[str, Any]]:
    """lm-eval logs each document once per filter of the task: keep the suite's filter (default the first)."""
    names = list(dict.fromkeys(s.get("filter") for s in samples))
    if len(names) <= 1 and task.filter is None:
        return samples
    chosen = task.filter if task.filter is not None else names[0]
    if chosen not in names:
        raise QevalError(f"task {task.name!r} has no filter {chosen!r} (it has {', '.join(map(str, names))})",
                         field=f"tasks[{task.name}].filter", fix="name one of those, or drop filter")
    return [s for s in samples if s.get("filter") == chosen]


def _looks_like_loglikelihood(sample: dict[str, Any]) -> bool:
    resps = sample.get("filtered_resps") or []
    return all(isinstance(r, (list, tuple)) and len(r) == 2 for r in resps)


def _number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def run_look(lm: QevalLM, task: TaskSpec, task_manager: Any, seeds: Seeds, doc_ids: Sequence[int], *,
             positions: Sequence[int], look: int, aggregation: str = "mean") -> list[dict]:
    """Evaluate `doc_ids` of one task on one cell through lm-eval.

    Args:
        positions: each document's position in the task's evaluation order (kept in its record).
        look: the look these documents belong to (kept in each record).
        aggregation: the metric's lm-eval aggregation (how a per-sample value becomes one number).

    Returns:
        Per-sample records in evaluation order.
    """
    where = dict(zip(doc_ids, positions))
    records = []
    for repeat in range(task.repeats):
        records.extend(_one_pass(lm, task, task_manager, seeds, doc_ids, repeat, aggregation))
    for record in records:
        record["order"] = where[record["doc_id"]]
        record["look"] = look
    return sorted(records, key=lambda r: (r["order"], r.get("repeat", 0)))


def _one_pass(lm: QevalLM, task: TaskSpec, task_manager: Any, seeds: Seeds, doc_ids: Sequence[int], repeat: int,
              aggregation: str) -> list[dict]:
    """One lm-eval evaluation of `doc_ids`: the repeat-th draw of a sampled task (0 for a greedy one)."""
    from lm_eval import simple_evaluate

    lm.sampling_seed, lm.repeat = seeds.sampling, repeat
    lm.generation_log = {}
    out = simple_evaluate(
        model=lm,
        tasks=[task.name],
        num_fewshot=task.num_fewshot,
        samples={task.name: list(doc_ids)},
        task_manager=task_manager,
        log_samples=True,
        bootstrap_iters=0,  # our own paired statistics replace lm-eval's unpaired stderr
        random_seed=seeds.sampling,
        numpy_random_seed=seeds.sampling,
        torch_random_seed=seeds.sampling,
        fewshot_random_seed=seeds.fewshot,
        gen_kwargs=dict(task.generation) if task.generation else None,
        apply_chat_template=task.apply_chat_template,
        fewshot_as_multiturn=task.apply_chat_template and task.num_fewshot > 0,
        verbosity="WARNING",
    )
    samples = _one_filter(out["samples"][task.name], task)
    if samples and task.metric not in samples[0]:
        raise QevalError(f"task {task.name} has no per-sample metric {task.metric!r}; it reports "
                         f"{', '.join(samples[0].get('metrics', []))}", field=f"tasks[{task.name}].metric",
                         fix="set metric to one of those")
    records = []
    for s in samples:
        args = (s.get("arguments") or [None])[0]
        info = getattr(lm, "generation_info", None)  # QevalLM's log of the look's generations
        generation = (info(args[0], args[1]) if info is not None and isinstance(args, (list, tuple))
                      and len(args) == 2 and isinstance(args[1], dict) else None)
        try:
            record = sample_record(s, task.metric, aggregation, task.cluster, generation)
        except KeyError as exc:
            if str(exc.args[0]).startswith("cluster:"):
                raise QevalError(f"the documents of task {task.name!r} have no field {task.cluster!r} to cluster "
                                 f"by (they have {', '.join(sorted((s.get('doc') or {}).keys()))})",
                                 field=f"tasks[{task.name}].cluster", fix="name one of those fields, or drop "
                                 "cluster") from None
            raise
        if task.repeats > 1:
            record["repeat"] = repeat
            record["cluster"] = record.get("cluster", record["doc_id"]) if task.cluster else record["doc_id"]
        records.append(record)
    return records
