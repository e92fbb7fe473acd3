"""`adfactory` command line: a thin layer that builds a config and calls `factory.job.run.run()` / `plan()`."""

from __future__ import annotations

import datetime as dt
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from factory.errors import EXIT_FAILED, FactoryError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Nightly LCM ad-image factory.")
models_app = typer.Typer(no_args_is_help=True, help="Model utilities.")
app.add_typer(models_app, name="models")
review_app = typer.Typer(no_args_is_help=True, help="Human review of a night: the review sheet and the decisions.")
app.add_typer(review_app, name="review")

DateOpt = Annotated[str, typer.Option("--date", help="Run date, YYYY-MM-DD (default: today).")]
SkusOpt = Annotated[
    Optional[Path], typer.Option("--skus", help="SKU parquet file or directory (default: <paths.skus>/<date>.parquet).")
]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML config (default: ./factory.toml).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging and tracebacks on errors.")]


def _today() -> str:
    return dt.date.today().isoformat()


def _guard(verbose: bool, fn: Callable[[], Any]) -> Any:
    """Run `fn`; user errors become one line on stderr and a documented exit code."""
    # Libraries (open_clip logs to the root logger) stay at WARNING; the factory's own progress is INFO.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.getLogger("factory").setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        return fn()
    except FactoryError as exc:
        if verbose:
            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug or an environment failure: say what, keep the traceback for --verbose
        if verbose:
            traceback.print_exc()
        typer.echo(f"error: run failed: {type(exc).__name__}: {exc} (rerun with --verbose for the traceback)", err=True)
        raise typer.Exit(EXIT_FAILED) from None


@app.command()
def run(
    date: DateOpt = "",
    skus: SkusOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Output root (default: data/output).")] = None,
    config: ConfigOpt = None,
    executor: Annotated[Optional[str], typer.Option("--executor", help="ray | local")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Number of pipeline workers.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per pipeline call.")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Join this Ray cluster.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Regenerate everything, even for a completed date.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Generate the day's ad images and write approved/review/rejected manifests."""
    from factory.config import load_config
    from factory.job.run import run as run_factory

    def go() -> None:
        cfg = load_config(
            config,
            {
                "paths": {"output": str(output) if output else None},
                "run": {"executor": executor, "workers": workers, "batch_size": batch_size, "ray_address": ray_address},
            },
        )
        s = run_factory(cfg, date or _today(), skus, force=force)
        if s.already_done:
            typer.echo(f"{s.date} already completed (run {s.run_id}); nothing to do. Use --force to regenerate.")
            return
        c = s.counts
        typer.echo(
            f"\nadfactory {s.date} (run {s.run_id})\n"
            f"  input rows     {c['input_rows']}\n"
            f"  approved SKUs  {c['approved_skus']}  ({c['approved_images']} images)\n"
            f"  review SKUs    {c['review_skus']}  ({c['review_images']} images)\n"
            f"  rejected rows  {c['rejected_rows']}\n"
            f"  images         {c['images_generated']} generated, {c['images_resumed']} resumed, "
            f"{c['cache_hits']} from cache\n"
            f"  throughput     {s.images_per_s:.2f} images/s "
            f"({c['images_generated']} generated in {s.timings['total_s']:.1f}s)\n"
            f"  outputs        {s.date_dir}/ (images/, manifests/, run.json)"
        )
        o = s.outcomes.get("all")
        if o:
            typer.echo(
                f"  quality gate   {o['first_pass_share']:.0%} approved first pass, {o['repaired_share']:.0%} "
                f"approved after repair, {o['review_share']:.0%} to review (images)"
            )
            for cat, c in s.outcomes.items():
                if cat != "all":
                    typer.echo(
                        f"    {cat:<12} {c['first_pass']:>4} first pass {c['repaired']:>4} repaired "
                        f"{c['review']:>4} review"
                    )

    _guard(verbose, go)


@app.command()
def validate(date: DateOpt = "", skus: SkusOpt = None, config: ConfigOpt = None, verbose: VerboseOpt = False) -> None:
    """Check the day's input and the templates; print what would be rejected. Generates and writes nothing."""
    from factory.config import load_config
    from factory.inputs.planner import make_batches
    from factory.job.plan import plan

    def go() -> None:
        cfg = load_config(config)
        p = plan(cfg, date or _today(), skus)
        n_batches = len(make_batches(p.tasks, cfg.run.batch_size, cfg.planner.buckets, cfg.run.padding))
        buckets: dict[str, int] = {}
        for t in p.tasks:
            buckets[t.bucket] = buckets.get(t.bucket, 0) + 1
        typer.echo(f"{p.input_path}: {p.input_rows} rows, {len(p.tasks)} images planned in {n_batches} batches")
        typer.echo("  images per bucket: " + (", ".join(f"{k}={v}" for k, v in buckets.items()) or "none"))
        typer.echo(f"  rejected rows: {len(p.rejected)}")
        for r in p.rejected:
            typer.echo(
                f"    {Path(r.source_file).name} row {r.source_row}: sku_id={r.sku_id!r}: {r.reason} ({r.detail})"
            )

    _guard(verbose, go)


@app.command()
def calibrate(
    date: DateOpt = "",
    skus: SkusOpt = None,
    config: ConfigOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Output root (default: data/output).")] = None,
    sample: Annotated[int, typer.Option("--sample", help="Images to generate and score.")] = 64,
    percentile: Annotated[float, typer.Option("--percentile", help="Share (%) of the sample each check fails.")] = 5.0,
    verbose: VerboseOpt = False,
) -> None:
    """Score a sample of the day's images and suggest per-category quality thresholds (a TOML snippet)."""
    from factory.config import load_config
    from factory.tools.calibrate import calibrate as run_calibration

    def go() -> None:
        cfg = load_config(config, {"paths": {"output": str(output) if output else None}})
        r = run_calibration(cfg, date or _today(), skus, sample=sample, percentile=percentile)
        typer.echo(f"scored {r.samples} images; suggested global thresholds:")
        for k, v in r.thresholds.get("all", {}).items():
            typer.echo(f"  {k} = {v}")
        typer.echo(f"report: {r.report_path}\nsnippet: {r.toml_path}")

    _guard(verbose, go)


@app.command()
def bench(
    skus: Annotated[int, typer.Option("--skus", help="SKUs in the generated mixed-bucket day.")] = 48,
    config: ConfigOpt = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed repetitions per configuration (best kept).")] = 1,
    soak: Annotated[int, typer.Option("--soak", help="Also process N batches in one worker; report RSS drift.")] = 0,
    quantization: Annotated[str, typer.Option("--quantization", help="Mode compared with float.")] = "int8-dynamic",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON here.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Benchmark: naive loop vs seed-000 batching vs bucketed batches vs the full worker; quantization; memory."""
    import json

    from factory.config import load_config
    from factory.tools.bench import bench as run_bench
    from factory.tools.bench import format_table

    def go() -> None:
        r = run_bench(load_config(config), n_skus=skus, repeats=repeats, soak=soak, quant_mode=quantization)
        typer.echo(format_table(r))
        if json_out:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(r, indent=2) + "\n")
            typer.echo(f"json: {json_out}")

    _guard(verbose, go)


@app.command("demo-skus")
def demo_skus(
    date: DateOpt = "",
    skus_dir: Annotated[Path, typer.Option("--skus-dir", help="Directory for <date>.parquet.")] = Path("data/skus"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write the demo SKU file for a date (if absent): mixed categories, keyword buckets and a few bad rows."""
    from factory.inputs.arguments import parse_date
    from factory.tools.demo import write_demo_skus

    def go() -> None:
        path = skus_dir / f"{parse_date(date or _today())}.parquet"  # the date names a file: never a path
        if path.exists() and not force:
            typer.echo(f"{path} exists; keeping it")
            return
        typer.echo(f"wrote {write_demo_skus(path)}")

    _guard(False, go)


@models_app.command("init-tiny")
def init_tiny(
    directory: Annotated[Path, typer.Argument(help="Where to write tiny-sd/ and tiny-clip/.")] = Path("data/models"),
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if present.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Build the embedded tiny models (random weights, fixed seed) in standard diffusers/open_clip formats."""
    from factory.tools.tiny_models import init_tiny as build

    def go() -> None:
        paths = build(directory, force=force)
        typer.echo(f"tiny pipeline: {paths['pipeline']}\ntiny open_clip: {paths['clip']}")

    _guard(verbose, go)


@models_app.command("init-style-lora")
def init_style_lora(
    directory: Annotated[Path, typer.Argument(help="Where to write pytorch_lora_weights.safetensors.")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the LoRA matrices (same seed, same bytes).")] = 0,
    verbose: VerboseOpt = False,
) -> None:
    """Build a random "style" LoRA for the embedded tiny UNet (diffusers format), to try [lora.adapters]."""
    from factory.tools.style_lora import write_style_lora

    _guard(verbose, lambda: typer.echo(f"tiny style LoRA: {write_style_lora(directory, seed=seed)}"))


@models_app.command("init-random-sd15")
def init_random_sd15(
    directory: Annotated[Path, typer.Argument(help="Where to write the pipeline directory.")],
    verbose: VerboseOpt = False,
) -> None:
    """Build a full-size SD1.5-architecture LCM pipeline with random weights (fp16), for GPU benchmarks."""
    import torch

    from factory.tools.tiny_models import build_random_sd15

    def go() -> None:
        build_random_sd15(torch.float16).save_pretrained(directory, safe_serialization=True)
        typer.echo(f"random-weight SD1.5 pipeline: {directory}")

    _guard(verbose, go)


@models_app.command("check")
def check(
    directory: Annotated[Path, typer.Argument(help="A diffusers pipeline directory (model_index.json).")],
    lora: Annotated[Optional[Path], typer.Option("--lora", help="An LCM-LoRA (file or directory) to fuse.")] = None,
    config: ConfigOpt = None,
    size: Annotated[int, typer.Option("--size", help="Test image side in px (multiple of 8).")] = 64,
    steps: Annotated[int, typer.Option("--steps", help="LCM steps of the test generation.")] = 2,
    verbose: VerboseOpt = False,
) -> None:
    """Load a checkpoint as a night would, generate and repair one small image; one line per component."""
    from factory.config import load_config
    from factory.tools.check_model import check_model

    def go() -> None:
        report = check_model(
            directory, lora, load_config(config), size, steps, emit=lambda k, v: typer.echo(f"{k:<18} {v}")
        )
        notes = f" ({report.warnings} warning{'s' * (report.warnings != 1)})" if report.warnings else ""
        typer.echo(f"OK{notes}: {directory} loads, generates and repairs as a night would (image quality not judged)")

    _guard(verbose, go)


OutputOpt = Annotated[Optional[str], typer.Option("--output", help="Output root or URI (default: data/output).")]


def _review_night(config: Optional[Path], output: Optional[str], date: str) -> Any:
    from factory.config import load_config
    from factory.review.manifests import open_night

    return open_night(load_config(config, {"paths": {"output": output}}), date or _today())


@review_app.command("sheet")
def review_sheet(
    date: DateOpt = "", output: OutputOpt = None, config: ConfigOpt = None, verbose: VerboseOpt = False
) -> None:
    """Write the night's review sheet (static HTML, opens from disk) and print its path."""
    from factory.review.sheet import write_sheet

    _guard(verbose, lambda: typer.echo(write_sheet(_review_night(config, output, date))))


@review_app.command("apply")
def review_apply(
    decisions: Annotated[Path, typer.Argument(help="CSV exported from the sheet: sku_id,decision[,note].")],
    date: DateOpt = "",
    output: OutputOpt = None,
    config: ConfigOpt = None,
    reviewer: Annotated[Optional[str], typer.Option("--reviewer", help="Who decided (default: $USER).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Apply a reviewer's decisions: approved SKUs move to the approved manifest, rejected ones are marked."""
    from factory.review.apply import apply_decisions

    def go() -> None:
        r = apply_decisions(_review_night(config, output, date), decisions, reviewer)
        if not r.changed:
            typer.echo(f"nothing to change: all {r.unchanged} decisions were already applied")
            return
        n = {d: sum(1 for c in r.changed if c.decision == d) for d in ("approve", "reject")}
        typer.echo(
            f"applied {len(r.changed)} decisions ({n['approve']} approve, {n['reject']} reject; "
            f"{r.unchanged} already applied); now {r.counts['approved_skus']} approved and "
            f"{r.counts['review_skus']} review SKUs\nsheet: {r.sheet}"
        )

    _guard(verbose, go)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
