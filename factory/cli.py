"""`adfactory` command line: a thin layer that builds a config and calls `factory.job.run.run()` / `plan()`."""

from __future__ import annotations

import datetime as dt
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from factory import logs
from factory.errors import EXIT_FAILED, FactoryError, Terminated

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Nightly LCM ad-image factory.")
models_app = typer.Typer(no_args_is_help=True, help="Model utilities.")
app.add_typer(models_app, name="models")
provenance_app = typer.Typer(no_args_is_help=True, help="Provenance marks of generated PNGs.")
app.add_typer(provenance_app, name="provenance")
review_app = typer.Typer(no_args_is_help=True, help="Human review of a night: the review sheet and the decisions.")
app.add_typer(review_app, name="review")

DateOpt = Annotated[str, typer.Option("--date", help="Run date, YYYY-MM-DD (default: today).")]
SkusOpt = Annotated[
    Optional[str],
    typer.Option("--skus", help="SKU parquet file or directory, or a URI (default: <paths.skus>/<date>.parquet)."),
]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML config (default: ./factory.toml).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging and tracebacks on errors.")]
LogFormatOpt = Annotated[
    str, typer.Option("--log-format", help=f"stderr log lines: {' | '.join(logs.LOG_FORMATS)} (json: one per line).")
]


def _today() -> str:
    return dt.date.today().isoformat()


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during the unwinding kills outright
    raise Terminated("stopped by SIGTERM; the lock is released and finished images are kept: rerun to resume")


def _guard(verbose: bool, fn: Callable[[], Any], log_format: str = "text") -> Any:
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


@app.command()
def run(
    date: DateOpt = "",
    skus: SkusOpt = None,
    output: Annotated[
        Optional[str],
        typer.Option("--output", help="Output root: a directory or s3://bucket/prefix (default: data/output)."),
    ] = None,
    config: ConfigOpt = None,
    executor: Annotated[Optional[str], typer.Option("--executor", help="ray | local")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Number of pipeline workers.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per pipeline call.")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Join this Ray cluster.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Regenerate everything, even for a completed date.")] = False,
    verbose: VerboseOpt = False,
    log_format: LogFormatOpt = "text",
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
            return  # run() logged it, once
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
            f"  outputs        {s.output}/{s.date}/ (images/, run.json, _SUCCESS); "
            f"manifests in {s.output}/manifests/{{approved,review,rejected}}/run_date={s.date}/"
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

    _guard(verbose, go, log_format)


@app.command()
def validate(
    date: DateOpt = "",
    skus: SkusOpt = None,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
    log_format: LogFormatOpt = "text",
) -> None:
    """Check the day's input and the templates; print what would be rejected. Generates and writes nothing."""
    from factory.config import load_config
    from factory.job.night_plan import summarize

    def go() -> None:
        cfg = load_config(config)
        s = summarize(cfg, date or _today(), skus)
        typer.echo(f"{s.input_path}: {s.input_rows} rows, {s.images} images planned in {s.batches} batches")
        typer.echo("  images per bucket: " + (", ".join(f"{k}={v}" for k, v in s.buckets.items()) or "none"))
        typer.echo(f"  rejected rows: {len(s.rejected)}")
        for r in s.rejected:
            typer.echo(
                f"    {Path(r.source_file).name} row {r.source_row}: sku_id={r.sku_id!r}: {r.reason} ({r.detail})"
            )

    _guard(verbose, go, log_format)


@app.command()
def calibrate(
    date: DateOpt = "",
    skus: SkusOpt = None,
    config: ConfigOpt = None,
    output: Annotated[
        Optional[str],
        typer.Option("--output", help="Output root: a directory or s3://bucket/prefix (default: data/output)."),
    ] = None,
    sample: Annotated[int, typer.Option("--sample", help="Images to generate and score.")] = 64,
    percentile: Annotated[float, typer.Option("--percentile", help="Share (%) of the sample each check fails.")] = 5.0,
    verbose: VerboseOpt = False,
    log_format: LogFormatOpt = "text",
) -> None:
    """Score a sample of the day's images and suggest per-category quality thresholds (a TOML snippet)."""
    from factory.config import load_config
    from factory.tools.ops.calibrate import calibrate as run_calibration

    def go() -> None:
        cfg = load_config(config, {"paths": {"output": str(output) if output else None}})
        r = run_calibration(cfg, date or _today(), skus, sample=sample, percentile=percentile)
        typer.echo(f"scored {r.samples} images; suggested global thresholds:")
        for k, v in r.thresholds.get("all", {}).items():
            typer.echo(f"  {k} = {v}")
        typer.echo(f"report: {r.report_path}\nsnippet: {r.toml_path}")

    _guard(verbose, go, log_format)


@app.command()
def bench(
    skus: Annotated[int, typer.Option("--skus", help="SKUs in the generated mixed-bucket day.")] = 48,
    config: ConfigOpt = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed repetitions per configuration (best kept).")] = 1,
    soak: Annotated[int, typer.Option("--soak", help="Also process N batches in one worker; report RSS drift.")] = 0,
    quantization: Annotated[str, typer.Option("--quantization", help="Mode compared with float.")] = "int8-dynamic",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON here.")] = None,
    e2e: Annotated[
        bool, typer.Option("--e2e", help="Whole processes instead: `adfactory run` vs a plain diffusers loop.")
    ] = False,
    images: Annotated[
        str, typer.Option("--images", help="With --e2e: day sizes in images, comma-separated.")
    ] = "48,200",
    verbose: VerboseOpt = False,
) -> None:
    """Benchmark: naive loop vs seed-000 batching vs bucketed batches vs the full worker; quantization; memory.
    With --e2e: the whole night as a process against a plain diffusers loop over the same images."""
    import json

    from factory.config import load_config
    from factory.errors import ConfigError
    from factory.tools.benchmarks.bench import bench as run_bench
    from factory.tools.benchmarks.bench import format_table

    def go() -> None:
        if e2e:
            from factory.tools.benchmarks.bench_e2e import bench_e2e, format_e2e

            try:
                sizes = tuple(int(x) for x in images.split(","))
            except ValueError:
                raise ConfigError(f"--images must be comma-separated image counts, got {images!r}") from None
            if not sizes or min(sizes) < 1:
                raise ConfigError(f"--images must be positive image counts, got {images!r}")
            r = bench_e2e(load_config(config), sizes)
            typer.echo(format_e2e(r))
        else:
            r = run_bench(load_config(config), n_skus=skus, repeats=repeats, soak=soak, quant_mode=quantization)
            typer.echo(format_table(r))
        if json_out:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(r, indent=2) + "\n")
            typer.echo(f"json: {json_out}")

    _guard(verbose, go)


@app.command("scale-bench")
def scale_bench(
    mode: Annotated[str, typer.Argument(help="validate | null-night")],
    rows: Annotated[int, typer.Option("--rows", help="SKU rows in the synthetic day.")] = 1_000_000,
    config: ConfigOpt = None,
    output: Annotated[Optional[str], typer.Option("--output", help="null-night output root: a path or URI.")] = None,
    workdir: Annotated[Path, typer.Option("--workdir", help="Synthetic days (kept) and the default output.")] = Path(
        "data/output/scale-bench"
    ),
    executor: Annotated[Optional[str], typer.Option("--executor", help="ray | local")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Number of pipeline workers.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per pipeline call.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON here.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """The driver at scale without a model: wall time, driver CPU and peak RSS on a synthetic day."""
    import json

    from factory.config import load_config
    from factory.tools.benchmarks.scale_bench import format_result
    from factory.tools.benchmarks.scale_bench import scale_bench as run_scale_bench

    def go() -> None:
        cfg = load_config(config, {"run": {"executor": executor, "workers": workers, "batch_size": batch_size}})
        r = run_scale_bench(cfg, mode, rows, workdir.resolve(), output)
        typer.echo(format_result(r))
        if json_out:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(r, indent=2) + "\n")

    _guard(verbose, go)


@app.command("demo-skus")
def demo_skus(
    date: DateOpt = "",
    skus_dir: Annotated[Path, typer.Option("--skus-dir", help="Directory for <date>.parquet.")] = Path("data/skus"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write the demo SKU file for a date (if absent): mixed categories, keyword buckets and a few bad rows."""
    from factory.inputs.arguments import parse_date
    from factory.tools.ops.demo import write_demo_skus

    def go() -> None:
        path = skus_dir / f"{parse_date(date or _today())}.parquet"  # the date names a file: never a path
        if path.exists() and not force:
            typer.echo(f"{path} exists; keeping it")
            return
        typer.echo(f"wrote {write_demo_skus(path)}")

    _guard(False, go)


@app.command("train-lora")
def train_lora(
    images: Annotated[Path, typer.Option("--images", help="Folder of RGB images (+ same-name .txt captions).")],
    output: Annotated[Path, typer.Option("--output", help="Gets pytorch_lora_weights.safetensors + train.json.")],
    config: ConfigOpt = None,
    method: Annotated[str, typer.Option("--method", help="lora (a style LoRA) | lcm-distill (an LCM-LoRA).")] = "lora",
    caption: Annotated[str, typer.Option("--caption", help="Caption of images without a .txt file.")] = "",
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank (alpha = rank).")] = 16,
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps.")] = 1000,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 1e-4,
    resolution: Annotated[int, typer.Option("--resolution", help="Training side in px (multiple of 8).")] = 512,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per step.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the LoRA init, batch order and noise.")] = 0,
    text_encoder: Annotated[bool, typer.Option("--text-encoder", help="Also train a text-encoder LoRA.")] = False,
    num_ddim_timesteps: Annotated[int, typer.Option("--num-ddim-timesteps", help="lcm-distill: solver steps.")] = 50,
    w_min: Annotated[float, typer.Option("--w-min", help="lcm-distill: lowest sampled guidance w.")] = 5.0,
    w_max: Annotated[float, typer.Option("--w-max", help="lcm-distill: highest sampled guidance w.")] = 15.0,
    loss_type: Annotated[str, typer.Option("--loss-type", help="lcm-distill: huber | l2.")] = "huber",
    huber_c: Annotated[float, typer.Option("--huber-c", help="lcm-distill: huber loss constant.")] = 0.001,
    verbose: VerboseOpt = False,
) -> None:
    """Train a LoRA on a folder of images against the config's base model (diffusers-format output)."""
    from factory.config import load_config
    from factory.training.common import TrainArgs
    from factory.training.train import train

    def go() -> None:
        args = TrainArgs(
            images=images, output=output, method=method, caption=caption, rank=rank, steps=steps, lr=lr,
            resolution=resolution, batch_size=batch_size, seed=seed, text_encoder=text_encoder,
            num_ddim_timesteps=num_ddim_timesteps, w_min=w_min, w_max=w_max, loss_type=loss_type, huber_c=huber_c,
        )  # fmt: skip
        s = train(load_config(config), args)
        typer.echo(
            f"trained {s['method']} on {s['images']} images, {s['steps']} steps in {s['time_s']:.1f}s: "
            f"loss {s['loss_start']:.4f} -> {s['loss_end']:.4f}\n"
            f"  {output / s['weights']}\n  {output / 'train.json'}"
        )

    _guard(verbose, go)


@models_app.command("init-tiny")
def init_tiny(
    directory: Annotated[Path, typer.Argument(help="Where to write tiny-sd/ and tiny-clip/.")] = Path("data/models"),
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if present.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Build the embedded tiny models (random weights, fixed seed) in standard diffusers/open_clip formats."""
    from factory.tools.builders.tiny_models import init_tiny as build

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
    from factory.tools.builders.style_lora import write_style_lora

    _guard(verbose, lambda: typer.echo(f"tiny style LoRA: {write_style_lora(directory, seed=seed)}"))


@models_app.command("init-random-sd15")
def init_random_sd15(
    directory: Annotated[Path, typer.Argument(help="Where to write the pipeline directory.")],
    verbose: VerboseOpt = False,
) -> None:
    """Build a full-size SD1.5-architecture LCM pipeline with random weights (fp16), for GPU benchmarks."""
    import torch

    from factory.tools.builders.tiny_models import build_random_sd15

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
    from factory.tools.ops.check_model import check_model

    def go() -> None:
        report = check_model(
            directory, lora, load_config(config), size, steps, emit=lambda k, v: typer.echo(f"{k:<18} {v}")
        )
        notes = f" ({report.warnings} warning{'s' * (report.warnings != 1)})" if report.warnings else ""
        typer.echo(f"OK{notes}: {directory} loads, generates and repairs as a night would (image quality not judged)")

    _guard(verbose, go)


@provenance_app.command("verify")
def provenance_verify(
    files: Annotated[list[Path], typer.Argument(help="PNG files written by a night.")],
    trust_anchors: Annotated[
        Optional[Path], typer.Option("--trust-anchors", help="PEM root certificates to trust for C2PA signatures.")
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Print the marks each file carries and whether its pixels still match the label's hash (exit 1 if not)."""
    from factory.io.provenance import verify_files

    def go() -> int:
        reports = verify_files(files, trust_anchors)
        for r in reports:
            typer.echo(r.describe())
        return 0 if all(r.ok for r in reports) else EXIT_FAILED

    code = _guard(verbose, go)
    if code:
        raise typer.Exit(code)


@provenance_app.command("bench")
def provenance_bench(
    size: Annotated[int, typer.Option("--size", help="Image side in px.")] = 256,
    images: Annotated[int, typer.Option("--images", help="Images per measurement.")] = 50,
    verbose: VerboseOpt = False,
) -> None:
    """Cost per image of the provenance marks (and C2PA signing) and of the near-duplicate search."""
    from factory.tools.benchmarks.provenance_bench import provenance_costs, similarity_costs

    def go() -> None:
        for key, value in provenance_costs(size, images).items():
            typer.echo(f"{key:<20} {value}")
        for row in similarity_costs():
            typer.echo(
                f"similarity {row['method']:<6} {row['images']:>6} images  {row['total_s']:>8.3f} s  "
                f"{row['us_per_image']:>8.1f} us/image"
            )

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
