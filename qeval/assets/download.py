"""Downloads from PyPI with a pinned sha256, atomic writes and a lock.

`pip download --no-deps` is the normal path. Some old sdists (bigbench 1.0.0)
declare a direct-URL dependency that recent pip refuses while preparing
metadata; for those we fall back to the file link of the registry's simple
index (the same registry pip uses), with the same sha256 check.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from qeval.errors import QevalError
from qeval.paths import cache_subdir

DEFAULT_INDEX = "https://pypi.org/simple"


@dataclass(frozen=True)
class Distribution:
    """One pinned file of one PyPI release."""

    name: str
    version: str
    filename: str
    sha256: str


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, dist: Distribution) -> None:
    actual = sha256_of(path)
    if actual != dist.sha256:
        raise QevalError(f"{path} has sha256 {actual[:16]}..., expected {dist.sha256[:16]}... "
                         f"({dist.name}=={dist.version}): the download is corrupt or not the pinned file",
                         file=str(path), fix="delete the file and run `qeval fetch` again")


def fetch(dist: Distribution) -> Path:
    """The verified file in the downloads cache; downloaded on first use."""
    downloads = cache_subdir("downloads")
    target = downloads / dist.filename
    with FileLock(str(target) + ".lock"):
        if target.exists():
            verify(target, dist)
            return target
        with tempfile.TemporaryDirectory(dir=downloads) as tmp:
            got = _pip_download(dist, Path(tmp)) or _index_download(dist, Path(tmp))
            verify(got, dist)
            os.replace(got, target)
    return target


def _pip_download(dist: Distribution, into: Path) -> Path | None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into),
           f"{dist.name}=={dist.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = into / dist.filename
    return path if proc.returncode == 0 and path.exists() else None


class NotServed(QevalError):
    """The registry answered and does not offer the pinned file: a definite no, unlike a network failure."""


def _index_download(dist: Distribution, into: Path) -> Path:
    index = os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX).rstrip("/")
    page_url = f"{index}/{dist.name}/"
    try:
        page = urllib.request.urlopen(page_url, timeout=120).read().decode()
        match = re.search(rf'href="([^"]*{re.escape(dist.filename)}[^"]*)"', page)
        if not match:
            raise NotServed(f"the package registry does not offer {dist.name}=={dist.version}: "
                            f"{dist.filename} is not listed at {page_url}",
                            file=str(cache_subdir("downloads")),
                            fix=f"copy {dist.filename} (sha256 {dist.sha256}) from a machine that has it "
                            f"into {cache_subdir('downloads')} and run again")
        url = urllib.request.urljoin(page_url, match.group(1).replace("&amp;", "&"))
        path = into / dist.filename
        with urllib.request.urlopen(url, timeout=600) as response, open(path, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
        return path
    except OSError as exc:
        raise QevalError(f"could not download {dist.name}=={dist.version} from the package registry ({exc})",
                         file=str(cache_subdir("downloads")),
                         fix=f"check network access to PyPI, or copy {dist.filename} (sha256 {dist.sha256}) "
                         "into that folder and run again") from None
