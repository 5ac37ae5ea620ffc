"""Command line: `qeval run | plan | report | compare | sign-off | verify | list | show | export | fetch`.

Exit codes: 0 the run finished, no candidate is blocked and every cell ran;
1 a candidate is BLOCKed or a cell ended in ERROR (`verify`: something changed
since the sign-off); 2 bad input (the message names the file, the field and the
fix; nothing already computed is lost); 3 nothing is blocked, but an engine could
not run some cells here (NOT RUN: not installed, no GPU, no kernels or load path
for the precision; the report and the printed summary list them with the reason
as measured). 1 wins over 3.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from qeval.errors import EXIT_BAD_INPUT, QevalError

EXIT_OK = 0
EXIT_BLOCKED = 1
EXIT_NOT_RUN = 3
EXIT_INTERRUPTED = 130


def _offline_env() -> None:
    # The hubs are unreachable here and must never be contacted implicitly:
    # everything qeval loads comes from local folders.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from qeval.paths import confine_library_caches

    confine_library_caches()


def cmd_run(args: argparse.Namespace) -> int:
    from qeval.runner import new_run_dir, run_suite

    if args.resume is not None and not Path(args.resume).is_dir():
        raise QevalError(f"run directory {args.resume} does not exist", field="--resume",
                         fix="pass a directory that `qeval run` created under reports/")
    # A directory that is not a run would otherwise fail later on its missing suite.yaml: say what it is.
    if args.resume is not None and not (Path(args.resume) / "manifest.json").is_file():
        raise QevalError(f"{args.resume} is not a qeval run directory (no manifest.json)", field="--resume",
                         fix="pass a directory that `qeval run` created under reports/, or drop --resume")
    suite_arg = args.suite
    if args.resume is not None and suite_arg is None:
        suite_arg = Path(args.resume) / "suite.yaml"
    suite, suite_path, suite_text, overrides = _suite_for_run(args, suite_arg)
    resume = args.resume is not None
    reports_dir = Path(args.reports_dir)
    # Checked before the run starts: otherwise the run would fail creating its directory, with a traceback.
    if not resume and reports_dir.exists() and not reports_dir.is_dir():
        raise QevalError(f"{reports_dir} is a file, not a directory", field="--reports-dir",
                         fix="pass a directory (it is created if missing), or move the file away")
    blocking = next((p for p in reports_dir.absolute().parents if p.exists() and not p.is_dir()), None)
    if not resume and blocking is not None:  # seconds, not after the engines have loaded
        raise QevalError(f"cannot create the run directory under {reports_dir}: {blocking} is a file",
                         field="--reports-dir", fix="choose a reports directory you can write to")
    if not resume and reports_dir.is_dir() and not os.access(reports_dir, os.W_OK | os.X_OK):
        raise QevalError(f"{reports_dir} is not writable by this user", field="--reports-dir",
                         fix="pass a directory you can write to")
    run_dir = Path(args.resume) if resume else new_run_dir(reports_dir, suite)
    from qeval.interrupts import recorded_ctrl_c

    try:
        with recorded_ctrl_c():
            store = run_suite(suite, suite_path, run_dir, resume=resume,
                              allow_changed=parse_allow_changed(args.allow_changed),
                              suite_text=suite_text, overrides=overrides)
    except KeyboardInterrupt:
        print(interrupted_message(run_dir), file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"run directory: {store.root}")
    return finish(store.root)


def _suite_for_run(args: argparse.Namespace, suite_arg: str | Path | None
                   ) -> tuple[Any, Path, bytes | None, dict[str, Any]]:
    """(suite, its path, the suite.yaml text to write (None: the file's bytes), the overrides) for `qeval run`:
    a suite file as it is, or flags alone or over a file (qeval.suite_flags)."""
    from qeval import suite_flags
    from qeval.suite import load_suite, read_yaml, resolve_suite_path

    flags = suite_flags.SuiteFlags(model=args.model, candidates=args.candidates, tasks=args.tasks,
                                   backends=args.backends, limit=args.limit, margin=args.margin, alpha=args.alpha,
                                   name=args.name, calibration=args.calibration, sets=args.set or [])
    if not flags.given():
        suite, path = load_suite(suite_arg)
        return suite, path, None, {}
    if suite_arg is None:  # flags alone: no file (messages say "command line"; relative paths are the cwd's)
        suite, over = suite_flags.build(None, flags, base_file=None)
        path = Path(suite_flags.CLI_SOURCE)
    else:
        path = resolve_suite_path(suite_arg)
        load_suite(path)  # the file must be valid on its own: its own problems are named as its own
        suite, over = suite_flags.build(read_yaml(path), flags, base_file=str(path))
    _check_source_after_flags(suite, path)
    return suite, path, suite_flags.suite_yaml(suite, over, None if suite_arg is None else str(path)), over


def _check_source_after_flags(suite: Any, path: Path) -> None:
    """--model: the same folder checks as a suite file's model.source."""
    from qeval.suite import check_model_source

    try:
        check_model_source(suite, path)
    except QevalError as err:
        raise QevalError(err.problem, file="command line" if err.field == "model.source" else err.file,
                         field="--model (model.source)" if err.field == "model.source" else err.field,
                         fix=err.fix.replace(" (relative to the suite file)", "") if err.fix else None) from None


def interrupted_message(run_dir: Path) -> str:
    """What to type to continue an interrupted run (nothing finished is recomputed)."""
    if not (run_dir / "manifest.json").is_file():
        return "qeval: interrupted before the run directory was written; nothing to resume (run the command again)"
    return (f"qeval: interrupted; results written so far are kept in {run_dir}\n"
            f"  continue with: qeval run --resume {shlex.quote(str(run_dir))}")


def parse_allow_changed(values: list[str] | None) -> list[str]:
    """--allow-changed, repeatable and comma-separated: `--allow-changed model.weights_sha256,versions`."""
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def finish(run_dir: Path, quality_from: Path | None = None) -> int:
    """Gate and report a run directory; the exit code follows the decisions (this run's own: a join with
    `quality_from` changes no verdict)."""
    import time

    from qeval.report import write_reports
    from qeval.timings import record_step, summary_lines

    t0 = time.perf_counter()
    outcome = write_reports(run_dir, quality_from=quality_from)
    record_step(run_dir, "report", time.perf_counter() - t0)
    print("time per step:\n  " + "\n  ".join(summary_lines(run_dir)))
    print(outcome.summary)
    if outcome.any_blocked:
        return EXIT_BLOCKED
    return EXIT_NOT_RUN if outcome.not_run else EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = _run_dir_arg(args.run_dir)
    quality_from = Path(args.quality_from) if args.quality_from is not None else None
    code = finish(run_dir, quality_from)
    if args.plots is not None:
        import json

        from qeval.report.figures import write_figures
        from qeval.report.join import JOIN_FILE

        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        if quality_from is not None:
            results["pareto"] = json.loads((run_dir / JOIN_FILE).read_text(encoding="utf-8"))
        done = write_figures(results, Path(args.plots))
        print("plots: " + ", ".join(str(p) for p in done.written))
        for name, why in done.skipped.items():
            print(f"plots: {name} not drawn: {why}")
    return code


def _run_dir_arg(value: str) -> Path:
    run_dir = Path(value)
    if not (run_dir / "manifest.json").is_file():
        raise QevalError(f"{run_dir} is not a qeval run directory (no manifest.json)", field="RUN_DIR",
                         fix="pass a directory that `qeval run` created under reports/")
    return run_dir


def cmd_signoff(args: argparse.Namespace) -> int:
    """Sign a run: signoff.json binds who, when, what and the sha256 of its evidence; the reports show it."""
    from qeval import signoff
    from qeval.report import write_reports

    run_dir = _run_dir_arg(args.run_dir)
    record = signoff.sign(run_dir, by=args.by, decisions=signoff.parse_decisions(args.decision), note=args.note)
    for d in record["decisions"]:
        if d["overrides_gate"]:
            print(f"qeval: warning: {d['decision']} {d['cell']} goes against the gate ({d['gate_verdict']}); "
                  "recorded as the signer's override", file=sys.stderr)
    outcome = write_reports(run_dir)
    print(f"signed {record['run_id']} by {record['signed_by']} at {record['signed_at']}: "
          + ", ".join(f"{d['decision']} {d['cell']}" for d in record["decisions"]))
    print(f"evidence sha256 {record['evidence_sha256']} ({len(record['files'])} files); "
          f"signoff: {run_dir / signoff.SIGNOFF_FILE}; report: {outcome.paths['html']}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """Recompute a signed run's hashes and verdicts: exit 0 when nothing changed since the sign-off, else 1."""
    from qeval import signoff

    check = signoff.verify(_run_dir_arg(args.run_dir))
    print("\n".join(check.lines()))
    return EXIT_OK if check.ok else EXIT_BLOCKED


def cmd_fetch(args: argparse.Namespace) -> int:
    from qeval.assets import fetch_all

    for name, path in fetch_all().items():
        print(f"{name}: {path}")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from qeval.forecast import forecast, render

    if args.pilot < 0:
        raise QevalError(f"--pilot must be 0 or more documents, got {args.pilot}", field="--pilot",
                         fix="e.g. --pilot 20")
    if args.flip_rate is not None and not 0 < args.flip_rate <= 1:
        raise QevalError(f"--flip-rate must be in (0, 1], got {args.flip_rate}", field="--flip-rate",
                         fix="a fraction, e.g. 0.1 for 10% of answers flipping")
    suite, suite_path, _, _ = _suite_for_run(args, args.suite)  # a suite file, flags, or flags over a file
    print(render(forecast(suite, suite_path, flip_rate=args.flip_rate, pilot=args.pilot,
                          seconds_per_item=args.seconds_per_item)))
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from qeval.report.compare import compare_runs

    print(compare_runs(Path(args.run_a), Path(args.run_b)))
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from qeval.catalog import listing

    print("\n".join(listing(args.kind, args.grep)))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from qeval.catalog import show_precision

    print("\n".join(show_precision(args.name)))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from qeval.export import export

    written = export(_run_dir_arg(args.run_dir), args.format, Path(args.out) if args.out else None)
    for name, path in written.items():
        print(f"{name}: {path}")
    return EXIT_OK


def add_suite_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that build a suite or override a suite file's fields (`qeval run`, `qeval plan`)."""
    flags = parser.add_argument_group("suite from flags", "build a suite without YAML, or override fields of the "
                                   "suite file; the effective suite is written to the run directory as suite.yaml "
                                   "and the flags are recorded in the manifest (suite.overrides)")
    flags.add_argument("--model", metavar="PATH_OR_BUILTIN", help="model.source: a local Hugging Face folder or "
                       "a built-in model (smollm2-135m-instruct, the default)")
    flags.add_argument("--candidates", metavar="LIST", help="precisions to compare with the baseline, e.g. "
                       "fp8,int8_wo (`qeval list precisions`)")
    flags.add_argument("--tasks", metavar="LIST", help="lm-eval tasks, e.g. bigbench_mc_physics,bigbench_mc_social_iqa"
                       " (`qeval list tasks`); tasks the suite file has keep their settings")
    flags.add_argument("--backends", metavar="LIST", help="engines, e.g. hf,vllm (default: hf)")
    flags.add_argument("--limit", type=int, metavar="N", help="documents per task (every task's limit; the "
                       "sampling design draws them in its seeded order)")
    flags.add_argument("--margin", type=float, metavar="M", help="gate.margin: the non-inferiority margin (points)")
    flags.add_argument("--alpha", type=float, metavar="A", help="gate.alpha: the one-sided level of each test")
    flags.add_argument("--name", help="the suite name, which starts the run directory's name (default: cli)")
    flags.add_argument("--calibration", metavar="SET", help="calibration set (`qeval list calibration-sets`; "
                       "default without a suite file: bigbench-mixed)")
    flags.add_argument("--set", action="append", metavar="FIELD=VALUE", help="any other suite field, YAML-typed, "
                       "e.g. --set latency.enabled=false --set divergence.task_prompts=8 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qeval", description="Which precision of this model may ship, on which engine?")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite (default: the built-in smoke suite)")
    run.add_argument("suite", nargs="?", default=None, help="suite YAML path or built-in name (default: smoke)")
    run.add_argument("--resume", metavar="RUN_DIR", default=None,
                     help="continue an interrupted run; recomputes nothing that finished")
    run.add_argument("--allow-changed", metavar="FIELD", action="append", default=None,
                     help="with --resume: let through a change of this recorded field (e.g. model.weights_sha256, "
                          "or a group: versions) that you vouch leaves the results as they are; recorded in the "
                          "manifest (repeatable, comma-separated; default: none, any change is refused)")
    run.add_argument("--reports-dir", "--out", default="reports",
                     help="where run directories are created (default: reports)")
    add_suite_flags(run)
    run.set_defaults(func=cmd_run)

    report = sub.add_parser(
        "report", help="gate a run directory and write its reports",
        description="Gate RUN_DIR as it stands and rewrite its reports (results.json, report.md, junit.xml, "
                    "report.html).",
        epilog="Joining a speed-only run with a quality run: a speed-only run (model.speed_only: a published "
               "architecture's shape, synthetic weights) has speed-ups and no quality; a run on real weights has "
               "quality and, on a small model, speed that says little. `qeval report SPEED_RUN --quality-from "
               "QUALITY_RUN` plots, per precision and engine (same precision name on the same backend, e.g. fp8 on "
               "vllm), SPEED_RUN's speed-up with its CI against QUALITY_RUN's pooled paired delta, mean KL and "
               "verdict, each axis labelled with its run, model, real or synthetic weights and hardware; "
               "precisions in only one run are listed as not joined, with the reason. No verdict changes: "
               "results.json and junit.xml stay SPEED_RUN's own, the join goes to SPEED_RUN/quality-join.json and "
               "is shown in report.html and report.md; nothing is written into QUALITY_RUN. Exit 2 where a "
               "directory is not a run, QUALITY_RUN has synthetic weights, the baselines differ or nothing joins. "
               "A later `qeval report SPEED_RUN` without --quality-from removes quality-join.json.")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--quality-from", metavar="QUALITY_RUN", default=None,
                        help="a run on real weights whose quality evidence the quality-versus-speed view plots "
                             "against RUN_DIR's speed-ups (RUN_DIR: typically a speed-only run; see below)")
    report.add_argument("--plots", metavar="DIR", default=None,
                        help="also write comparison figures (forest, KL vs accuracy, quality vs speed) as PNG and "
                             "SVG into DIR")
    report.set_defaults(func=cmd_report)

    plan = sub.add_parser("plan", help="before a run: the n each task needs for the suite's margin, alpha and "
                                       "power, the documents it has, the projected cost")
    plan.add_argument("suite", nargs="?", default=None, help="suite YAML path or built-in name (default: smoke)")
    plan.add_argument("--flip-rate", type=float, default=None,
                      help="assumed fraction of answers that flip (default: 10%%, or measured by --pilot)")
    plan.add_argument("--pilot", type=int, default=0, metavar="N",
                      help="measure the flip rate and seconds per item on N documents per task (baseline and the "
                           "first candidate on hf; default 0: no model runs)")
    plan.add_argument("--seconds-per-item", type=float, default=None, help="cost per item where no pilot runs")
    add_suite_flags(plan)
    plan.set_defaults(func=cmd_plan)

    compare = sub.add_parser("compare", help="what changed from run A (e.g. last release) to run B")
    compare.add_argument("run_a")
    compare.add_argument("run_b")
    compare.set_defaults(func=cmd_compare)

    sign = sub.add_parser("sign-off", help="sign a run: bind who approved what to the sha256 of its evidence")
    sign.add_argument("run_dir", metavar="RUN_DIR")
    sign.add_argument("--by", required=True, metavar="NAME", help="who signs (name, role)")
    sign.add_argument("--decision", action="append", default=None, metavar="ACTION:CELL",
                      help="ship:CELL or block:CELL, e.g. ship:fp8-vllm,block:int8_sq-hf (repeatable; default: "
                           "the gate's verdicts, ship what it SHIPs)")
    sign.add_argument("--note", default=None, metavar="TEXT", help="a note kept with the sign-off (default: none)")
    sign.set_defaults(func=cmd_signoff)

    verify = sub.add_parser("verify", help="check a signed run: exit 0 if nothing changed since the sign-off, "
                                           "1 if anything did (names it)")
    verify.add_argument("run_dir", metavar="RUN_DIR")
    verify.set_defaults(func=cmd_verify)

    lister = sub.add_parser("list", help="what qeval knows, one line each, with what runs it on this machine")
    lister.add_argument("kind", choices=("precisions", "tasks", "backends", "calibration-sets"))
    lister.add_argument("--grep", metavar="WORD", default=None, help="only lines containing WORD (any case)")
    lister.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="one precision's full recipe: ModelOpt config, TensorRT-LLM QuantAlgo, "
                                       "vLLM arguments, kernels per engine")
    show.add_argument("what", choices=("precision",))
    show.add_argument("name", metavar="NAME")
    show.set_defaults(func=cmd_show)

    exporter = sub.add_parser("export", help="a run's decisions and per-sample paired records as tables "
                                             "(columns: docs/export.md)")
    exporter.add_argument("run_dir", metavar="RUN_DIR")
    exporter.add_argument("--format", choices=("csv", "parquet", "jsonl"), default="csv",
                          help="table format (default: csv; parquet needs pyarrow)")
    exporter.add_argument("--out", metavar="DIR", default=None, help="where to write (default: RUN_DIR/export)")
    exporter.set_defaults(func=cmd_export)

    fetch = sub.add_parser("fetch", help="bring the offline model and BIG-bench tasks into the cache")
    fetch.set_defaults(func=cmd_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # force: each call (tests call main() in process, one stderr each) logs to the stderr of now.
    logging.basicConfig(force=True, level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("lm_eval", "httpx", "datasets", "transformers", "modelopt", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _offline_env()
    try:
        return args.func(args)
    except QevalError as err:
        print(f"qeval: error: {err.render()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # outside a run (a run prints its own resume command)
        print("qeval: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
