"""Runs ON the device, after stage.sh: issue 22's GPU work in one resumable command.

    . benchmarks/gpu/env.sh && python3 -u benchmarks/gpu/run_all.py [--budget-s 540] [--steps speed,fidelity,quality]

Steps, in order (each one a child process under `timeout --signal=INT`, so a
step cut by the budget leaves its finished parts on disk):

1. speed     `qeval run suites/gpu/speed-8b.yaml`: the Llama-3.1-8B shape with
             synthetic weights, bf16 / fp8 / int4_awq (W4A16) / nvfp4 / int8_sq
             at c1, c16, c64, a GuideLLM sweep and goodput (qeval resumes it
             cell by cell: a finished cell is never measured again).
2. fidelity  benchmarks/gpu/run_fidelity.sh: qeval's probe vs `vllm bench
             serve` on one `vllm serve` (SmolLM2-135M) at c1, c4, c16.
3. quality   `qeval run suites/gpu/smoke.yaml` (KL on the vllm cells, int8_sq
             on vllm), resumed where it stopped.
4. fidelity8b only with `--steps ...,fidelity8b`: the fidelity benchmark on a
             `vllm serve --load-format dummy` of the Llama-3.1-8B shape, c16 and
             c64 (not run anywhere yet: an 8B dummy server does not fit this
             CPU machine).
5. int8ct     only with `--steps ...,int8ct`: benchmarks/bench_int8_ct.py --device cuda (issue 18 on the
             GPU: the compressed-tensors INT8 export on CUTLASS against the hf fake-quant of the same
             recipe, KL on 4,096 held-out tokens and scoring speed; ~2 min).
6. engines   only with `--steps ...,engines`: benchmarks/bench_engines.py --skip-consistency (issue 22:
             items/s of qeval's vLLM adapter against lm-eval's own `vllm` model on one task, same run).

State lives in /tmp/qeval-run-all (kept while the machine stays warm): a
done-marker per step (`<step>.done`), the seconds each step has used
(`state.json`), the run directories. Every call writes what it has into $OUT
as it goes (`run_all.log`, `steps.json`, `last_step.log`: the end of the last
step's log) and, at the end, `run_all.tgz` (the whole state folder: run
directories, fidelity results, every step's log; files over 4 MiB left out),
`speed_summary.md` and `jit_cache.tgz` (the kernel caches, when under 15 MiB: copy
it to /work/main/.stage/ and prepare.py bundles it, so the next session skips the
JIT). Six files at most: the device tool returns eight. A second call
on the warm machine continues with the first step not done. On a fresh machine,
carry the returned run_all.tgz as `.stage/resume/run_all.tgz`: it is unpacked
first and the runs resume from it (ModelOpt re-quantizes: the artifact cache
does not travel).

Each step has a cap on its total seconds over all calls (--caps); a step that
reaches it is marked `capped`, the next step starts, and the summary lists what
it left (with the command that finishes it). Standard library only: the device
image has no extra packages before stage.sh, and this must run even if qeval
breaks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
STATE = Path(os.environ.get("QEVAL_RUN_ALL_STATE", "/tmp/qeval-run-all"))
OUT = Path(os.environ.get("OUT") or "/tmp/qeval-gpu-out")
STEPS = ("speed", "fidelity", "quality", "fidelity8b", "int8ct", "engines")
DEFAULT_STEPS = ("speed", "fidelity", "quality")  # fidelity8b (c16/c64 on the 8B shape) only when asked
# Seconds per step over all calls: together about 21 min of GPU time (a fresh machine's first vLLM start
# spends ~2 min in kernel JIT; an 8B engine start with torch.compile and CUDA graphs ~1-2 min per precision,
# then ~45 s of probing: 5 cells ~ 10 min). The quality suite needs ~15 min from scratch (RESULTS.md: its cells
# took 800 s before KL on vllm was added): its cap gets what is left, and it resumes in a later session.
DEFAULT_CAPS = {"speed": 660, "fidelity": 300, "quality": 300, "fidelity8b": 300, "int8ct": 240, "engines": 300}
SUITES = {"speed": "suites/gpu/speed-8b.yaml", "quality": "suites/gpu/smoke.yaml"}
MIN_STEP_S = 45
JIT_DIRS = {"TRITON_CACHE_DIR": ".triton/cache", "VLLM_CACHE_ROOT": ".cache/vllm"}
TAR_FILE_LIMIT = 4 * 2**20  # a bigger file (an engine's reference distributions, a server log) stays out  # less than this left in the call: stop, the next call continues
# FP8 e4m3 `torch._scaled_mm` vs bf16 over the GEMMs of all 32 Llama-3.1-8B layers, measured on this H200
# (issue 22 and shared/ENVIRONMENT.md, 2026-12-02, torch 2.11): tokens per GEMM -> speed-up. The ceiling from bytes and FLOPs is 2.0x.
FP8_GEMM_RATIO = {1: 1.20, 16: 1.18, 64: 1.24, 256: 1.38, 1024: 1.72, 4096: 1.72}

t_call = time.time()


def log(msg: str) -> None:
    line = f"{time.strftime('%H:%M:%S', time.gmtime())} [{time.time() - t_call:6.0f}s] {msg}"
    print(line, flush=True)
    with open(OUT / "run_all.log", "a", encoding="utf-8") as f:
        f.write(line + "\n")


def load_state() -> dict:
    path = STATE / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"used_s": {}, "calls": 0, "history": []}


def save_state(state: dict) -> None:
    tmp = STATE / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    tmp.rename(STATE / "state.json")
    (OUT / "steps.json").write_text(json.dumps(state, indent=1))


def restore() -> None:
    """A fresh machine: continue from the state a previous machine returned (carried as .stage/resume)."""
    carried = REPO / ".stage" / "resume" / "run_all.tgz"
    if STATE.exists() or not carried.exists():
        return
    STATE.mkdir(parents=True)
    with tarfile.open(carried) as tf:
        tf.extractall(STATE, filter="data")
    log(f"restored the state of an earlier machine from {carried}")


def suite_name(path: str) -> str:
    for line in (REPO / path).read_text().splitlines():
        if line.startswith("name:"):
            return line.split(":", 1)[1].strip()
    raise SystemExit(f"{path} has no name")


def qeval_cmd(step: str) -> list[str]:
    """`qeval run SUITE`, or `--resume RUN_DIR` where this step's run directory exists already."""
    reports = STATE / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    runs = sorted(reports.glob(f"{suite_name(SUITES[step])}-[0-9]*"))
    if runs:
        return [sys.executable, "-m", "qeval.cli", "run", "--resume", str(runs[-1])]
    return [sys.executable, "-m", "qeval.cli", "run", SUITES[step], "--reports-dir", str(reports)]


def step_command(step: str, seconds: int) -> tuple[list[str], dict[str, str]]:
    env = jit_env(dict(os.environ))
    if step == "fidelity":
        fid_out = STATE / "fidelity-out"
        fid_out.mkdir(parents=True, exist_ok=True)
        env["OUT"] = str(fid_out)  # run_fidelity.sh writes under $OUT: keep it with the state, packed at the end
        # run_fidelity.sh has its own `timeout` at its first argument: a little under ours
        return ["bash", str(HERE / "run_fidelity.sh"), str(max(60, seconds - 30)), "1", "4", "16"], env
    if step == "fidelity8b":  # the same benchmark on a dummy-weight 8B-shape server, at c16 and c64
        out = STATE / "fidelity8b"
        out.mkdir(parents=True, exist_ok=True)
        return [sys.executable, "-u", str(REPO / "benchmarks" / "bench_latency_fidelity.py"), "--speed-shape",
                "llama-3.1-8b", "--out", str(out), "--input-len", "256", "--output-len", "64", "--num-prompts", "128",
                "--warmups", "4", "--concurrency", "16", "64", "--rounds", "2"], env
    if step == "int8ct":  # issue 18 on the GPU: CUTLASS INT8 from the export vs the hf fake-quant, KL and speed
        return [sys.executable, "-u", str(REPO / "benchmarks" / "bench_int8_ct.py"), "--device", "cuda",
                "--tokens", "4096", "--seqs", "64"], env
    if step == "engines":  # issue 22: items/s of qeval's vLLM adapter against lm-eval's own `vllm` model, same run
        return [sys.executable, "-u", str(REPO / "benchmarks" / "bench_engines.py"), "--skip-consistency",
                "--speed-limit", "1000"], env
    return qeval_cmd(step), env


def finished(step: str, rc: int) -> bool:
    """qeval's exit codes 0/1/3 all mean the run finished and its report is written; 2 is bad input."""
    if step.startswith("fidelity") or step in ("int8ct", "engines"):
        return rc == 0
    return rc in (0, 1, 3)


def run_step(step: str, seconds: int) -> int:
    cmd, env = step_command(step, seconds)
    log(f"{step}: {' '.join(cmd)} (at most {seconds} s)")
    with open(STATE / f"{step}.log", "a", encoding="utf-8") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {' '.join(cmd)}\n")
        out.flush()
        # SIGINT at the limit: qeval keeps what finished (resumable); SIGKILL 20 s later if it hangs
        proc = subprocess.run(["timeout", "--signal=INT", "--kill-after=20", str(seconds), *cmd], cwd=REPO, env=env,
                              stdout=out, stderr=subprocess.STDOUT)
    tail = (STATE / f"{step}.log").read_bytes()[-200_000:]  # the end of this step's log comes back as it is
    (OUT / "last_step.log").write_bytes(f"=== {step} (exit {proc.returncode})\n".encode() + tail)
    return proc.returncode


def device_info() -> None:
    """GPU, driver and versions, once per machine (importing vLLM costs ~15 s of GPU time)."""
    cached = STATE / "device.txt"
    if not cached.exists():
        lines = []
        for cmd in (["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                     "--format=csv,noheader"],
                    [sys.executable, "-c", "import sys, torch, vllm, transformers; print('python', "
                     "sys.version.split()[0], '| torch', torch.__version__, '| vllm', vllm.__version__, "
                     "'| transformers', transformers.__version__)"]):
            try:
                lines.append(subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout.strip())
            except (OSError, subprocess.TimeoutExpired) as exc:
                lines.append(f"{cmd[0]}: {exc}")
        cached.write_text("\n".join(lines) + "\n")
    log("device: " + " || ".join(cached.read_text().splitlines()))


def jit_env(env: dict[str, str]) -> dict[str, str]:
    """Kernel caches where stage.sh restores an earlier run's jit_cache.tgz ($HOME), not qeval's per-cache
    default: a later session then skips the JIT and compilation this one paid for (see save_jit)."""
    home = Path.home()
    for var, path in JIT_DIRS.items():
        env.setdefault(var, str(home / path))
    return env


def save_jit() -> None:
    """$OUT/jit_cache.tgz of the kernel caches, if small enough to come back (copy it to .stage/ for prepare.py)."""
    home = Path.home()
    dirs = [home / p for p in JIT_DIRS.values()] + [home / ".cache" / "flashinfer"]
    dirs = [d for d in dirs if d.is_dir()]
    size = sum(f.stat().st_size for d in dirs for f in d.rglob("*") if f.is_file())
    if not dirs or size > 40 * 2**20:
        log(f"kernel caches: {size / 2**20:.0f} MiB in {len(dirs)} folders: not returned (limit 40 MiB raw)")
        return
    with tarfile.open(OUT / "jit_cache.tgz", "w:gz") as tf:
        for d in dirs:
            tf.add(d, arcname=str(d.relative_to(home)))
    got = (OUT / "jit_cache.tgz").stat().st_size
    if got > 15 * 2**20:
        (OUT / "jit_cache.tgz").unlink()
        log(f"kernel caches: {got / 2**20:.1f} MiB compressed: too big to come back, left out")
    else:
        log(f"kernel caches -> {OUT / 'jit_cache.tgz'} ({got / 2**20:.1f} MiB): copy to /work/main/.stage/ for prepare.py")


def pack(limit: int = TAR_FILE_LIMIT) -> None:
    """The state folder into $OUT/run_all.tgz, files over `limit` left out (and listed); under 16 MiB (the most
    one returned file may have), else packed again with a smaller limit."""
    skipped: list[str] = []

    def small(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if "/reference/" in f"/{info.name}/" or info.size > limit:
            skipped.append(f"{info.name} ({info.size / 2**20:.1f} MiB)")
            return None
        return info

    with tarfile.open(OUT / "run_all.tgz", "w:gz") as tf:
        tf.add(STATE, arcname=".", filter=small)
    log(f"packed {STATE} -> {OUT / 'run_all.tgz'} ({(OUT / 'run_all.tgz').stat().st_size / 2**20:.1f} MiB)"
        + (f"; left out: {', '.join(skipped[:8])}" if skipped else ""))
    if (OUT / "run_all.tgz").stat().st_size > 15 * 2**20 and limit > 2**18:
        pack(limit // 4)


def _fmt(x: object, nd: int = 2) -> str:
    return "—" if not isinstance(x, (int, float)) else f"{x:.{nd}f}"


def gemm_ratio(batch: int) -> str:
    near = min(FP8_GEMM_RATIO, key=lambda k: abs(k - batch))
    return f"{FP8_GEMM_RATIO[near]:.2f}x (at {near} tok)"


def speed_summary() -> None:
    """The 8B-shape tables for RESULTS.md, from the speed run's results.json (whatever cells finished)."""
    runs = sorted((STATE / "reports").glob(f"{suite_name(SUITES['speed'])}-[0-9]*"))
    if not runs or not (runs[-1] / "results.json").exists():
        return
    res = json.loads((runs[-1] / "results.json").read_text())
    out = [f"# 8B-shape speed ({runs[-1].name}; synthetic weights, speed only)", "",
           "| cell | load | out tok/s | req/s | TTFT p50 ms [CI] | TTFT p99 ms | TPOT p50 ms [CI] | TPOT p99 ms "
           "| goodput req/s [CI] |", "|---|---|---|---|---|---|---|---|---|"]
    for cell in res["cells"]:
        if cell["state"] != "ok":
            out.append(f"| {cell['id']} | {cell['state']}: {(cell.get('cause') or '')[:120]} |||||||")
            continue
        for p in (cell.get("latency") or {}).get("loads", []):
            s = p.get("summary", {})
            t50, t99 = s.get("ttft", {}).get("p50", {}), s.get("ttft", {}).get("p99", {})
            o50, o99 = s.get("tpot", {}).get("p50", {}), s.get("tpot", {}).get("p99", {})
            g = p.get("goodput") or {}
            ci = lambda e: f"{_fmt(e.get('value_ms'))} [{_fmt((e.get('ci_ms') or [None])[0])}, {_fmt((e.get('ci_ms') or [None, None])[1])}]"
            gci = g.get("goodput_rps_ci") or [None, None]
            out.append(f"| {cell['id']} | {p['load']} | {_fmt(p.get('output_tokens_per_s'), 0)} | "
                       f"{_fmt(p.get('requests_per_s'))} | {ci(t50)} | {_fmt(t99.get('value_ms'))} | {ci(o50)} | "
                       f"{_fmt(o99.get('value_ms'))} | {_fmt(g.get('goodput_rps'))} [{_fmt(gci[0])}, {_fmt(gci[1])}] |")
    out += ["", "## Speed-ups over bf16 (ratio of medians, bootstrap 95% CI; goodput: ratio of goodputs)", "",
            "| candidate | load | metric | speed-up [CI] | FP8 GEMM ratio at that batch (issue 22) |", "|---|---|---|---|---|"]
    for d in res["decisions"]:
        for sp in (d.get("latency") or {}).get("speedups", []):
            batch = sp.get("concurrency") or 0
            ref = gemm_ratio(batch) if d["candidate"].startswith("fp8") and batch else ""
            out.append(f"| {d['candidate']} | {sp['load']} | {sp['metric']} | {_fmt(sp['estimate'])} "
                       f"[{_fmt(sp['ci'][0])}, {_fmt(sp['ci'][1])}] | {ref} |")
    (OUT / "speed_summary.md").write_text("\n".join(out) + "\n")
    log(f"wrote {OUT / 'speed_summary.md'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=int, default=540, help="seconds for this call (the device tool stops at 600)")
    ap.add_argument("--steps", default=",".join(DEFAULT_STEPS),
                    help=f"which steps, in order (default %(default)s; also: fidelity8b)")
    ap.add_argument("--speed-suite", default=SUITES["speed"], help="the speed step's suite (default %(default)s)")
    ap.add_argument("--quality-suite", default=SUITES["quality"], help="the quality step's suite (default %(default)s)")
    ap.add_argument("--caps", default=",".join(f"{k}:{v}" for k, v in DEFAULT_CAPS.items()),
                    help="step:seconds caps over all calls (default %(default)s)")
    args = ap.parse_args()
    SUITES.update(speed=args.speed_suite, quality=args.quality_suite)
    OUT.mkdir(parents=True, exist_ok=True)
    restore()
    STATE.mkdir(parents=True, exist_ok=True)
    caps = {**DEFAULT_CAPS, **{k: int(v) for k, v in (x.split(":") for x in args.caps.split(",") if x)}}
    steps = [s for s in args.steps.split(",") if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        print(f"run_all: unknown step(s) {unknown}; use {','.join(STEPS)}", file=sys.stderr)
        return 2
    state = load_state()
    state["calls"] += 1
    save_state(state)
    log(f"call {state['calls']}: budget {args.budget_s} s, steps {steps}, caps {caps}, state {STATE}")
    device_info()
    deadline = t_call + args.budget_s
    try:
        for step in steps:
            marker = STATE / f"{step}.done"
            if marker.exists():
                log(f"{step}: done already ({marker.read_text().strip()})")
                continue
            used = state["used_s"].get(step, 0.0)
            left_cap = caps[step] - used
            left_call = deadline - time.time()
            if left_cap < MIN_STEP_S:
                marker.write_text(f"capped after {used:.0f} s (cap {caps[step]} s)\n")
                log(f"{step}: capped ({used:.0f} of {caps[step]} s used); moving on")
                continue
            if left_call < MIN_STEP_S:
                log(f"{step}: {left_call:.0f} s left in this call: call again to continue")
                break
            seconds = int(min(left_cap, left_call - 25))  # room for timeout's --kill-after 20 and the packing
            t0 = time.time()
            rc = run_step(step, seconds)
            spent = time.time() - t0
            state["used_s"][step] = used + spent
            state["history"].append({"call": state["calls"], "step": step, "rc": rc, "seconds": round(spent, 1)})
            save_state(state)
            if finished(step, rc):
                marker.write_text(f"finished, exit {rc}, {used + spent:.0f} s in all\n")
                log(f"{step}: finished (exit {rc}, {spent:.0f} s; {used + spent:.0f} s in all)")
            elif rc == 2:
                marker.write_text(f"bad input, exit 2 (see {step}.log)\n")
                log(f"{step}: bad input (exit 2): see last_step.log ({STATE / (step + '.log')}); moving on")
            else:
                log(f"{step}: stopped (exit {rc}) after {spent:.0f} s; {used + spent:.0f} of {caps[step]} s used: "
                    "the next call resumes it")
                if time.time() > deadline - MIN_STEP_S:
                    break
    finally:
        try:
            speed_summary()
        except Exception as exc:  # noqa: BLE001 - a summary problem must not lose the packed results
            log(f"speed summary failed: {type(exc).__name__}: {exc}")
        pack()
        save_jit()
    todo = [s for s in steps if not (STATE / f"{s}.done").exists()]
    log("all steps done" if not todo else f"not done yet: {', '.join(todo)} (call again)")
    return 0 if not todo else 3


if __name__ == "__main__":
    sys.exit(main())
