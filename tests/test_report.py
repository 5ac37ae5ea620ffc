"""Reports rendered from a run directory gated by the real gate: results.json (schema),
report.html, report.md, junit.xml. The run directory is written in the store format
(test_report_rundir.write_run); everything after that is qeval's own code."""

from __future__ import annotations

import copy
import json
import re
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from markupsafe import escape as html_escape

from qeval import stats
from qeval.report import gate_run, write_reports
from qeval.report.html import render_html
from qeval.report.markdown import render_markdown
from qeval.report.results import NOT_RUN_HERE, SIMULATED_LABEL, build_results
from qeval.report.speed import pareto_front
from qeval.report.templating import md_escape
from test_report_rundir import XSS_IMG, XSS_SCRIPT, suite_dict, write_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    run_dir = write_run(tmp_path_factory.mktemp("report"))
    t0 = time.perf_counter()
    outcome = write_reports(run_dir)
    seconds = time.perf_counter() - t0
    return {"dir": run_dir, "outcome": outcome, "seconds": seconds,
            "results": json.loads((run_dir / "results.json").read_text()),
            "html": (run_dir / "report.html").read_text(), "md": (run_dir / "report.md").read_text()}


def schema() -> dict:
    from qeval.report.schema import load_schema

    return load_schema()


def decision(results: dict, cell_id: str) -> dict:
    return next(d for d in results["decisions"] if d["cell_id"] == cell_id)


# ---------------------------------------------------------------- results.json and its schema

def test_results_json_validates_against_the_checked_in_schema(run: dict) -> None:
    s = schema()
    jsonschema.Draft202012Validator.check_schema(s)
    jsonschema.Draft202012Validator(s).validate(run["results"])
    assert run["results"]["schema"] == s["properties"]["schema"]["const"] == "qeval.results/1"


@pytest.mark.parametrize("break_it", [
    lambda r: r["decisions"][0].update(undocumented=1),  # every emitted field must be documented
    lambda r: r["decisions"][0].pop("verdict"),
    lambda r: r["decisions"][0].update(verdict="MAYBE"),
    lambda r: r["decisions"][0]["tasks"][0]["trtllm"].pop("threshold"),
    lambda r: r["cells"][0].update(label=3),
    lambda r: r["decisions"][0]["tasks"][0].update(ci=[0.1]),
])
def test_schema_rejects_what_build_results_does_not_emit(run: dict, break_it) -> None:
    broken = copy.deepcopy(run["results"])
    break_it(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema(), cls=jsonschema.Draft202012Validator)


def test_schema_embeds_the_current_suite_models() -> None:
    from qeval.report.schema import suite_defs

    defs = schema()["$defs"]
    for name, sub in suite_defs().items():
        assert defs[name] == sub, f"$defs/{name} is stale: run `python -m qeval.report.schema`"
    assert "GatePolicy" in defs and "Suite" in defs


def test_schema_lists_every_field_of_the_gate_dataclasses() -> None:
    import dataclasses

    from qeval import gate

    defs = schema()["$defs"]
    for cls, name in ((gate.Decision, "Decision"), (gate.TaskDecision, "TaskDecision"),
                      (gate.RuleResult, "RuleResult"), (stats.TrtllmDecision, "TrtllmDecision"),
                      (stats.PairingGain, "PairingGain"), (stats.NonInferiority, "NonInferiority"),
                      (stats.SequentialDecision, "SequentialDecision"),
                      (stats.GroupSequentialDesign, "GroupSequentialDesign")):
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields <= set(defs[name]["properties"]), (name, fields - set(defs[name]["properties"]))


def test_results_carry_the_gates_decisions(run: dict) -> None:
    r = run["results"]
    gated = {(d.candidate, d.backend): d.verdict for d in gate_run(run["dir"])}
    assert {(d["candidate"], d["backend"]): d["verdict"] for d in r["decisions"]} == gated
    # The fixture's planted outcomes (ENVIRONMENT.md's measured KL spread): int8_wo ships on both engines,
    # the 4-bit and SmoothQuant recipes are blocked by KL, fp8 + FP8 KV straddles the KL limit on vLLM.
    assert gated[("int8_wo", "hf")] == gated[("int8_wo", "vllm")] == "SHIP"
    assert decision(r, "int8_sq-vllm")["verdict"] == "BLOCK"
    assert next(x for x in decision(r, "int8_sq-vllm")["rules"] if x["rule_id"] == "kld")["passed"] is False
    assert decision(r, "fp8_kv-vllm")["verdict"] == "INCONCLUSIVE"
    assert decision(r, "int4_awq_g64-hf")["label"] == "crashed: no results"
    # TensorRT-LLM cells did not run (engine unavailable): no decision, NOT RUN in the matrix with the label
    # from their status, the reason as measured in results.json, and the exit code says so.
    assert not [d for d in r["decisions"] if d["backend"] == "trtllm"]
    trt = [e for row in r["matrix"]["rows"] for e in row["cells"] if e["backend"] == "trtllm"]
    assert trt and all(e["verdict"] == "NOT RUN" and e["label"] == NOT_RUN_HERE for e in trt)
    assert {c["id"] for c in r["not_run"]} == {c["id"] for c in r["cells"] if c["backend"] == "trtllm"}
    assert all("No module named 'tensorrt_llm'" in c["reason"] and c["probe"]["gpu"] == "none visible"
               for c in r["not_run"])
    assert set(run["outcome"].not_run) == {c["id"] for c in r["not_run"]}
    assert {d["label"] for d in r["decisions"] if d["backend"] == "hf" and d["candidate"] != "int4_awq_g64"} == \
        {SIMULATED_LABEL}
    assert decision(r, "nvfp4-vllm")["label"] == "emulated by the engine"
    assert run["outcome"].any_blocked


def test_task_numbers_agree_with_the_samples(run: dict) -> None:
    """n10/n01, the pooled delta and the flip examples recomputed from the sample files."""
    from qeval.store import RunStore

    store = RunStore(run["dir"])
    d = decision(run["results"], "fp8-vllm")
    bs, cs = [], []
    for t in d["tasks"]:
        b = np.array([r["score"] for r in store.read_samples("bf16-vllm", t["task"])])
        c = np.array([r["score"] for r in store.read_samples("fp8-vllm", t["task"])])
        assert (t["n10"], t["n01"]) == (int(((b == 1) & (c == 0)).sum()), int(((b == 0) & (c == 1)).sum()))
        lo, hi = t["flip_rate_ci"]
        assert lo < t["flip_rate"] < hi
        assert t["mde_paired_pts"] == pytest.approx(t["trtllm"]["theta"] / t["pairing"]["ratio"])
        for ex in t["examples"]:
            i = ex["doc_id"]
            assert (b[i], c[i]) == ((1.0, 0.0) if ex["direction"] == "lost" else (0.0, 1.0))
        assert 0 < len(t["examples"]) <= 6
        bs.append(b)
        cs.append(c)
    pooled = stats.paired_delta(np.concatenate(bs), np.concatenate(cs), method="normal")
    assert d["pooled"]["estimate_pts"] == pytest.approx(pooled.estimate * 100)
    assert d["pooled"]["ci_pts"] == pytest.approx([pooled.ci[0] * 100, pooled.ci[1] * 100])
    assert d["pooled"]["n"] == 1500


def test_speedups_and_pareto(run: dict) -> None:
    r = run["results"]
    fp8 = decision(r, "fp8-vllm")["latency"]
    tok = {s["concurrency"]: s for s in fp8["speedups"] if s["metric"] == "output_tok_s"}
    assert set(tok) == {1, 16}
    for s in tok.values():
        assert s["estimate"] > 1.2 and s["ci"][0] < s["estimate"] < s["ci"][1] and s["n_candidate"] == 64
    nvfp4 = next(s for s in decision(r, "nvfp4-vllm")["latency"]["speedups"] if s["metric"] == "output_tok_s")
    assert nvfp4["ci"][1] < 1.0  # emulated FP4 is slower, and the interval says so
    assert decision(r, "fp8-hf")["latency"] is None  # simulated quantization: no speed claimed
    # Percentile rows pair the candidate with the baseline at the same load point.
    row = next(p for p in fp8["percentiles"] if p["metric"] == "ttft" and p["percentile"] == 99.0
               and p["concurrency"] == 16)
    assert row["baseline"] is not None and row["candidate"]["n"] == 64
    points = {p["cell_id"]: p for p in r["pareto"]["points"]}
    assert r["pareto"]["note"] is None and "bf16-vllm" in points and points["bf16-vllm"]["speedup"] == 1.0
    assert points["fp8-vllm"]["load"] == "concurrency 16"
    # int8_wo: fast and the lowest KL of all: on the KL front; nvfp4: slower and worse: on no front.
    assert points["int8_wo-vllm"]["front_kld"] and not points["nvfp4-vllm"]["front_kld"]
    assert not points["nvfp4-vllm"]["front_delta"]


def test_pareto_front_definition() -> None:
    pts = [{"speedup": 1.0, "q": 0.0}, {"speedup": 1.5, "q": -1.0}, {"speedup": 1.2, "q": 0.5},
           {"speedup": 1.1, "q": 0.4}, {"speedup": 0.9, "q": -3.0}, {"speedup": None, "q": 9.0}]
    assert pareto_front(pts, "speedup", "q", y_higher_is_better=True) == {1, 2}
    assert pareto_front(pts, "speedup", "q", y_higher_is_better=False) == {1, 4}


# ---------------------------------------------------------------- report.html

class _Decisions(HTMLParser):
    """(candidate, backend, verdict) of each row of <table id="decisions">, and every id on the page."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str, str]] = []
        self.ids: list[str] = []
        self.tags: set[str] = set()
        self._in = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "table":
            self._in = a.get("id") == "decisions"
        if self._in and tag == "tr" and "data-verdict" in a:
            self.rows.append((a["data-candidate"], a["data-backend"], a["data-verdict"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in = False


def md_decisions(md: str) -> list[tuple[str, str, str]]:
    section = md.split("### Decisions", 1)[1]
    rows = []
    for line in section.splitlines():
        m = re.match(r"^\| ([^|]+) \| ([^|]+) \| \*\*(SHIP|BLOCK|INCONCLUSIVE)\*\* \|", line)
        if m:
            rows.append((m[1].strip(), m[2].strip(), m[3]))
        elif rows and not line.startswith("|"):
            break
    return rows


def test_markdown_decisions_equal_the_html_decisions(run: dict) -> None:
    page = _Decisions()
    page.feed(run["html"])
    from_results = [(d["candidate"], d["backend"], d["verdict"]) for d in run["results"]["decisions"]]
    assert page.rows == from_results and len(page.rows) == 12  # 6 candidates x hf, vllm (trtllm: NOT RUN)
    assert md_decisions(run["md"]) == page.rows


def test_html_is_one_self_contained_page(run: dict) -> None:
    html = run["html"]
    page = _Decisions()
    page.feed(html)
    assert "script" not in page.tags and "link" not in page.tags and "img" not in page.tags
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    assert "@import" not in html and not re.search(r"url\((?!#)", html)  # only in-page references
    assert len(page.ids) == len(set(page.ids)), "duplicate element ids"
    for section in ("decisions", "matrix", "how-it-ran", "policy", "tasks", "pairing", "divergence", "latency",
                    "pareto", "cells", "signoff"):
        assert section in page.ids
    # Plots are inline SVG: one forest plot per task, the KL plot, the Pareto plot.
    assert html.count('<svg ') == 3 + 2 and html.count('class="plot"') == 5
    assert 'aria-label="Forest plot of the paired delta per candidate for bigbench_mc_physics"' in html


def test_the_answer_separates_engines_from_simulation(run: dict) -> None:
    answer = run["html"].split('id="answer"', 1)[1].split("</p>", 1)[0]
    # Holm over the 18 planned cells (the 6 trtllm cells, which cannot run here, count as not rejected):
    # only int8_wo clears the first steps on an engine; fp8 would ship at a per-cell alpha.
    assert "<b>int8_wo</b> ships on <b>vllm</b>" in answer
    assert "simulated quantization only (quality evidence, no engine): fp8_kv on hf, int8_wo on hf" in answer
    assert "Not settled: fp8 on hf, fp8 on vllm, fp8_kv on vllm" in answer and "Not run here: fp8 on trtllm" in answer
    assert "**int8_wo** ships on **vllm**" in run["md"]
    plural = build_results(write_run(run["dir"].parent / "per-cell", suite=suite_dict(
        gate={"margin": 5.0, "alpha": 0.05, "correction": "none", "max_kld_mean": 0.1, "max_flip_rate": 0.25})))
    assert "**fp8, int8_wo** ship on **vllm**" in render_markdown(plural)  # plural


def test_html_says_how_each_cell_ran_and_signs_off(run: dict) -> None:
    html, r = run["html"], run["results"]
    for label in (SIMULATED_LABEL, NOT_RUN_HERE, "real kernels", "emulated by the engine", "crashed: no results"):
        assert label in html
    assert "the engine could not run this cell on this machine" in html
    not_run = html.split('id="not-run"', 1)[1].split("</table>", 1)[0]
    assert "bf16-trtllm" in not_run and "No module named" in not_run and "gpu: none visible" in not_run
    signoff = html.split('id="signoff"', 1)[1]
    m = r["manifest"]
    for value in (m["model"]["sha256"], m["suite"]["sha256"], r["run"]["id"], "signed by (name, role)", "date",
                  "precision(s) approved to ship", m["versions"]["numpy"]):
        assert value in signoff
    for cell in r["cells"]:
        if cell["artifact"]:
            assert cell["artifact"]["key"] in signoff


def test_html_prints_every_task_number_with_n_and_interval(run: dict) -> None:
    html = run["html"]
    t = decision(run["results"], "nvfp4-hf")["tasks"][2]  # bigbench_mc_physics, a FAIL
    assert t["task"] == "bigbench_mc_physics" and t["verdict"] == "FAIL"
    assert f"{t['estimate']:+.2f}</b> [{t['ci'][0]:+.2f}, {t['ci'][1]:+.2f}]" in html
    assert f"{t['n10']} / {t['n01']}" in html
    assert f"{t['trtllm']['threshold']:.2f}" in html and f"{t['pairing']['ratio']:.1f}×" in html
    assert "(n=500)" in html  # in the forest plots' labels
    ratios = [t["pairing"]["ratio"] for d in run["results"]["decisions"] for t in d["tasks"]]
    assert f"median {np.median(ratios):.1f}×" in html
    kld = decision(run["results"], "int8_sq-hf")
    heldout = next(c for c in run["results"]["cells"] if c["id"] == kld["cell_id"])["divergence"]["heldout"]
    assert f"{heldout['kld_p999']:.3g}" in html and f"{heldout['kld_mean']:.3g}" in html


def test_markdown_carries_the_key_numbers(run: dict) -> None:
    md, r = run["md"], run["results"]
    assert "| candidate | hf | vllm | trtllm |" in md
    t = decision(r, "fp8-vllm")["tasks"][0]
    assert f"{t['estimate']:+.2f} [{t['ci'][0]:+.2f}, {t['ci'][1]:+.2f}]" in md
    assert NOT_RUN_HERE in md and SIMULATED_LABEL in md
    assert "- NOT RUN bf16-trtllm: TensorRT-LLM does not import here" in md
    assert "Speed-up over bf16" in md and len(md) < 65_536  # a GitHub comment's limit


# ---------------------------------------------------------------- junit.xml

def test_junit_has_one_case_per_gate_rule(run: dict) -> None:
    root = ET.parse(run["dir"] / "junit.xml").getroot()
    suites = root.findall("testsuite")
    assert len(suites) == 1
    ts = suites[0]
    rules = [(d, x) for d in run["results"]["decisions"] for x in d["rules"]]
    not_run = run["results"]["not_run"]
    cases = ts.findall("testcase")
    assert int(ts.get("tests")) == len(cases) == len(rules) + len(not_run)
    assert int(ts.get("failures")) == len(ts.findall("testcase/failure")) == sum(x["passed"] is False for _, x in rules)
    assert int(ts.get("skipped")) == len(ts.findall("testcase/skipped")) == \
        sum(x["passed"] is None for _, x in rules) + len(not_run)
    assert [(c.get("classname"), c.get("name")) for c in cases] == \
        [(f"qeval.release-check.{d['cell_id']}", x["rule_id"]) for d, x in rules] + \
        [(f"qeval.release-check.{c['id']}", "not_run") for c in not_run]
    trt = next(c for c in cases if c.get("classname").endswith("bf16-trtllm"))
    assert trt.find("skipped").get("message").startswith("NOT RUN: TensorRT-LLM does not import here")
    kld = next(c for c in cases if c.get("classname").endswith("int8_sq-vllm") and c.get("name") == "kld")
    assert "FAIL" in kld.find("failure").text


# ---------------------------------------------------------------- without latency, and hostile text

def test_without_latency_the_pareto_plot_is_skipped_with_a_note(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, suite=suite_dict(backends=("hf",), candidates=("fp8", "int8_wo")))
    r = build_results(run_dir)
    assert r["pareto"]["note"] and not r["pareto"]["points"]
    html = render_html(r)
    assert html_escape(r["pareto"]["note"]) in html and html.count("<svg ") == 3 + 1  # forest plots and KL, no Pareto
    assert "No latency was measured in this run" in html
    assert "No latency measured in this run" in render_markdown(r)
    jsonschema.validate(r, schema(), cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize("gate, sampling", [({"margin": 0.05, "margin_kind": "relative", "max_kld_mean": 0.1}, None),
                                            ({"margin": 5.0}, {"mode": "group-sequential", "looks": 4}),
                                            ({"margin": 5.0, "max_flip_rate": 0.25},
                                             {"mode": "anytime", "look_size": 50}),
                                            ({"margin": 5.0, "policy": "trtllm", "correction": "bh"}, None)])
def test_other_gate_policies_render_and_validate(tmp_path: Path, gate: dict, sampling: dict | None) -> None:
    run_dir = write_run(tmp_path, suite=suite_dict(candidates=("fp8", "nvfp4"), backends=("hf",), gate=gate,
                                                   sampling=sampling))
    r = build_results(run_dir)
    jsonschema.validate(r, schema(), cls=jsonschema.Draft202012Validator)
    html, md = render_html(r), render_markdown(r)
    page = _Decisions()
    page.feed(html)
    assert page.rows == md_decisions(md) == [(d["candidate"], d["backend"], d["verdict"]) for d in r["decisions"]]
    t = r["decisions"][0]["tasks"][0]
    if gate.get("margin_kind") == "relative":
        assert "recovery" in html and f"{t['estimate']:.2%}" in html
    if sampling and sampling["mode"] == "group-sequential":
        assert t["sequential"] is not None and t["sequential"]["design"]["looks"] == [125, 250, 375, 500]
        assert "group-sequential: 4 looks" in html
    if sampling and sampling["mode"] == "anytime":
        assert t["anytime"] is not None and t["mode"] == "anytime" and "anytime-valid" in html
    if gate.get("policy") == "trtllm":
        assert all(t["decided_by"] == "trtllm" for d in r["decisions"] for t in d["tasks"])
        assert "TensorRT-LLM&#39;s rule (qeval&#39;s paired rule reported beside it)" in html


def test_markup_in_names_causes_and_model_answers_renders_inert(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, xss=True)
    outcome = write_reports(run_dir)
    html = outcome.paths["html"].read_text()
    md = outcome.paths["md"].read_text()
    r = json.loads(outcome.paths["json"].read_text())
    # The payloads reached the report: the suite description, a crash cause, a model's answer.
    assert XSS_SCRIPT in r["suite"]["description"]
    assert any(XSS_IMG in (ex["candidate_answer"] or "") for d in r["decisions"] for t in d["tasks"]
               for ex in t["examples"])
    assert any(XSS_SCRIPT in (c["cause"] or "") for c in r["cells"])
    for text in (html, md):
        assert "<script" not in text.lower()
        assert "<img" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    ET.parse(outcome.paths["junit"])  # still well-formed XML


def test_md_escape() -> None:
    assert md_escape("a|b\nc <b>`x`</b>") == "a\\|b c &lt;b&gt;'x'&lt;/b&gt;"
    assert md_escape(None) == ""


def test_render_time_is_reported(run: dict) -> None:
    # Gate + results + plots + all four files for 21 cells x 3 tasks x 500 items: a few seconds on 2 cores.
    print(f"\nwrite_reports: {run['seconds']:.2f} s")
    assert run["seconds"] < 60


def test_reports_show_each_custom_recipe_definition(run: dict) -> None:
    from qeval.report.html import render_html
    from qeval.report.markdown import render_markdown

    results = copy.deepcopy(run["results"])
    results["suite"]["recipes"] = [{"name": "int8_sq_keep_edges", "base": "int8_sq", "description": "edges <b>bf16</b>",
                                    "disable": ["lm_head", "model.layers.0.*"], "block_size": None}]
    md = render_markdown(results)
    assert "### Custom recipes" in md and "int8_sq_keep_edges | int8_sq | disable=" in md
    assert "&lt;b&gt;" in md and "block_size" not in md  # escaped; unset edits left out
    page = render_html(results)
    assert "Custom recipes" in page and "model.layers.0.*" in page and "edges &lt;b&gt;bf16" in page


def test_a_cell_stopped_midway_is_unfinished_not_not_run(tmp_path: Path) -> None:
    """A budget or interrupt that stops a run inside a cell leaves its divergence on disk and no status: the
    matrix must say the cell is unfinished (resume it), not that it never ran; a cell with nothing is not run."""
    from qeval.report.results import NOT_RUN_LABEL, UNFINISHED_LABEL

    run_dir = write_run(tmp_path)
    cells = run_dir / "cells"
    started = next(p for p in sorted(cells.iterdir()) if not p.name.startswith("bf16")
                   and (p / "divergence.json").exists())
    (started / "status.json").unlink()
    untouched = next(p for p in sorted(cells.iterdir()) if not p.name.startswith("bf16") and p != started
                     and p.name.endswith("-hf"))
    for f in untouched.iterdir():  # nothing measured: as if the run never reached it
        if f.is_file():
            f.unlink()
        else:
            import shutil
            shutil.rmtree(f)
    r = build_results(run_dir)
    entries = {e["cell_id"]: e for row in r["matrix"]["rows"] for e in row["cells"]}
    assert entries[started.name]["verdict"] == "NOT RUN"  # no decision without a status
    assert entries[started.name]["label"] == UNFINISHED_LABEL
    assert "unfinished" in entries[started.name]["summary"]
    assert entries[untouched.name]["label"] == NOT_RUN_LABEL
    assert "not run (no results)" in entries[untouched.name]["summary"]
