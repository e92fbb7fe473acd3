"""The options commands share, declared once, and the guard every command runs in.

The guard turns a user mistake into one line on stderr and a documented exit code (factory.errors) and SIGTERM into
an orderly unwind; a bug keeps its traceback for --verbose.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from factory import logs
from factory.errors import EXIT_FAILED, FactoryError, Terminated

DateOpt = Annotated[str, typer.Option("--date", help="Run date, YYYY-MM-DD (default: today).")]
SkusOpt = Annotated[
    Optional[str],
    typer.Option("--skus", help="SKU parquet file or directory, or a URI (default: <paths.skus>/<date>.parquet)."),
]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML config (default: ./factory.toml).")]
OutputOpt = Annotated[
    Optional[str],
    typer.Option("--output", help="Output root: a directory or s3://bucket/prefix (default: paths.output)."),
]
MatchOutputOpt = Annotated[
    Optional[str],
    typer.Option("--output", help="Output root whose manifests a watermark payload is matched to (default: none)."),
]
ExecutorOpt = Annotated[Optional[str], typer.Option("--executor", help="ray | local (default: run.executor).")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Number of pipeline workers.")]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Images per pipeline call.")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON here.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging and tracebacks on errors.")]
LogFormatOpt = Annotated[
    str, typer.Option("--log-format", help=f"stderr log lines: {' | '.join(logs.LOG_FORMATS)} (json: one per line).")
]


def today() -> str:
    return dt.date.today().isoformat()


def run_overrides(executor: str | None, workers: int | None, batch_size: int | None) -> dict[str, Any]:
    """The [run] keys the shared flags override (None: keep the config's value)."""
    return {"executor": executor, "workers": workers, "batch_size": batch_size}


def write_json(path: Path | None, result: dict[str, Any]) -> None:
    """--json: the result as JSON beside the table (for CI dashboards and the docs' figures)."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        typer.echo(f"json: {path}")


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during the unwinding kills outright
    raise Terminated("stopped by SIGTERM; the lock is released and finished images are kept: rerun to resume")


def guard(verbose: bool, fn: Callable[[], Any], log_format: str = "text") -> Any:
    """Run `fn`; user errors become one line on stderr and a documented exit code. SIGTERM (a cron timeout, a
    Kubernetes eviction) raises Terminated in the main thread, so the run unwinds as from a crash: the executor
    and its local cluster shut down, the date's lock is released, `_SUCCESS` is not written, parts stay."""
    logs.setup(verbose, log_format)
    main = threading.current_thread() is threading.main_thread()  # handlers can only be set there
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main else None
    try:
        logs.check_format(log_format)
        return fn()
    except FactoryError as exc:
        if verbose:
            traceback.print_exc()
        typer.echo(logs.error_line(str(exc)), err=True)
        raise typer.Exit(exc.exit_code) from None
    except Terminated as exc:
        typer.echo(logs.error_line(str(exc)), err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo(logs.error_line("interrupted"), err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug or an environment failure: say what, keep the traceback for --verbose
        if verbose:
            traceback.print_exc()
        msg = f"run failed: {type(exc).__name__}: {exc} (rerun with --verbose for the traceback)"
        typer.echo(logs.error_line(msg), err=True)
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
