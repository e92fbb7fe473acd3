"""`run.batch_size_mode = "auto"`: the batch size from free device memory (given figures: no GPU here), and the
plumbing on CPU, where auto keeps run.batch_size and run.json says so."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from factory.config import Bucket
from factory.errors import ConfigError
from factory.generation.batch_memory import (
    ACTIVATION_BYTES_PER_PIXEL,
    BATCH_CAP,
    HEADROOM,
    RESERVE_BYTES,
    model_bytes,
    plan_batch_size,
    safetensors_params,
)
from factory.generation.runtime import resolve
from factory.job.run import run
from tests.conftest import DATE, with_run

GIB = 2**30
B512 = Bucket("square", 512, 512, 4)
B768 = Bucket("poster", 768, 768, 4)


def test_largest_batch_that_fits_with_headroom_capped():
    per_image = 512 * 512 * ACTIVATION_BYTES_PER_PIXEL  # 2-byte dtype
    weights = int(3.58 * GIB)
    # A 24 GiB card: (24 x 0.85 - 1 - 3.58) GiB / 0.316 GiB per 512² image = 50 -> capped at 16.
    big = plan_batch_size(24 * GIB, weights, [B512], 2)
    assert big.batch_size == BATCH_CAP == 16 and big.per_bucket["square"] == 50 and "cap 16" in big.reason
    # Exactly 5 images' worth of room after headroom, reserve and weights: 5.
    free = int((RESERVE_BYTES + weights + 5.5 * per_image) / (1 - HEADROOM))
    assert plan_batch_size(free, weights, [B512], 2).batch_size == 5
    # The largest bucket bounds the night; each bucket's own fit is reported. float32 doubles activations.
    mixed = plan_batch_size(free, weights, [B512, B768], 2)
    assert mixed.batch_size == 2 and mixed.per_bucket == {"square": 5, "poster": 2}
    assert plan_batch_size(free, weights, [B512], 4).batch_size == 2
    with pytest.raises(ConfigError, match="do not hold the models"):
        plan_batch_size(4 * GIB, weights, [B512], 2)


def test_model_bytes_from_safetensors_headers(tiny_models):
    root = Path(tiny_models["pipeline"])
    files = sorted(root.glob("*/*.safetensors"))
    assert files
    counted = sum(v.numel() for f in files for v in load_file(str(f)).values())
    assert sum(safetensors_params(f) for f in files) == counted
    clip = Path(tiny_models["clip"]) / "open_clip_model.safetensors"
    clip_params = sum(v.numel() for v in load_file(str(clip)).values())
    assert safetensors_params(clip) == clip_params
    assert model_bytes(str(root), str(clip), 2) == 2 * counted + 4 * clip_params


def test_resolve_sizes_on_cuda_and_keeps_the_configured_size_on_cpu(cfg):
    auto = with_run(cfg, batch_size_mode="auto", batch_size=4)
    gpu = resolve(auto, "cuda", (9, 0), 80 * GIB)  # the tests' buckets are tiny: the cap decides
    assert gpu.batch_size == BATCH_CAP and "80.0 GiB free" in gpu.why["batch_size"]
    cpu = resolve(auto, "cpu")
    assert (
        cpu.batch_size == 4 and cpu.why["batch_size"] == "cpu: no device memory to size against: run.batch_size 4 kept"
    )
    fixed = resolve(with_run(cfg, batch_size=3), "cuda", (9, 0), 80 * GIB)
    assert fixed.batch_size == 3 and "batch_size" not in fixed.why


def test_auto_on_cpu_night_keeps_size_says_so_and_same_bytes(local_night, tiny_models, tmp_path):
    ref_cfg, _ = local_night
    cfg = dataclasses.replace(
        with_run(ref_cfg, batch_size_mode="auto"), paths=dataclasses.replace(ref_cfg.paths, output=str(tmp_path))
    )
    run(cfg, DATE)
    info = json.loads((tmp_path / DATE / "run.json").read_text())
    assert info["runtime"]["batch_size"] == ref_cfg.run.batch_size == 4
    assert info["runtime"]["why"]["batch_size"].startswith("cpu: no device memory")
    assert info["config"]["run"]["batch_size_mode"] == "auto"
    ref = Path(ref_cfg.paths.output) / DATE / "images"
    ours = tmp_path / DATE / "images"
    pngs = sorted(p.relative_to(ref) for p in ref.rglob("*.png"))
    assert pngs and pngs == sorted(p.relative_to(ours) for p in ours.rglob("*.png"))
    assert all((ref / p).read_bytes() == (ours / p).read_bytes() for p in pngs)
