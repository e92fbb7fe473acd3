"""Checks of a run's arguments that come before any input is read or output written: the date and output root."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from factory.errors import InputError

_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # ASCII digits only: `\d` also matches other scripts' digits


def parse_date(value: str) -> str:
    """Strict YYYY-MM-DD (the date becomes a directory name).

    `date.fromisoformat` alone also takes ISO week and basic forms (`2026-W47-6`, `20261121`): they would name a
    second directory for the same day, so only the calendar form is accepted.
    """
    try:
        if not _DATE_RE.fullmatch(value):
            raise ValueError
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise InputError(f"--date must be a calendar date YYYY-MM-DD, got {value!r}") from None


def check_output_dir(root: str | Path, target: str | Path) -> None:
    """Refuse (exit 2) when `target` (inside the output `root`) cannot be a directory because a file is in the way.

    Without this, a mistyped `--output` that names an existing file fails deep inside the run with exit 1.
    """
    root, target = Path(root), Path(target)
    for p in (target, *target.parents):
        if p.is_dir():
            return
        if p.exists() or p.is_symlink():  # a file, or a symlink to nothing
            where = "" if p == root else f" ({p} is in the way)"
            raise InputError(f"output root {root} is not a directory{where}; point --output or [paths] output at one")
