"""Process-wide logging for the `adfactory` commands: plain lines for cron logs, or JSON lines for log shippers.

`setup()` is called once per command (factory/cli.py). It also quiets what would otherwise repeat in every night's
log without telling an operator anything: Ray's token-auth banner on each local cluster start, and colour codes
from Ray's log forwarding when stderr is a file (cron) rather than a terminal. torch's `_pytree` Enum warnings and
diffusers' "Unable to import torchao Tensor objects" come from importing torchao, which a night without
quantization no longer does (`factory.generation.models.import_libraries`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import TextIO

from factory.errors import ConfigError

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"
# Loggers whose messages are the same on every run; only errors from them reach the night's log.
_QUIET = ("ray._private.authentication.authentication_token_setup",)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, msg (+ exc with the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


_format = "text"


def check_format(fmt: str, source: str = "command line --log-format") -> str:
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"{source}: must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    return fmt


def setup(verbose: bool = False, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Root handler on stderr in `fmt`; libraries at WARNING, the factory's own progress at INFO (DEBUG: verbose)."""
    global _format
    _format = fmt if fmt in LOG_FORMATS else "text"  # an unknown value is reported by check_format, in text
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if _format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("factory").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)
    if not (stream or sys.stderr).isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # Ray's forwarded worker lines: no ANSI colour in files


def adopt(name: str) -> None:
    """Route a library logger that installs its own handler (Ray) through ours, so `--log-format` holds for it."""
    lg = logging.getLogger(name)
    for h in list(lg.handlers):
        lg.removeHandler(h)
    lg.propagate = True


def error_line(message: str) -> str:
    """The one line a failed command prints on stderr, in the chosen format."""
    if _format == "json":
        record = logging.LogRecord("factory.cli", logging.ERROR, "", 0, message, None, None)
        return JsonFormatter().format(record)
    return f"error: {message}"
