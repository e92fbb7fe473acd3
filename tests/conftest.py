"""Shared fixtures: the embedded tiny models, a small-scale config, SKU files, and one Ray cluster per session."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.config import AspectBucket, Bucket, FactoryConfig, PlacementsConfig, PlacementSize, load_config
from factory.tools.builders.tiny_models import init_tiny
from tests.s3_server import BUCKET, SeaweedS3

REPO = Path(__file__).resolve().parent.parent
DATE = "2026-11-21"

# Quarter-scale buckets and 2 steps: the tiny model stays fast on 2 CPU cores.
TEST_BUCKETS = [
    Bucket("small", 64, 64, 2),
    Bucket("medium", 96, 96, 2),
    Bucket("large", 128, 128, 2),
    Bucket("poster", 128, 64, 2),
]

# The trained sizes (factory.toml: 512 px) and the ad placements (1080 px) at an eighth of production.
TEST_ASPECT_BUCKETS = [
    AspectBucket("square", 64, 64),
    AspectBucket("portrait", 64, 96),
    AspectBucket("landscape", 96, 64),
]
TEST_PLACEMENTS = {
    "feed": PlacementSize(135, 135),
    "portrait": PlacementSize(135, 169),
    "story": PlacementSize(135, 240),
    "link": PlacementSize(150, 79),
}


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    return init_tiny(REPO / "data" / "models")  # built once; `make test` has usually built it already


@pytest.fixture
def cfg(tiny_models, tmp_path) -> FactoryConfig:
    return make_cfg(tiny_models, tmp_path)


def make_cfg(tiny_models: dict[str, Path], tmp_path: Path) -> FactoryConfig:
    base = load_config(REPO / "factory.toml")
    return dataclasses.replace(
        base,
        paths=dataclasses.replace(
            base.paths, skus=str(tmp_path / "skus"), output=str(tmp_path / "out"), templates=str(REPO / "templates")
        ),
        model=dataclasses.replace(
            base.model,
            pipeline=str(tiny_models["pipeline"]),
            clip_pretrained=str(tiny_models["clip"] / "open_clip_model.safetensors"),
            clip_config_dir=str(tiny_models["clip"]),
        ),
        planner=dataclasses.replace(base.planner, buckets=list(TEST_BUCKETS), aspect_buckets=list(TEST_ASPECT_BUCKETS)),
        placements=PlacementsConfig(sizes=dict(TEST_PLACEMENTS)),
        # the tiny CLIP puts every pair of images at cosine ~0.99: near-duplicate search off unless a test sets it
        quality=dataclasses.replace(base.quality, clip_threshold=-0.15, near_duplicate=1.01),
        run=dataclasses.replace(base.run, workers=2, batch_size=4),
    )


def with_run(cfg: FactoryConfig, **kw) -> FactoryConfig:
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, **kw))


def write_skus(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def sample_rows() -> list[dict]:
    """Mixed categories and buckets (incl. a poster and an upscaled SKU), 2 variants on one SKU, 4 bad rows."""
    a = lambda **kw: json.dumps(kw)  # noqa: E731
    return [
        {"sku_id": "S1", "category": "shoes", "attrs": a(brand="Peak", color="red"), "variants": 2},
        {"sku_id": "S2", "category": "dress", "attrs": a(style="linen", color="navy"), "variants": 1},
        {
            "sku_id": "S3",
            "category": "electronics",
            "attrs": a(product="earbuds", background="launch poster"),
            "variants": 1,
        },
        {"sku_id": "S4", "category": "furniture", "attrs": a(product="armchair"), "variants": 1},
        {"sku_id": "S5", "category": "toys", "attrs": a(product="blocks"), "variants": 1},
        {"sku_id": "S6", "category": "food", "attrs": a(product="dumplings"), "variants": 1},
        {"sku_id": "S7", "category": "bags", "attrs": a(brand="Urban", color="tan"), "variants": 1},
        {"sku_id": "../../etc/passwd", "category": "jewelry", "attrs": a(product="ring", metal="gold"), "variants": 1},
        {"sku_id": None, "category": "shoes", "attrs": a(brand="x", color="y"), "variants": 1},
        {"sku_id": "S9", "category": "garden", "attrs": "{}", "variants": 1},
        {"sku_id": "S10", "category": "shoes", "attrs": a(color="blue"), "variants": 1},
        {"sku_id": "S1", "category": "shoes", "attrs": a(brand="Dup", color="red"), "variants": 1},
    ]


SAMPLE_SCHEMA = pa.schema(
    [("sku_id", pa.string()), ("category", pa.string()), ("attrs", pa.string()), ("variants", pa.int32())]
)


@pytest.fixture
def day_file(cfg) -> Path:
    return write_skus(Path(cfg.paths.skus) / f"{DATE}.parquet", sample_rows(), SAMPLE_SCHEMA)


@pytest.fixture(scope="session")
def local_night(tiny_models, tmp_path_factory):
    """One night of `sample_rows()` on the tests' config, local executor, 1 worker, batch size 4, shared by the
    session's tests that only read it (the reference of byte-for-byte comparisons): (its config, its summary).
    Read-only: a test that changes a night's outputs runs its own."""
    from factory.job.run import run

    root = tmp_path_factory.mktemp("local-night")
    cfg = with_run(make_cfg(tiny_models, root), executor="local", workers=1, batch_size=4)
    write_skus(Path(cfg.paths.skus) / f"{DATE}.parquet", sample_rows(), SAMPLE_SCHEMA)
    return cfg, run(cfg, DATE)


@pytest.fixture(scope="session")
def loaded_worker(tiny_models, tmp_path_factory):
    """A loaded Worker of the tests' config (pipeline, CLIP, default quality and templates) for `run(...,
    worker=loaded_worker)` on the local executor: nights whose subject is their input skip the model loads. Only for
    configs equal to `cfg`'s but for paths and the executor; each run points it at its own output."""
    from factory.job.night_plan import local_worker

    root = tmp_path_factory.mktemp("local-worker")
    cfg = with_run(make_cfg(tiny_models, root), executor="local")
    return local_worker(cfg, cfg.paths.output)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session; `run()` joins it instead of starting its own."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")  # never a stale cluster
    yield ray
    ray.shutdown()


_S3_PREFIXES = itertools.count()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS) for the session, with bucket `adfactory`; see tests/s3_server.py."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_uri(s3_server, monkeypatch, request) -> str:
    """A fresh `s3://adfactory/<test>-<n>` prefix, with the AWS_* variables of the server set for this test."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"s3://{BUCKET}/{name}-{next(_S3_PREFIXES)}"


def read_manifests(output: str | Path, date: str = DATE) -> dict[str, list[dict]]:
    """The night's rows of the approved/review/rejected tables under an output root (a directory or a URI)."""
    from factory.io.layout import MANIFEST_KINDS, read_manifest
    from factory.io.storage import open_store

    store = open_store(str(output))
    return {kind: read_manifest(store, kind, date).to_pylist() for kind in MANIFEST_KINDS}


def demo_config_file(path: Path, cfg: FactoryConfig, run: dict | None = None) -> Path:
    """data/demo.toml pointed at the test's models and the repo's templates (for CLI subprocesses), plus `run`
    keys (e.g. part_images = 1 for tests that watch resume parts appear mid-run)."""
    m = cfg.model
    text = (REPO / "data" / "demo.toml").read_text()
    # demo.toml's relative reference_dir means data/reference next to it: keep it pointing there from a tmp copy
    text = re.sub(r'(?m)^reference_dir = "[^"]*"', f'reference_dir = "{REPO / "data" / "reference"}"', text)
    text += f'\n[model]\npipeline = "{m.pipeline}"\nclip_pretrained = "{m.clip_pretrained}"\n'
    text += f'clip_config_dir = "{m.clip_config_dir}"\n[paths]\ntemplates = "{REPO / "templates"}"\n'
    if run:
        text = re.sub(r"(?m)^\[run\]$", "[run]\n" + _toml_keys(run).rstrip("\n"), text, count=1)
    path.write_text(text)
    return path


def cli_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "factory.cli", *args]


def cli_env(extra: dict | None = None) -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout's `factory` first, whatever the working directory."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


def cli(
    *args: str, cwd: Path = REPO, env: dict | None = None, timeout: int = 300, umask: int = -1
) -> subprocess.CompletedProcess:
    """Run `adfactory ARGS` as a real subprocess (exit codes, stderr, its own Ray cluster); umask -1 = inherited."""
    return subprocess.run(
        cli_args(*args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(env),
        start_new_session=True,
        umask=umask,
    )


def _toml_keys(values: dict) -> str:
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def small_config_file(path: Path, cfg, run: dict | None = None) -> Path:
    """The tests' config (quarter-scale buckets, 2 steps, the test models) as a file, for CLI subprocesses, plus
    `run` keys (e.g. part_images = 1 for tests that watch resume parts appear mid-run)."""
    m = cfg.model
    text = f'[model]\npipeline = "{m.pipeline}"\nclip_pretrained = "{m.clip_pretrained}"\n'
    text += f'clip_config_dir = "{m.clip_config_dir}"\n[paths]\ntemplates = "{cfg.paths.templates}"\n'
    text += f"[quality]\nclip_threshold = {cfg.quality.clip_threshold}\n"
    if run:
        text += "[run]\n" + _toml_keys(run)
    for b in TEST_BUCKETS:
        text += f'[[planner.buckets]]\nname = "{b.name}"\nwidth = {b.width}\nheight = {b.height}\nsteps = {b.steps}\n'
    path.write_text(text)
    return path
