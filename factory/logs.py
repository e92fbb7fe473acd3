"""Process-wide logging for the `adfactory` commands: plain lines for cron logs, or JSON lines for log shippers.

`setup()` is called once per command (factory.cli.options.guard). It also quiets what would otherwise repeat in every
night's log without telling an operator anything: Ray's token-auth banner on each local cluster start, colour codes
from Ray's log forwarding when stderr is a file (cron) rather than a terminal, and the known-harmless library messages
of HARMLESS, each dropped at the logger that emits it, by level and message. A night without quantization does not
import torchao at all (`factory.generation.models.import_libraries`); `make models`, quantized nights and the
benchmarks do. `--verbose` installs none of these filters, in the driver or in its Ray workers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import TextIO

from factory.errors import ConfigError

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"
# Loggers whose messages are the same on every run; only errors from them reach the night's log.
_QUIET = ("ray._private.authentication.authentication_token_setup",)
VERBOSE_ENV = "ADFACTORY_VERBOSE"  # "1" under --verbose: read by Ray workers (processes of their own), see quiet()


@dataclass(frozen=True)
class Harmless:
    """A library message that asks nothing of an operator, matched where it is emitted."""

    logger: str  # the emitting logger's name; "" is the root logger (a library's module-level logging.warning)
    level: int  # its level: the record's category
    text: str  # a fixed part of its message
    path: str  # a part of the emitting file's path (the library), for the root logger shared by many

    def matches(self, record: logging.LogRecord) -> bool:
        return record.levelno == self.level and self.path in record.pathname and self.text in record.getMessage()


# The one list of library messages the factory hides (not with --verbose), and why each is harmless.
HARMLESS = (
    # torchao 0.18 registers its Enum config types (KernelPreference, ScaleCalculationMode) as pytree constants when
    # imported; torch 2.15 deprecates that call. A note between two libraries: nothing the factory calls or can fix.
    Harmless(
        "torch.utils._pytree",
        logging.WARNING,
        "register_constant() on Enum subclasses is deprecated",
        f"torch{os.sep}utils{os.sep}_pytree.py",
    ),
    # diffusers 0.42 allow-lists torchao's tensor classes for torch.load of torchao-pickled checkpoints and looks for
    # NF4Tensor where torchao 0.18 no longer has it. The factory loads safetensors only and quantizes after loading.
    Harmless(
        "diffusers.quantizers.torchao.torchao_quantizer",
        logging.WARNING,
        "Unable to import `torchao` Tensor objects",
        f"diffusers{os.sep}quantizers",
    ),
    # `make models` (factory.tools.builders.tiny_models) builds the tiny CLIP with random weights on purpose. Only
    # that model's name: a real CLIP without weights would be a broken quality gate and stays loud.
    Harmless(
        "",
        logging.WARNING,
        "No pretrained weights loaded for model 'tiny-clip'",
        f"{os.sep}open_clip{os.sep}",
    ),
)


class _DropHarmless(logging.Filter):
    def __init__(self, entries: list[Harmless]):
        super().__init__()
        self.entries = entries

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(e.matches(record) for e in self.entries)


_FILTERS: dict[str, _DropHarmless] = {}
for _entry in HARMLESS:
    _FILTERS.setdefault(_entry.logger, _DropHarmless([])).entries.append(_entry)


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
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # inherited by the Ray workers of a local cluster started after this
    else:
        os.environ.pop(VERBOSE_ENV, None)
    quiet(not verbose)
    if not (stream or sys.stderr).isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # Ray's forwarded worker lines: no ANSI colour in files


def verbose() -> bool:
    """Whether this process runs under --verbose (the driver's setup() said so, or the worker inherited it)."""
    return os.environ.get(VERBOSE_ENV) == "1"


def quiet(on: bool | None = None) -> None:
    """Install (or, `on=False`, remove) the HARMLESS filters on their loggers; idempotent. `None`: on unless
    $ADFACTORY_VERBOSE is "1" -- how a Ray worker, where setup() never runs, follows the driver's --verbose.
    Cheap (no library is imported): the filters wait on the loggers for the libraries' first messages."""
    if on is None:
        on = not verbose()
    for name, flt in _FILTERS.items():
        lg = logging.getLogger(name or None)
        if on:
            lg.addFilter(flt)  # a filter already there is not added twice
        else:
            lg.removeFilter(flt)


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
