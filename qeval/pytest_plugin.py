"""`pytest -m quality`: suites become tests, one item per gate rule per candidate.

A thin layer of pytest hooks (as pytest-benchmark's plugin.py is): the work
lives in `QualitySession` (runs the cells the selected items need, once per
session, and asks the gate) and in the items, which only look up their rule.

    pytest -m quality                       # every suite under suites/
    pytest -m quality suites/smoke.yaml -k fp8
    pytest -m quality --qeval-inconclusive=fail --junitxml=gate.xml

Node ids read `suites/smoke.yaml::fp8-hf::bigbench_mc_physics`, so -k, -x,
--lf and --junitxml work as usual. Runs land in
`<report dir>/pytest-<suite>-<suite hash>` and are resumed by the next
session: re-running a failed item recomputes nothing that finished.

Under pytest-xdist (`-n 2`) every worker collects every item; one process at a
time runs and gates a suite's run directory (a file lock beside it), so the
first worker computes and the others wait, resume the finished run and gate
the same records: the verdicts of `-n 0`. Workers write no reports; the
controller writes them once, atomically, for the run directories its workers
name (`workeroutput`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from qeval.errors import QevalError

INCONCLUSIVE_CHOICES = ("fail", "xfail", "skip")
log = logging.getLogger(__name__)


# -- options ------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qeval", "qeval quality gates")
    group.addoption("--qeval-suite", action="append", default=[], metavar="PATH",
                    help="suite YAML to collect as quality tests (repeatable; default: suites/*.yaml "
                         "given on the command line or under testpaths)")
    group.addoption("--qeval-report-dir", default=None, metavar="DIR",
                    help="where runs and reports are written (default: ini qeval_report_dir, else 'reports')")
    group.addoption("--qeval-inconclusive", default=None, choices=INCONCLUSIVE_CHOICES,
                    help="what an INCONCLUSIVE gate rule does: fail, xfail or skip (default: ini "
                         "qeval_inconclusive, else xfail)")
    parser.addini("qeval_suites", type="paths", default=[], help="suite YAML files collected as quality tests")
    parser.addini("qeval_report_dir", default="reports", help="where runs and reports are written (default: reports)")
    parser.addini("qeval_inconclusive", default="xfail", help="fail | xfail | skip (default: xfail)")


def parse_inconclusive(value: str) -> str:
    """Validate the INCONCLUSIVE policy, failing with a message that names the option."""
    if value not in INCONCLUSIVE_CHOICES:
        raise pytest.UsageError(f"qeval_inconclusive={value!r}: expected one of {', '.join(INCONCLUSIVE_CHOICES)}")
    return value


def parse_report_dir(value: str) -> str:
    """The report dir option: a path, never one holding NUL or control characters (a mangled ini line)."""
    bad = next((c for c in str(value) if not c.isprintable()), None)
    if not str(value).strip() or bad is not None:
        raise pytest.UsageError(f"qeval_report_dir={value!r}: expected a directory path"
                                + (f" (it contains the control character {bad!r})" if bad else ""))
    return str(value)


quality_session_key = pytest.StashKey["QualitySession"]()
WORKER_OUTPUT_KEY = "qeval_run_dirs"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "quality: a qeval gate rule (runs models; select with -m quality)")
    config.addinivalue_line("markers", "latency: a qeval latency SLO rule")
    report_dir = parse_report_dir(config.getoption("--qeval-report-dir") or config.getini("qeval_report_dir"))
    inconclusive = parse_inconclusive(config.getoption("--qeval-inconclusive") or config.getini("qeval_inconclusive"))
    extra = [Path(p).resolve() for p in config.getoption("--qeval-suite")]
    extra += [Path(p).resolve() for p in config.getini("qeval_suites")]
    config.stash[quality_session_key] = QualitySession(
        report_dir=Path(config.rootpath, report_dir), inconclusive=inconclusive, explicit_suites=extra,
        xdist_worker=hasattr(config, "workerinput"))
    # Suites named by option are collected like command-line paths.
    for path in extra:
        if str(path) not in config.args:
            config.args.append(str(path))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    session = parent.config.stash[quality_session_key]
    if file_path.suffix in (".yaml", ".yml") and session.is_suite_file(file_path):
        return SuiteFile.from_parent(parent, path=file_path)
    return None


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    quality = config.stash.get(quality_session_key, None)
    lines = list(quality.summary_lines()) if quality is not None else []
    if not lines:
        return
    terminalreporter.section("qeval gate")
    for line in lines:
        terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    quality = session.config.stash.get(quality_session_key, None)
    if quality is None:
        return
    if quality.xdist_worker:
        # Under pytest-xdist the controller writes the reports, once: a worker only says which runs it used.
        session.config.workeroutput[WORKER_OUTPUT_KEY] = sorted(str(r.run_dir) for r in quality.runs.values()
                                                                if r.error is None)
        return
    quality.write_reports()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist, on the controller: a worker finished; note the run directories it gated."""
    quality = node.config.stash.get(quality_session_key, None)
    output = getattr(node, "workeroutput", None) or {}
    if quality is not None:
        quality.worker_run_dirs.update(Path(p) for p in output.get(WORKER_OUTPUT_KEY, []))


# -- the work -----------------------------------------------------------------

@dataclass
class SuiteRun:
    """One suite's run in this session: the store and the gate's decisions."""

    suite: Any
    suite_path: Path
    run_dir: Path
    cells: set[str]
    decisions: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class QualitySession:
    """Runs what the selected items need, once per session, and keeps the decisions."""

    def __init__(self, report_dir: Path, inconclusive: str, explicit_suites: list[Path],
                 xdist_worker: bool = False) -> None:
        self.report_dir = report_dir
        self.inconclusive = inconclusive
        self.explicit_suites = explicit_suites
        self.xdist_worker = xdist_worker
        self.runs: dict[Path, SuiteRun] = {}
        self.worker_run_dirs: set[Path] = set()  # on an xdist controller: the runs its workers gated
        self.reported: dict[Path, Any] = {}  # run dir -> qeval.report.ReportOutcome, once written

    def is_suite_file(self, path: Path) -> bool:
        """Named by option, or a YAML under a `suites/` folder that looks like a suite."""
        path = path.resolve()
        if path in self.explicit_suites:
            return True
        if path.parent.name != "suites":
            return False
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
        return "candidates:" in text and "tasks:" in text

    def run_for(self, item: "GateRuleItem") -> SuiteRun:
        """The suite's run, started on first use with every cell the selected items need."""
        path = item.path.resolve()
        if path not in self.runs:
            needed = {i.cell_id for i in item.session.items
                      if isinstance(i, GateRuleItem) and i.path.resolve() == path}
            self.runs[path] = self._run(item.suite, path, needed)
        return self.runs[path]

    def _run(self, suite: Any, suite_path: Path, cells: set[str]) -> SuiteRun:
        from qeval.report import gate_run
        from qeval.runner import run_suite

        run = SuiteRun(suite=suite, suite_path=suite_path, run_dir=self.report_dir, cells=cells)
        try:
            run.run_dir = run_dir = self.run_dir_for(suite, suite_path)
            # One process at a time runs and gates a suite's run directory: under pytest-xdist the first worker
            # to need it computes, the others wait here, then resume the finished run (recomputing nothing)
            # and gate the same records, so every worker reaches the verdicts a single process would.
            with self._run_lock(run_dir):
                run_suite(suite, suite_path, run_dir, resume=(run_dir / "manifest.json").exists(), only=cells)
                run.decisions = {f"{d.candidate}-{d.backend}": d for d in gate_run(run_dir)}
        except QevalError as err:
            run.error = err.render()
            if "--resume" in (err.fix or ""):  # a refused resume: the plugin's own fix, not the CLI's
                run.error += (f"\n  (pytest: the records in {run.run_dir} were made with other inputs; delete that "
                              "directory to rerun from scratch, or resume it once with `qeval run --resume "
                              f"{run.run_dir} --allow-changed FIELD`)")
        return run

    def _run_lock(self, run_dir: Path) -> Any:
        """A file lock beside the run directory (which may not exist yet), held while it is run, gated or
        reported."""
        from filelock import FileLock, Timeout

        from qeval.paths import confine_library_caches

        confine_library_caches()
        self.report_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(run_dir.with_name(f".{run_dir.name}.lock")))
        try:
            lock.acquire(timeout=0)
            lock.release()
        except Timeout:  # say why this worker is idle
            log.warning("%s: another pytest process is running this suite; waiting for it", run_dir)
        return lock

    def run_dir_for(self, suite: Any, suite_path: Path) -> Path:
        """`<report dir>/pytest-<suite>-<suite hash>`: directly under the report dir, whatever the suite says."""
        from qeval.paths import check_name, under
        from qeval.suite import suite_hash

        name = check_name(suite.name, what="suite name", file=str(suite_path), field="name")
        return under(self.report_dir, self.report_dir / f"pytest-{name}-{suite_hash(suite_path)[:10]}",
                     what="run directory")

    def summary_lines(self) -> Iterator[str]:
        for run in self.runs.values():
            yield f"{run.suite_path.name} -> {run.run_dir}"
            if run.error:
                yield f"  error: {run.error}"
            for decision in run.decisions.values():
                yield f"  {decision.candidate + '-' + decision.backend:<28} {decision.verdict}"
        if not self.runs:  # an xdist controller: the runs are its workers', the decisions those of its reports
            for run_dir, outcome in self.reported.items():
                yield f"{run_dir} (reported once, by the xdist controller)"
                yield from (f"  {line.strip()}" for line in outcome.summary.splitlines()[1:])

    def write_reports(self) -> None:
        """Gate every run of the session once more and write its reports (atomically, under the run's lock)."""
        from qeval.report import write_reports

        dirs = {run.run_dir for run in self.runs.values() if run.error is None} | self.worker_run_dirs
        for run_dir in sorted(dirs):
            if not (run_dir / "manifest.json").exists():
                continue
            with self._run_lock(run_dir):
                self.reported[run_dir] = write_reports(run_dir)


# -- collection nodes -----------------------------------------------------------

class SuiteFile(pytest.File):
    """A suite YAML: one collector per candidate cell, one item per gate rule."""

    def collect(self) -> Iterator["GateRuleItem"]:
        from qeval.gate import planned_rules
        from qeval.cells import plan
        from qeval.suite import load_suite

        try:
            suite, _ = load_suite(self.path)
        except QevalError as err:
            raise self.CollectError(err.render()) from None
        for cell in plan(suite):
            if cell.is_baseline:
                continue
            for rule_id in planned_rules(suite.gate, [t.name for t in suite.tasks], cell.backend):
                item = GateRuleItem.from_parent(self, name=f"{cell.id}::{rule_id}", suite=suite,
                                                cell_id=cell.id, rule_id=rule_id)
                item.add_marker(pytest.mark.quality)
                if rule_id.startswith("latency"):
                    item.add_marker(pytest.mark.latency)
                yield item

    class CollectError(Exception):
        pass

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, self.CollectError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class GateFailure(AssertionError):
    """A gate rule failed; its message is the evidence."""


class GateRuleItem(pytest.Item):
    """One gate rule of one candidate cell."""

    def __init__(self, *, suite: Any, cell_id: str, rule_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.cell_id = cell_id
        self.rule_id = rule_id

    def runtest(self) -> None:
        quality = self.config.stash[quality_session_key]
        run = quality.run_for(self)
        if run.error:
            raise GateFailure(f"the suite could not run: {run.error}")
        decision = run.decisions.get(self.cell_id)
        if decision is None:
            raise GateFailure(f"{self.cell_id}: no decision (the cell did not run; see {run.run_dir})")
        rule = next((r for r in decision.rules if r.rule_id == self.rule_id), None)
        if rule is None:
            crashed = [r for r in decision.rules if r.kind == "error"]
            if crashed:
                raise GateFailure("\n".join(r.message for r in crashed))
            raise GateFailure(f"{self.cell_id}: the gate reported no rule {self.rule_id!r} "
                              f"({decision.verdict}: {'; '.join(r.message for r in decision.rules)})")
        if rule.passed is True:
            return
        if rule.passed is False:
            raise GateFailure(rule.message)
        if quality.inconclusive == "fail":
            raise GateFailure(f"INCONCLUSIVE: {rule.message}")
        if quality.inconclusive == "skip":
            pytest.skip(f"INCONCLUSIVE: {rule.message}")
        pytest.xfail(f"INCONCLUSIVE: {rule.message}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, GateFailure):
            return f"{self.cell_id} :: {self.rule_id}\n{excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.cell_id}::{self.rule_id}"


# -- fixtures for custom tests --------------------------------------------------

@pytest.fixture(scope="session")
def qeval_suite(request: pytest.FixtureRequest) -> Any:
    """The suite named by --qeval-suite (first one), else the built-in smoke suite."""
    from qeval.suite import load_suite

    explicit = request.config.stash[quality_session_key].explicit_suites
    suite, _ = load_suite(explicit[0] if explicit else None)
    return suite


@pytest.fixture(scope="session")
def qeval_run(request: pytest.FixtureRequest, qeval_suite: Any) -> Any:
    """The suite run (a `qeval.store.RunStore`), run once per session and reused."""
    from qeval.store import RunStore
    from qeval.suite import resolve_suite_path

    quality = request.config.stash[quality_session_key]
    explicit = quality.explicit_suites
    path = (explicit[0] if explicit else resolve_suite_path(None)).resolve()
    if path not in quality.runs:
        quality.runs[path] = quality._run(qeval_suite, path, cells={c for c in _all_cells(qeval_suite)})
    run = quality.runs[path]
    if run.error:
        pytest.fail(f"the suite could not run: {run.error}", pytrace=False)
    return RunStore(run.run_dir)


@pytest.fixture(scope="session")
def qeval_gate(request: pytest.FixtureRequest, qeval_run: Any) -> dict[str, Any]:
    """The gate's decisions for the session's run: cell id -> Decision."""
    from qeval.report import gate_run

    return {f"{d.candidate}-{d.backend}": d for d in gate_run(qeval_run.root)}


def _all_cells(suite: Any) -> set[str]:
    from qeval.cells import plan

    return {c.id for c in plan(suite)}
