"""report.html in a real browser: headless Chromium renders it, with no console error, and the
decisions table in the DOM. A screenshot is kept under the test's tmp dir.

Needs the Debian package `chromium` (/usr/bin/chromium): `apt-get install -y chromium`. The
Makefile cannot apt-get, so where CI has no Chromium this test is skipped, saying so.
Set QEVAL_SCREENSHOT_TO=path to also copy the screenshot there (docs/report-screenshot.png).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from qeval.report import write_reports
from test_report_rundir import write_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium); "
                                                          "the Makefile cannot install it, so CI skips this check")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-extensions", "--disable-background-networking", "--disable-component-update"]


def chromium(args: list[str], home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home)}  # its profile and crash dumps go to the tmp dir
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={home / 'profile'}", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reports(write_run(tmp_path_factory.mktemp("browser"))).paths["html"]


def test_chromium_renders_the_report_without_console_errors(report: Path, tmp_path: Path) -> None:
    dom = chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", report.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # One decision per candidate on hf and vllm (6 x 2); the TensorRT-LLM cells are NOT RUN here, so they
    # have no verdict row and are listed under "Not run here" instead.
    assert 'id="decisions"' in dom.stdout and dom.stdout.count('data-verdict="') == 12
    assert 'id="not-run"' in dom.stdout and "fp8-trtllm" in dom.stdout
    assert 'id="signoff"' in dom.stdout and dom.stdout.count("<svg") == 5
    assert not console_messages(dom.stderr), console_messages(dom.stderr)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_the_console_check_sees_errors(tmp_path: Path) -> None:
    """Control: the same flags on a page with a script error do log it, so the check above can fail."""
    page = tmp_path / "bad.html"
    page.write_text('<html><body><script>console.error("boom"); missing_function();</script></body></html>')
    out = chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()], tmp_path)
    assert any("missing_function" in line for line in console_messages(out.stderr))


def test_chromium_screenshot(report: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "report-screenshot.png"
    out = chromium([f"--screenshot={shot}", "--window-size=1400,2000", report.as_uri()], tmp_path)
    assert out.returncode == 0 and shot.is_file(), out.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1400, 2000)
        # Not a blank page: the verdict colours of the summary boxes are on it.
        colors = {c for _, c in im.convert("RGB").getcolors(maxcolors=1 << 20)}
        assert (0xDA, 0xFB, 0xE1) in colors and (0xFF, 0xEB, 0xE9) in colors  # SHIP and BLOCK backgrounds
    target = os.environ.get("QEVAL_SCREENSHOT_TO")
    if target:
        shutil.copyfile(shot, target)


# The real run: the smoke suite on an H200 (benchmarks/gpu/RESULTS.md), checked in whole as runs.tgz.
GPU_RUNS = Path(__file__).resolve().parent.parent / "benchmarks/gpu/results/2026-12-02-h200/runs.tgz"


@pytest.fixture(scope="module")
def real_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tarfile

    root = tmp_path_factory.mktemp("gpu-run")
    with tarfile.open(GPU_RUNS) as tar:
        tar.extractall(root, filter="data")
    return write_reports(root / "gpu-smoke-20261202-035349").paths["html"]


def test_chromium_renders_a_real_run(real_report: Path, tmp_path: Path) -> None:
    """A report re-rendered from a real run's records (latency, KLD, an ERROR cell) opens cleanly."""
    dom = chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", real_report.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not console_messages(dom.stderr), console_messages(dom.stderr)
    assert 'id="decisions"' in dom.stdout and 'id="signoff"' in dom.stdout
    # One verdict per cell: 3 candidates x 2 backends.
    assert dom.stdout.count('data-verdict="') == 6
    assert "NVIDIA H200" in dom.stdout and "W8A8_SQ_PER_CHANNEL" in dom.stdout  # hardware; the ERROR cell's cause
    shot = tmp_path / "real-report.png"
    out = chromium([f"--screenshot={shot}", "--window-size=1400,2000", real_report.as_uri()], tmp_path)
    assert out.returncode == 0 and shot.stat().st_size > 10_000, out.stderr[-2000:]


def test_markup_in_model_output_stays_inert_in_the_browser(tmp_path: Path) -> None:
    """`<script>` and `"><img onerror=...>` in a task name, a crash cause and a model answer: no script
    runs. Had one run, its `alert` would hold headless Chromium on a dialog (seen: it never returns), and
    a parsed payload shows in the dumped DOM as `<img src="x" onerror=...>` (seen with an unescaped page)."""
    report = write_reports(write_run(tmp_path / "run", xss=True)).paths["html"]
    try:
        dom = chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", report.as_uri()], tmp_path, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("Chromium did not return: an alert() dialog from the payload is the likely cause")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not console_messages(dom.stderr), console_messages(dom.stderr)
    assert "<img src=\"x\"" not in dom.stdout and "<img src=x" not in dom.stdout
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom.stdout
