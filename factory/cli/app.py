"""`adfactory` operator commands: a thin layer that builds a config and calls `factory.job.run.run()` / `plan()`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from factory.cli.dev import dev_app
from factory.cli.options import (
    BatchSizeOpt,
    ConfigOpt,
    DateOpt,
    ExecutorOpt,
    LogFormatOpt,
    MatchOutputOpt,
    OutputOpt,
    SkusOpt,
    VerboseOpt,
    WorkersOpt,
    guard,
    run_overrides,
    today,
)
from factory.errors import EXIT_FAILED

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Nightly LCM ad-image factory.")
models_app = typer.Typer(no_args_is_help=True, help="Check a checkpoint before a night uses it.")
app.add_typer(models_app, name="models")
provenance_app = typer.Typer(no_args_is_help=True, help="Provenance marks of generated PNGs.")
app.add_typer(provenance_app, name="provenance")
review_app = typer.Typer(no_args_is_help=True, help="Human review of a night: the review sheet and the decisions.")
app.add_typer(review_app, name="review")
app.add_typer(dev_app, name="dev")


@app.command()
def run(
    date: DateOpt = "",
    skus: SkusOpt = None,
    output: OutputOpt = None,
    config: ConfigOpt = None,
    executor: ExecutorOpt = None,
    workers: WorkersOpt = None,
    batch_size: BatchSizeOpt = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Join this Ray cluster.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Regenerate everything, even for a completed date.")] = False,
    verbose: VerboseOpt = False,
    log_format: LogFormatOpt = "text",
) -> None:
    """Generate the day's ad images and write approved/review/rejected manifests."""
    from factory.config import load_config
    from factory.job.run import run as run_factory

    def go() -> None:
        run = {**run_overrides(executor, workers, batch_size), "ray_address": ray_address}
        cfg = load_config(config, {"paths": {"output": output or None}, "run": run})
        s = run_factory(cfg, date or today(), skus, force=force)
        if not s.already_done:  # else run() logged it, once
            typer.echo("\n" + s.format())

    guard(verbose, go, log_format)


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
        s = summarize(cfg, date or today(), skus)
        typer.echo(f"{s.input_path}: {s.input_rows} rows, {s.images} images planned in {s.batches} batches")
        typer.echo("  images per bucket: " + (", ".join(f"{k}={v}" for k, v in s.buckets.items()) or "none"))
        typer.echo(f"  rejected rows: {len(s.rejected)}")
        for r in s.rejected:
            typer.echo(
                f"    {Path(r.source_file).name} row {r.source_row}: sku_id={r.sku_id!r}: {r.reason} ({r.detail})"
            )

    guard(verbose, go, log_format)


@app.command()
def calibrate(
    date: DateOpt = "",
    skus: SkusOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = None,
    sample: Annotated[int, typer.Option("--sample", help="Images to generate and score.")] = 64,
    percentile: Annotated[float, typer.Option("--percentile", help="Share (%) of the sample each check fails.")] = 5.0,
    verbose: VerboseOpt = False,
    log_format: LogFormatOpt = "text",
) -> None:
    """Score a sample of the day's images and suggest per-category quality thresholds (a TOML snippet)."""
    from factory.config import load_config
    from factory.tools.ops.calibrate import calibrate as run_calibration

    def go() -> None:
        cfg = load_config(config, {"paths": {"output": output or None}})
        r = run_calibration(cfg, date or today(), skus, sample=sample, percentile=percentile)
        typer.echo(f"scored {r.samples} images; suggested global thresholds:")
        for k, v in r.thresholds.get("all", {}).items():
            typer.echo(f"  {k} = {v}")
        typer.echo(f"report: {r.report_path}\nsnippet: {r.toml_path}")

    guard(verbose, go, log_format)


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
        path = skus_dir / f"{parse_date(date or today())}.parquet"  # the date names a file: never a path
        if path.exists() and not force:
            typer.echo(f"{path} exists; keeping it")
            return
        typer.echo(f"wrote {write_demo_skus(path)}")

    guard(False, go)


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

    guard(verbose, go)


@models_app.command("check")
def check(
    directory: Annotated[
        Path,
        typer.Argument(help="A diffusers pipeline directory (model_index.json) or a single-file .safetensors/.ckpt."),
    ],
    lora: Annotated[
        Optional[Path], typer.Option("--lora", help="A LoRA (kohya, diffusers or peft; file or directory) to fuse.")
    ] = None,
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

    guard(verbose, go)


@provenance_app.command("verify")
def provenance_verify(
    files: Annotated[list[Path], typer.Argument(help="PNG files written by a night.")],
    trust_anchors: Annotated[
        Optional[Path], typer.Option("--trust-anchors", help="PEM root certificates to trust for C2PA signatures.")
    ] = None,
    config: ConfigOpt = None,
    output: MatchOutputOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Print the marks each file carries and whether its pixels still match the label's hash (exit 1 if not);
    the watermark too when the secret named by provenance.watermark_secret_env is set."""
    from factory.config import load_config
    from factory.tools.ops.watermark_detect import verify

    def go() -> int:
        reports = verify(load_config(config), files, trust_anchors, output)
        for r in reports:
            typer.echo(r.describe())
        return 0 if all(r.ok for r in reports) else EXIT_FAILED

    code = guard(verbose, go)
    if code:
        raise typer.Exit(code)


@provenance_app.command("detect")
def provenance_detect(
    files: Annotated[list[Path], typer.Argument(help="Images of any format, metadata or not (JPEG, WebP, PNG).")],
    config: ConfigOpt = None,
    output: MatchOutputOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Read the invisible watermark of each file (exit 1 if one has none); with --output, the manifest rows
    (night, SKU, variant, produce_id) whose image carries its payload."""
    from factory.config import load_config
    from factory.tools.ops.watermark_detect import describe_detection, detect

    def go() -> int:
        reports = detect(load_config(config), files, output)
        for r in reports:
            typer.echo(describe_detection(r))
        return 0 if all(r.ok for r in reports) else EXIT_FAILED

    code = guard(verbose, go)
    if code:
        raise typer.Exit(code)


def _review_night(config: Optional[Path], output: Optional[str], date: str) -> Any:
    from factory.config import load_config
    from factory.review.manifests import open_night

    return open_night(load_config(config, {"paths": {"output": output}}), date or today())


@review_app.command("sheet")
def review_sheet(
    date: DateOpt = "", output: OutputOpt = None, config: ConfigOpt = None, verbose: VerboseOpt = False
) -> None:
    """Write the night's review sheet (static HTML, opens from disk) and print its path."""
    from factory.review.sheet import write_sheet

    guard(verbose, lambda: typer.echo(write_sheet(_review_night(config, output, date))))


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

    guard(verbose, go)


@app.command()
def report(
    output: OutputOpt = None,
    config: ConfigOpt = None,
    nights: Annotated[int, typer.Option("--nights", help="How many of the latest nights to show.")] = 14,
    device_hour_price: Annotated[
        float, typer.Option("--device-hour-price", help="Price of one device-hour, for cost per image (0: none).")
    ] = 0.0,
    verbose: VerboseOpt = False,
) -> None:
    """Write <output>/report.html: outcome shares, reasons, repair share, images/s and cost over the last nights."""
    from factory.config import load_config
    from factory.errors import ConfigError
    from factory.io.storage import open_store
    from factory.ops.report import write_report

    def go() -> None:
        if nights < 1 or device_hour_price < 0:
            raise ConfigError("--nights must be at least 1 and --device-hour-price at least 0")
        cfg = load_config(config, {"paths": {"output": output}})
        typer.echo(write_report(open_store(cfg.paths.output, cfg.storage), nights, device_hour_price))

    guard(verbose, go)


def main() -> None:
    app()
