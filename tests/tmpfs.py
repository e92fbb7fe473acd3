"""A real small file system for fault tests: a tmpfs of a given size mounted on a test's directory (root only)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (e.g. "150k") on `path` for the block; skips the test when that is not possible
    (not root, no mount permission in this container). Always unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root: the full-disk test is skipped")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): the full-disk test is skipped")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    """Change a mounted tmpfs in place, e.g. "size=64m" (space freed) or "ro" (read-only), keeping its files."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)
