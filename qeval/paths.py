"""Where qeval writes: its cache ($QEVAL_CACHE, else the user cache dir), run directories, and the rule that no
value from an input file chooses where a file goes.

Values that become part of a file name (a suite name, a task name, a precision, a cell id, an artifact key) are
checked against one safe pattern: ASCII letters and digits first, then letters, digits, `_`, `.`, `-`, at most
128 characters. That excludes every path separator, `..` as a name, absolute paths, NUL and control characters,
and Unicode look-alikes (a fullwidth solidus or a Cyrillic letter reads like ASCII but is not). Every path built
for writing is then checked to stay under its root (`under`), so a name that slipped through, or a symlink
planted inside a run directory, is refused rather than followed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import platformdirs

from qeval.errors import QevalError

MAX_NAME = 128
# ASCII only, by construction: [A-Za-z0-9] is not \w (which would admit Unicode letters and digits).
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
SAFE_NAME_RULE = (f"letters, digits, '_', '.' and '-' (ASCII), starting with a letter or digit, at most "
                  f"{MAX_NAME} characters")


def name_problem(value: object, max_len: int = MAX_NAME) -> str | None:
    """Why `value` cannot be used as a file or directory name, or None when it can."""
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if not value:
        return "it is empty"
    if len(value) > max_len:
        return f"it is {len(value)} characters long (at most {max_len})"
    if _SAFE_NAME.fullmatch(value) is None:
        bad = next((c for c in value if not (c.isascii() and (c.isalnum() or c in "_.-"))), None)
        if bad is not None:
            return f"it contains {_describe(bad)}"
        return "it must start with a letter or a digit"
    return None


def _describe(char: str) -> str:
    if char in "/\\":
        return f"a path separator ({char!r})"
    if char == "\0":
        return "a NUL byte"
    if not char.isprintable():
        return f"a control character ({char!r})"
    if not char.isascii():
        return f"the non-ASCII character {char!r} (U+{ord(char):04X}), which may look like an ASCII one"
    return f"the character {char!r}"


def check_name(value: object, *, what: str, file: str | None = None, field: str | None = None,
               max_len: int = MAX_NAME) -> str:
    """Return `value` if it is a safe file name, else raise a QevalError naming the file, field and fix.

    Args:
        what: what the value names, for the message ("suite name", "task name", "cell id").
    """
    problem = name_problem(value, max_len)
    if problem is not None:
        raise QevalError(f"{what} {value!r} cannot be used in a file name: {problem}", file=file, field=field,
                         fix=f"use {SAFE_NAME_RULE}")
    return value  # type: ignore[return-value]


def under(root: Path, path: Path, *, what: str = "file") -> Path:
    """`path`, after checking that it resolves inside `root` (symlinks followed): never outside it.

    Raises:
        QevalError: the path would leave its root (a hostile name, or a symlink that points elsewhere).
    """
    if "\0" in str(path):
        raise QevalError(f"refusing to write the {what} {str(path)!r}: the path contains a NUL byte",
                         fix="report this: a name that reached a path was not validated")
    resolved_root = Path(root).resolve()
    resolved = Path(path).resolve()
    if resolved != resolved_root and not resolved.is_relative_to(resolved_root):
        raise QevalError(f"refusing to write the {what} {path}: it resolves to {resolved}, outside "
                         f"{resolved_root}", file=str(path),
                         fix="remove any symlink inside the directory that points elsewhere; names that become "
                             "paths must not contain separators or '..'")
    return path


def cache_dir() -> Path:
    root = os.environ.get("QEVAL_CACHE")
    path = Path(root).expanduser() if root else Path(platformdirs.user_cache_dir("qeval"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_subdir(name: str) -> Path:
    """models/, tasks/, artifacts/, downloads/ under the cache dir."""
    check_name(name, what="cache folder")
    path = under(cache_dir(), cache_dir() / name, what="cache folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


# Caches that libraries qeval runs write by default under the home folder or /tmp; a run points them into
# qeval's cache instead (where the user has not chosen a place), so everything a run writes is in its run
# directory or in the cache (tests/test_written_paths.py walks it).
LIBRARY_CACHES = {"MPLCONFIGDIR": "matplotlib", "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
                  "TRITON_CACHE_DIR": "triton", "VLLM_CACHE_ROOT": "vllm"}


def confine_library_caches() -> None:
    """Point the library caches of LIBRARY_CACHES under `cache_dir()/libs/`, unless the user set them."""
    for var, name in LIBRARY_CACHES.items():
        if not os.environ.get(var):
            os.environ[var] = str(cache_subdir("libs") / name)
