"""`adfactory dev ...`: commands for the people who build the factory, not for the night: benchmarks and the
builders of the embedded test models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from factory.cli.options import (
    BatchSizeOpt,
    ConfigOpt,
    ExecutorOpt,
    JsonOpt,
    OutputOpt,
    VerboseOpt,
    WorkersOpt,
    guard,
    run_overrides,
    write_json,
)

dev_app = typer.Typer(no_args_is_help=True, help="Developer commands: benchmarks and test-model builders.")


@dev_app.command()
def bench(
    skus: Annotated[int, typer.Option("--skus", help="SKUs in the generated mixed-bucket day.")] = 48,
    config: ConfigOpt = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed repetitions per configuration (best kept).")] = 1,
    soak: Annotated[int, typer.Option("--soak", help="Also process N batches in one worker; report RSS drift.")] = 0,
    quantization: Annotated[str, typer.Option("--quantization", help="Mode compared with float.")] = "int8-dynamic",
    sim_skus: Annotated[
        int, typer.Option("--sim-skus", help="SKUs of the simulated-device night (512², H200 timing); 0 skips it.")
    ] = 96,
    json_out: JsonOpt = None,
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
    from factory.config import load_config
    from factory.errors import ConfigError

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
            from factory.tools.benchmarks.bench import bench as run_bench
            from factory.tools.benchmarks.bench import format_table

            r = run_bench(
                load_config(config), n_skus=skus, repeats=repeats, soak=soak, quant_mode=quantization, sim_skus=sim_skus
            )
            typer.echo(format_table(r))
        write_json(json_out, r)

    guard(verbose, go)


@dev_app.command("scale-bench")
def scale_bench(
    mode: Annotated[str, typer.Argument(help="validate | null-night | resume | cache-night | finalize")],
    rows: Annotated[int, typer.Option("--rows", help="SKU rows in the synthetic day.")] = 1_000_000,
    config: ConfigOpt = None,
    output: OutputOpt = None,
    workdir: Annotated[
        Path, typer.Option("--workdir", help="Synthetic days (kept) and null-night's default output.")
    ] = Path("data/output/scale-bench"),
    executor: ExecutorOpt = None,
    workers: WorkersOpt = None,
    batch_size: BatchSizeOpt = None,
    json_out: JsonOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """The driver at scale without a model: wall time, driver CPU and peak RSS on a synthetic day."""
    from factory.config import load_config
    from factory.tools.benchmarks.scale_bench import format_result
    from factory.tools.benchmarks.scale_bench import scale_bench as run_scale_bench

    def go() -> None:
        cfg = load_config(config, {"run": run_overrides(executor, workers, batch_size)})
        r = run_scale_bench(cfg, mode, rows, workdir.resolve(), output)
        typer.echo(format_result(r))
        write_json(json_out, r)

    guard(verbose, go)


@dev_app.command("bucket-cost")
def bucket_cost(
    config: ConfigOpt = None,
    model: Annotated[str, typer.Option("--model", help="Tiny pipeline timed: tiny-sdxl | tiny-sd.")] = "tiny-sdxl",
    repeats: Annotated[int, typer.Option("--repeats", help="Timed calls per size (best kept, after a warm-up).")] = 2,
    scale: Annotated[int, typer.Option("--scale", help="Divide every size by this (quick runs).")] = 1,
    json_out: JsonOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Seconds per image of every bucket the config generates at (placements' too), on this CPU with a tiny
    pipeline, relative to the first bucket; and what the demo day costs without and with every placement."""
    from factory.config import load_config
    from factory.errors import ConfigError
    from factory.tools.benchmarks.bucket_cost import MODELS, bucket_costs, format_costs, scaled

    def go() -> None:
        if model not in MODELS or repeats < 1 or scale < 1:
            raise ConfigError(f"--model must be one of {', '.join(MODELS)}, --repeats and --scale at least 1")
        cfg = load_config(config)
        r = bucket_costs(scaled(cfg, scale) if scale > 1 else cfg, model, repeats)
        typer.echo(format_costs(r))
        write_json(json_out, r)

    guard(verbose, go)


@dev_app.command("provenance-bench")
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

    guard(verbose, go)


@dev_app.command("watermark-bench")
def watermark_bench(
    config: ConfigOpt = None,
    photos: Annotated[int, typer.Option("--photos", help="Photo-like images (procedural) to mark and attack.")] = 100,
    demo: Annotated[int, typer.Option("--demo", help="Images of the config's (tiny) model at its buckets.")] = 48,
    clean: Annotated[int, typer.Option("--clean", help="Never-marked images for the false-positive rate.")] = 1000,
    size: Annotated[int, typer.Option("--size", help="Side of the photo-like and clean images in px.")] = 512,
    json_out: JsonOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Watermark robustness: detection rate and bit error per transform, false positives with a 95 % interval,
    PSNR, CLIP-score change and time per image (docs/watermark.md)."""
    from factory.config import load_config
    from factory.tools.benchmarks.watermark_bench import format_report
    from factory.tools.benchmarks.watermark_bench import watermark_bench as run_bench

    def go() -> None:
        r = run_bench(load_config(config), photos=photos, demo=demo, clean=clean, size=size)
        typer.echo(format_report(r))
        write_json(json_out, r)

    guard(verbose, go)


@dev_app.command("init-tiny")
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

    guard(verbose, go)


@dev_app.command("init-style-lora")
def init_style_lora(
    directory: Annotated[Path, typer.Argument(help="Where to write pytorch_lora_weights.safetensors.")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the LoRA matrices (same seed, same bytes).")] = 0,
    verbose: VerboseOpt = False,
) -> None:
    """Build a random "style" LoRA for the embedded tiny UNet (diffusers format), to try lora.adapters with."""
    from factory.tools.builders.style_lora import write_style_lora

    guard(verbose, lambda: typer.echo(f"tiny style LoRA: {write_style_lora(directory, seed=seed)}"))


@dev_app.command("init-single-file")
def init_single_file(
    directory: Annotated[Path, typer.Argument(help="Where to write the replicas and LoRAs.")],
    verbose: VerboseOpt = False,
) -> None:
    """Build tiny single-file checkpoints in the original LDM layout (lcm-sd15, sd15 + .ckpt, sdxl; each with its
    <name>.config/ and directory form) and a tiny style LoRA in each format (kohya, diffusers, peft)."""
    from factory.tools.builders.single_file_replicas import write_single_file_replicas
    from factory.tools.builders.style_lora import write_format_loras

    def go() -> None:
        for name, path in write_single_file_replicas(directory).items():
            typer.echo(
                f"single file {name}: {path} (configs {path.with_suffix('.config')}, directory {path.parent / name})"
            )
        for name, path in write_format_loras(directory / "loras").items():
            typer.echo(f"style LoRA {name}: {path}")

    guard(verbose, go)


@dev_app.command("init-random-sd15")
def init_random_sd15(
    directory: Annotated[Path, typer.Argument(help="Where to write the pipeline directory.")],
    verbose: VerboseOpt = False,
) -> None:
    """Build a full-size SD1.5-architecture LCM pipeline with random weights (fp16), for GPU benchmarks."""

    def go() -> None:
        import torch

        from factory.tools.builders.tiny_models import build_random_sd15

        build_random_sd15(torch.float16).save_pretrained(directory, safe_serialization=True)
        typer.echo(f"random-weight SD1.5 pipeline: {directory}")

    guard(verbose, go)
