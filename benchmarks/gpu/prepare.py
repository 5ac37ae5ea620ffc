"""Build what the GPU validation run carries to the device, here on the CPU machine.

usage (system python3 with `packaging`):
    [QEVAL_DEVICE_REPO=/work/main] python3 benchmarks/gpu/prepare.py [--chunk-mib 56] [--no-model] [--no-tasks]
QEVAL_DEVICE_REPO: the checkout the device tool sends (default: the one holding
this file); .stage/ is written there (git-ignored) and its .venv runs qeval.

Steps (each reuses what an earlier run left in .stage/, git-ignored):
  1. wheels: the dependency closure of requirements-device.txt for CPython 3.12
     manylinux x86-64, minus the device image's packages (device_present.txt),
     downloaded into .stage/wheels/ (a cache: several versions may lie there;
     only the chosen one is bundled).
  2. trim: leave out what a text LLM never imports (TRIM below), and the
     wheels that only trimmed packages need.
  3. assets: the dequantized SmolLM2-135M-Instruct HF folder
     (qeval.assets.model.ensure_model, run with the repo's .venv python;
     /tmp/scratch/hf as a fallback) and the converted BIG-bench task pack
     (qeval.assets.bigbench.ensure_task_pack, only if already in the qeval
     cache: never downloads the 358 MB sdist for this).
  4. scripts: stage.sh, env.sh, check_device.py copied to .stage/gpu/ (carried
     with every chunk: the device tool sends only the session's checkout).
  5. bundle: .stage/bundle/ (wheels/, qeval-cache/, bundle.json) -> one tar,
     model and task files xz-compressed first (see ASSET_XZ), split into
     chunks of at most --chunk-mib MiB: .stage/chunks/NN/part + a copy of
     manifest.json (sha256 of every chunk) in every chunk folder, so that each
     call carries exactly one folder: carry=[".stage/chunks/NN"].

The wheel closure is a tidy reimplementation of /work/shared/tools/device_wheels.py
(same platform tags, same "skip what the image has" rule) with three changes:
the lines of requirements-device.txt are constraints on the whole closure (a
pin wins wherever the package appears, so xgrammar==0.2.3 sticks); extras
asked for later are followed too; every specifier met on the way is checked
against the chosen version (CONFLICT lines), and the specifiers that fall on
the image's packages are written to .stage/bundle/bundle.json for the device
side (check_device.py compares them with the installed versions).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name as cn
from packaging.version import Version

HERE = Path(__file__).resolve().parent
# The checkout the device tool sends (the session's own, also when this file is
# run from a worktree): .stage/ lies there, and its .venv runs qeval's asset code.
REPO = Path(os.environ.get("QEVAL_DEVICE_REPO", HERE.parent.parent)).resolve()
STAGE = REPO / ".stage"
WHEELS = STAGE / "wheels"
BUNDLE = STAGE / "bundle"
CHUNKS = STAGE / "chunks"

# The device: CPython 3.12.3, glibc manylinux, x86-64.
ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix", "platform_release": "",
       "platform_version": "", "implementation_version": "3.12.3", "extra": ""}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_24_x86_64", "manylinux_2_35_x86_64",
             "manylinux1_x86_64", "manylinux_2_5_x86_64"]

# What a text LLM on vLLM/ModelOpt/lm-eval never imports (ENVIRONMENT.md, measured
# 2026-11-22: vLLM served SmolLM2 on the H100 without them). Video/audio decoding,
# CUTLASS-DSL cu12 libs (the image is CUDA 13), TileLang and its solver, a second
# nvcc/nvvm toolchain (the image has CUDA 13.0's).
TRIM = {cn(x) for x in ["nvidia-cutlass-dsl-libs-cu12", "pynvvideocodec", "tokenspeed-triton", "z3-solver",
                        "torchcodec", "nvidia-nvvm", "nvidia-cuda-nvcc", "tilelang", "nvidia-cuda-nvdisasm"]}

# Asset files worth compressing: bf16 weights of a Q4_1-dequantized model carry
# about 5 bits per value (xz: -34%); task JSONL compresses about 10x. Wheels are
# zip-deflated already: they go into the tar as they are.
ASSET_XZ = (".safetensors", ".jsonl", ".json")


def log(*a: object) -> None:
    print(*a, flush=True)


def wheel_name_version(path: Path) -> tuple[str, Version]:
    parts = path.name.split("-")
    return cn(parts[0]), Version(parts[1])


def wheel_requires(path: Path) -> list[Requirement]:
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        text = zf.read(meta).decode("utf-8", "replace")
    return [Requirement(line.split(":", 1)[1].strip()) for line in text.splitlines()
            if line.startswith("Requires-Dist:")]


def marker_ok(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**ENV, "extra": e}) for e in [""] + sorted(extras))


def cached_wheel(name: str, spec: SpecifierSet) -> Path | None:
    best = None
    for w in WHEELS.glob("*.whl"):
        n, v = wheel_name_version(w)
        if n == name and spec.contains(v, prereleases=True) and (best is None or v > wheel_name_version(best)[1]):
            best = w
    return best


def download(name: str, spec: SpecifierSet) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none"]
    for p in PLATFORMS + ["any"]:
        cmd += ["--platform", p]
    proc = subprocess.run(cmd + ["-d", str(WHEELS), f"{name}{spec}"], capture_output=True, text=True)
    if proc.returncode and "No matching distribution" in proc.stderr:
        # sdist-only on PyPI (lm-eval's sqlitedict, word2number): build the wheel
        # here; accepted only if it is pure Python (py3-none-any runs on 3.12).
        build = STAGE / "sdist-build"
        shutil.rmtree(build, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(build),
                               f"{name}{spec}"], capture_output=True, text=True)
        built = list(build.glob("*.whl"))
        if proc.returncode == 0 and len(built) == 1 and built[0].name.endswith("-none-any.whl"):
            shutil.move(str(built[0]), WHEELS / built[0].name)
            log(f"  built {built[0].name} from its sdist (pure Python)")
    if proc.returncode:
        raise RuntimeError(f"pip download {name}{spec}: {proc.stderr.strip().splitlines()[-1][:300]}")
    got = cached_wheel(name, spec)
    if got is None:
        raise RuntimeError(f"pip download {name}{spec} left no matching wheel in {WHEELS}")
    return got


def walk(top: list[Requirement], pins: dict[str, SpecifierSet], present: set[str]) -> dict:
    """One breadth-first walk; the first wheel that fits `pins` (else the first specifier met) is taken."""
    queue: collections.deque[tuple[Requirement, str]] = collections.deque((r, "requirements-device.txt") for r in top)
    chosen: dict[str, Path] = {}
    extras_done: dict[str, set[str]] = collections.defaultdict(set)
    specs: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)   # name -> [(specifier, needed by)]
    needed_by: dict[str, set[str]] = collections.defaultdict(set)
    failed: dict[str, str] = {}
    while queue:
        req, parent = queue.popleft()
        n = cn(req.name)
        specs[n].append((str(req.specifier), parent))
        needed_by[n].add(parent)
        if n in present or n in failed:
            continue
        new_extras = set(req.extras) - extras_done[n]
        if n in chosen and not new_extras:
            continue
        if n not in chosen:
            spec = pins[n] if n in pins else req.specifier
            try:
                chosen[n] = cached_wheel(n, spec) or download(n, spec)
            except Exception as exc:  # noqa: BLE001 - reported, the closure goes on
                failed[n] = str(exc)
                log("FAIL", n, exc)
                continue
            scan = {""} | set(req.extras)
        else:
            scan = new_extras
        extras_done[n] |= set(req.extras)
        for dep in wheel_requires(chosen[n]):
            if dep.marker is None:
                if "" in scan:
                    queue.append((dep, n))
            elif any(dep.marker.evaluate({**ENV, "extra": e}) for e in scan):
                queue.append((dep, n))
    conflicts = []
    for n, path in chosen.items():
        v = wheel_name_version(path)[1]
        for s, parent in specs[n]:
            if s and not SpecifierSet(s).contains(v, prereleases=True):
                conflicts.append((n, v, parent, s))
    return {"chosen": chosen, "specs": specs, "needed_by": needed_by, "failed": failed, "conflicts": conflicts}


def closure(req_file: Path, present: set[str], rounds: int = 20) -> dict:
    """Walk, then settle conflicts and walk again (a small backtracking resolver).

    A conflict on X: if the specifiers met for X intersect, X is pinned to the
    intersection. If they do not, the strictest side wins (a line of
    requirements-device.txt, else an exact `==` pin such as vLLM's) and each
    package asking otherwise is held below its chosen version, so the next walk
    takes an older release of it (e.g. quack-kernels, nvidia-cudnn-frontend
    releases that accept vLLM's nvidia-cutlass-dsl==4.6.0).
    """
    lines = [ln.split("#", 1)[0].strip() for ln in req_file.read_text().splitlines()]
    top = [Requirement(ln) for ln in lines if ln]
    user = {cn(r.name): r.specifier for r in top}
    pins = dict(user)
    settled: list[str] = []
    for _ in range(rounds):
        res = walk(top, pins, present)
        if not res["conflicts"] or res["failed"]:
            res["settled"] = settled
            return res
        for n in sorted({c[0] for c in res["conflicts"]}):
            seen = [(SpecifierSet(s), parent) for s, parent in res["specs"][n] if s]
            together = SpecifierSet(",".join(str(s) for s, _ in seen))
            if n not in user and (any(together.contains(wheel_name_version(w)[1], prereleases=True)
                                      for w in WHEELS.glob("*.whl") if wheel_name_version(w)[0] == n)
                                  or _index_has(n, together)):
                pins[n] = together
                settled.append(f"{n}: pinned to {together} (all its specifiers)")
                continue
            strict = user.get(n) or next((s for s, _ in seen if any(x.operator in ("==", "===") for x in s)), None)
            if strict is None or not _index_has(n, strict):
                res["settled"] = settled
                return res          # nothing to decide on: reported as CONFLICT
            pins[n] = strict
            ok = [wheel_name_version(w)[1] for w in WHEELS.glob("*.whl")
                  if wheel_name_version(w)[0] == n and strict.contains(wheel_name_version(w)[1], prereleases=True)]
            for s, parent in seen:
                if parent in res["chosen"] and not any(s.contains(v, prereleases=True) for v in ok):
                    pv = wheel_name_version(res["chosen"][parent])[1]
                    pins[parent] = (pins.get(parent) or SpecifierSet()) & SpecifierSet(f"<{pv}")
                    settled.append(f"{parent}: below {pv} ({parent}=={pv} asks {n}{s}, but {n}{strict} holds)")
    res["settled"] = settled
    return res


def _index_has(name: str, spec: SpecifierSet) -> bool:
    """Whether the index has a wheel of name within spec (downloads it to the cache)."""
    try:
        download(name, spec)
        return True
    except RuntimeError:
        return False


def trim(result: dict) -> tuple[dict[str, Path], list[str]]:
    """Drop TRIM and what only trimmed packages need (transitively)."""
    chosen, needed_by = dict(result["chosen"]), result["needed_by"]
    dropped = [n for n in chosen if n in TRIM]
    for n in dropped:
        del chosen[n]
    changed = True
    while changed:
        changed = False
        for n in list(chosen):
            parents = needed_by[n]
            if parents and all(p != "requirements-device.txt" and p not in chosen for p in parents):
                del chosen[n]
                dropped.append(n)
                changed = True
    return chosen, dropped


def venv_python() -> Path | None:
    p = REPO / ".venv" / "bin" / "python"
    return p if p.exists() else None


def qeval_asset(expr: str) -> Path | None:
    """Run a qeval asset function with the repo's .venv python; its path, or None."""
    py = venv_python()
    if py is None:
        return None
    proc = subprocess.run([str(py), "-c", f"import qeval.assets.{expr.split('.')[0]} as m; print(m.{expr.split('.', 1)[1]})"],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        log("  qeval asset", expr, "failed:", (proc.stderr.strip().splitlines() or ["?"])[-1][:300])
        return None
    return Path(proc.stdout.strip().splitlines()[-1])


def find_task_pack() -> Path | None:
    """The converted BIG-bench pack if it is in the qeval cache already (never built here)."""
    py = venv_python()
    if py is None:
        return None
    code = ("from qeval.assets import bigbench as b; p = b.pack_dir(); "
            "print(p if (p / b.DONE).exists() else '')")
    proc = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=REPO)
    out = proc.stdout.strip()
    return Path(out) if proc.returncode == 0 and out else None


def suite_task_names(suites: list[Path]) -> set[str]:
    """Task names the device suites evaluate (the pack is 1.5 GB; these few tasks are what travels)."""
    import yaml  # the repo's .venv has it; the system python3 often too

    names: set[str] = set()
    for path in suites:
        suite = yaml.safe_load(path.read_text()) or {}
        for task in suite.get("tasks") or []:
            names.add(task["name"] if isinstance(task, dict) else str(task))
        # the calibration set reads BIG-bench tasks of its own (qeval/calibration_sets/NAME.yaml)
        calib = REPO / "qeval" / "calibration_sets" / f"{suite.get('calibration') or ''}.yaml"
        if suite.get("calibration") and calib.is_file():
            source = (yaml.safe_load(calib.read_text()) or {}).get("source") or {}
            if source.get("kind") == "bigbench":
                names.update(source.get("tasks") or [])
    return names


def copy_pack_subset(pack: Path, dst: Path, names: set[str]) -> list[str]:
    """Copy only `names` (a parent task brings its subtasks) with an index that lists just them."""
    index = json.loads((pack / "pack.json").read_text())
    tasks = index["tasks"]
    missing = sorted(n for n in names if n not in tasks)
    if missing:
        sys.exit(f"device suites name tasks the pack {pack} lacks: {', '.join(missing)}")
    keep: dict[str, dict] = {}
    for name in sorted(names):
        keep[name] = tasks[name]
        parent_folder = tasks[name]["folder"]
        for sub in tasks[name].get("subtasks") or []:
            for other, rec in tasks.items():
                if rec["folder"] == f"{parent_folder}/{sub}":
                    keep[other] = rec
    folders = {rec["folder"] for rec in keep.values()}
    for folder in sorted(folders):
        src = pack / folder
        for f in sorted(src.iterdir()):  # the task's own files; subtask folders come by their own name
            if f.is_file():
                out = dst / folder / f.name
                out.parent.mkdir(parents=True, exist_ok=True)
                if f.suffix in ASSET_XZ and f.stat().st_size > 64 * 1024:
                    xz_cached(f, Path(str(out) + ".xz"))
                else:
                    shutil.copy2(f, out)
    subset = dict(index, tasks=keep, subset_of={"tasks": len(tasks), "why": "only the tasks suites/gpu/*.yaml name"})
    (dst / "pack.json").write_text(json.dumps(subset, indent=1))
    return sorted(keep)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def xz_cached(src: Path, dst: Path) -> None:
    """dst = xz of src; kept in .stage/xz-cache by content hash (xz -6 of 260 MB: ~4 min on 2 cores)."""
    cache = STAGE / "xz-cache"
    cache.mkdir(parents=True, exist_ok=True)
    hit = cache / f"{sha256(src)}.xz"
    if not hit.exists():
        tmp = hit.with_suffix(".tmp")
        if shutil.which("xz"):
            with open(tmp, "wb") as fo:
                subprocess.run(["xz", "-6", "-T2", "-c", str(src)], stdout=fo, check=True)
        else:
            with open(src, "rb") as fi, lzma.open(tmp, "wb", preset=6) as fo:
                shutil.copyfileobj(fi, fo, 1 << 20)
        tmp.rename(hit)
    os.link(hit, dst)


def copy_asset(src: Path, dst: Path) -> None:
    """Copy a folder; files named in ASSET_XZ go in as NAME.xz (stage.sh undoes it)."""
    for f in sorted(src.rglob("*")):
        if f.is_dir() or f.name.endswith(".lock"):
            continue
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        if f.suffix in ASSET_XZ and f.stat().st_size > 64 * 1024:
            xz_cached(f, Path(str(out) + ".xz"))
        else:
            shutil.copy2(f, out)


def copy_scripts() -> None:
    """The device tool sends only the session's checkout: the scripts travel in .stage/gpu (carried)."""
    dst = STAGE / "gpu"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for name in ["stage.sh", "env.sh", "check_device.py"]:
        shutil.copy2(HERE / name, dst / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requirements", default=str(HERE / "requirements-device.txt"))
    ap.add_argument("--chunk-mib", type=float, default=56.0)  # + the checkout (~6 MiB with results/) stays under the tool's 64 MiB
    ap.add_argument("--no-model", action="store_true")
    ap.add_argument("--no-tasks", action="store_true")
    ap.add_argument("--scripts-only", action="store_true", help="only refresh .stage/gpu (the scripts that travel)")
    args = ap.parse_args()
    if args.scripts_only:
        copy_scripts()
        log(f"scripts copied to {STAGE / 'gpu'}")
        return
    t0 = time.time()
    WHEELS.mkdir(parents=True, exist_ok=True)
    present = {cn(x) for x in (HERE / "device_present.txt").read_text().split()}

    log("== 1. wheel closure of", args.requirements)
    res = closure(Path(args.requirements), present)
    for line in res["settled"]:
        log("  settled", line)
    for n, v, parent, spec in res["conflicts"]:
        log(f"CONFLICT {n}=={v} chosen, but {parent} asks {n}{spec}")
    if res["failed"]:
        sys.exit(f"could not get: {', '.join(res['failed'])}")
    chosen, dropped = trim(res)
    full = sum(p.stat().st_size for p in res["chosen"].values())
    kept = sum(p.stat().st_size for p in chosen.values())
    log(f"  closure {len(res['chosen'])} wheels {full / 2**20:.0f} MiB; trimmed {len(dropped)} "
        f"({', '.join(sorted(dropped))}); kept {len(chosen)} wheels {kept / 2**20:.0f} MiB")
    from_image = {n: sorted({s for s, _ in res["specs"][n] if s}) for n in sorted(present & set(res["specs"]))}

    log("== 2. bundle")
    if BUNDLE.exists():
        shutil.rmtree(BUNDLE)
    (BUNDLE / "wheels").mkdir(parents=True)
    for p in chosen.values():
        os.link(p, BUNDLE / "wheels" / p.name)
    assets: dict[str, object] = {}
    if not args.no_model:
        model = qeval_asset("model.ensure_model()")
        source = "qeval.assets.model.ensure_model"
        if model is None:
            model, source = Path("/tmp/scratch/hf"), "copy of /tmp/scratch/hf"
        name = model.name if model.name != "hf" else "smollm2-135m-instruct"
        log("  model", model, f"({source})")
        copy_asset(model, BUNDLE / "qeval-cache" / "models" / name)
        info = model / "qeval_asset.json"
        assets["model"] = {"name": name, "source": source, "path_here": str(model),
                           "asset": json.loads(info.read_text()) if info.exists() else None}
    if not args.no_tasks:
        pack = find_task_pack()
        if pack is None:
            log("  task pack: not in the qeval cache (run `qeval fetch` first); not bundled")
        else:
            names = suite_task_names(sorted((REPO / "suites" / "gpu").glob("*.yaml")))
            kept = copy_pack_subset(pack, BUNDLE / "qeval-cache" / "tasks" / pack.name, names)
            log(f"  task pack {pack}: {len(kept)} tasks of suites/gpu/*.yaml ({', '.join(kept)})")
            assets["tasks"] = {"name": pack.name, "path_here": str(pack), "tasks": kept,
                               "yaml_data_prefix_here": str(pack)}
    for name in ["torch_ext.tgz", "jit_cache.tgz"]:
        # ModelOpt's nvcc-built CUDA extensions and the Triton/FlashInfer/vLLM JIT
        # caches that an earlier device run returned (check_device.py): copy them
        # from the device's files into .stage/ and stage.sh restores them.
        cached = STAGE / name
        if cached.exists():
            shutil.copy2(cached, BUNDLE / name)
            assets[name] = {"bytes": cached.stat().st_size}
            log(f"  {name} from an earlier device run ({cached.stat().st_size / 2**20:.1f} MiB)")
    bundle_info = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "wheels": sorted(p.name for p in chosen.values()),
                   "trimmed": sorted(dropped), "settled": res["settled"],
                   "conflicts": [f"{n}=={v}: {p} asks {n}{s}" for n, v, p, s in res["conflicts"]],
                   "requirements_on_image_packages": from_image, "assets": assets}
    (BUNDLE / "bundle.json").write_text(json.dumps(bundle_info, indent=1))

    copy_scripts()
    log("== 3. tar + chunks")
    if CHUNKS.exists():
        shutil.rmtree(CHUNKS)
    CHUNKS.mkdir(parents=True)
    tar_path = STAGE / "bundle.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(BUNDLE, arcname="bundle")
    size = tar_path.stat().st_size
    limit = int(args.chunk_mib * 2**20)
    n_chunks = -(-size // limit)
    parts = []
    with open(tar_path, "rb") as f:
        for i in range(n_chunks):
            d = CHUNKS / f"{i:02d}"
            d.mkdir()
            data = f.read(limit)
            (d / "part").write_bytes(data)
            parts.append({"index": i, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"bundle_id": sha256(tar_path)[:16], "tar_bytes": size, "chunks": parts, "n_chunks": n_chunks,
                "created": bundle_info["created"]}
    for i in range(n_chunks):
        (CHUNKS / f"{i:02d}" / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (CHUNKS / "manifest.json").write_text(json.dumps(manifest, indent=1))
    tar_path.unlink()
    log(f"  tar {size / 2**20:.1f} MiB -> {n_chunks} chunks of <= {args.chunk_mib:g} MiB under {CHUNKS}")
    log(f"  bundle_id {manifest['bundle_id']}; scripts in {STAGE / 'gpu'}; {time.time() - t0:.0f} s")
    log("  device calls, back to back: carry=['.stage/gpu', '.stage/chunks/NN'], command "
        "'bash .stage/gpu/stage.sh .stage/chunks/NN' (README.md)")


if __name__ == "__main__":
    main()
