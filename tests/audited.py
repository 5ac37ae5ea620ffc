"""Run the qeval CLI under a Python audit hook that records every path the process writes.

    python tests/audited.py EVENTS.json run SUITE --reports-dir DIR

Python raises an audit event for every file opened for writing (open, os.open), every rename, mkdir, symlink,
link, truncate, chmod and removal, whichever library does it. Writes made from C or Rust without Python (an
Arrow cache, a safetensors file) raise none: tests/test_written_paths.py also walks the sandboxed home and temp
folders for those. The events are written to EVENTS.json when the CLI returns; the exit code is the CLI's.
"""

from __future__ import annotations

import json
import os
import sys

EVENTS: list[tuple[str, str]] = []
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_TARGET = {"os.rename": 1, "os.replace": 1, "os.symlink": 1, "os.link": 1, "shutil.copyfile": 1,
           "os.mkdir": 0, "os.truncate": 0, "os.chmod": 0, "os.remove": 0, "os.rmdir": 0}


def _hook(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
        if writing and isinstance(path, (str, bytes, os.PathLike)):
            EVENTS.append(("open", os.fsdecode(path)))
    elif event in _TARGET:
        target = args[_TARGET[event]]
        if isinstance(target, (str, bytes, os.PathLike)):
            path = os.fsdecode(target)
            # shutil.rmtree removes relative to a directory descriptor (dir_fd, the event's last argument).
            dir_fd = args[-1] if event in ("os.remove", "os.rmdir", "os.mkdir") else None
            if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):
                path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
            EVENTS.append((event, path))


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    sys.addaudithook(_hook)
    from qeval.cli import main as qeval_main

    try:
        rc = qeval_main(argv)
    finally:
        events = list(EVENTS)
        with open(out, "w", encoding="utf-8") as f:
            json.dump([[e, os.path.abspath(p)] for e, p in events], f)
    return rc


if __name__ == "__main__":
    sys.exit(main())
