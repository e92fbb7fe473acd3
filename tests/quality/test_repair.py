"""Inpaint repair with the tiny SD1.5 and SDXL pipelines: shared weights, paste-back exactness, determinism."""

import numpy as np
import pytest
import torch
from PIL import Image

from factory.config import ModelConfig
from factory.errors import ModelError
from factory.generation.models import load_pipeline
from factory.quality import defects
from factory.quality.repair import Repairer, RepairItem, inference_steps, repair_seed, repair_steps
from factory.tools.builders.tiny_models import build_tiny_sdxl
from tests.quality.test_checks import blocks

PROMPT = "product photography of a red sneaker, white background"
NEGATIVE = "blurry, deformed"
SEED = 1234


@pytest.fixture(scope="module")
def sd(tiny_models):
    return load_pipeline(ModelConfig(pipeline=str(tiny_models["pipeline"])), "cpu", torch.float32)


@pytest.fixture(scope="module")
def image():
    return blocks(size=64)


@pytest.fixture(scope="module")
def quadrant_mask():
    mask, changed = defects.build_mask((64, 64), (32, 32, 64, 64), dilate=2, blur=2)
    return mask, changed


def outside_equal_inside_changed(original, repaired, mask):
    a, b, m = np.asarray(original), np.asarray(repaired), np.asarray(mask)
    assert repaired.size == original.size and repaired.mode == "RGB"
    assert np.array_equal(a[m == 0], b[m == 0])  # byte-identical wherever the mask is 0
    inside = m == 255
    return np.abs(a[inside].astype(int) - b[inside].astype(int)).mean()


def test_inference_steps_runs_the_requested_steps():
    assert inference_steps(4, 1.0) == 4
    assert inference_steps(4, 0.4) == 10 and int(10 * 0.4) == 4  # naive: int(4 * 0.4) = 1 step
    for steps in range(1, 9):
        for strength in (0.05, 0.1, 0.3, 0.35, 0.4, 0.5, 0.7, 0.9, 1.0):
            n = inference_steps(steps, strength)
            assert int(n * strength) >= steps and int((n - 1) * strength) < steps
    assert inference_steps(4, 0.05, max_steps=50) == 50  # capped: int(50 * 0.05) = 2 steps run
    with pytest.raises(ValueError):
        inference_steps(4, 0.01, max_steps=50)
    with pytest.raises(ValueError):
        inference_steps(4, 0.0)


def test_repair_seed_is_stable_and_distinct():
    assert repair_seed(SEED, 0) == repair_seed(SEED, 0)
    seeds = {repair_seed(s, a) for s in range(20) for a in range(3)}
    assert len(seeds) == 60 and all(0 <= s < 2**63 for s in seeds)
    assert repair_seed(SEED, 0) not in {SEED, SEED + 1}


def test_sd_repair_shares_weights_pastes_back_exactly_and_is_deterministic(sd, image, quadrant_mask):
    repairer = Repairer(sd)
    assert type(repairer.pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert repairer.pipe.unet is sd.unet and repairer.pipe.unet.config.in_channels == 4  # no second copy
    assert repairer.pipe.vae is sd.vae and repairer.pipe.text_encoder is sd.text_encoder
    assert repairer.pipe.scheduler is not sd.scheduler  # private scheduler state

    def generate():
        g = torch.Generator("cpu").manual_seed(SEED)
        return sd(PROMPT, width=64, height=64, num_inference_steps=2, generator=g, output_type="np").images

    before = generate()
    mask, changed = quadrant_mask
    first = repairer.repair(image, PROMPT, NEGATIVE, SEED, mask, steps=2)
    assert outside_equal_inside_changed(image, first, mask) > 5  # repainted inside the mask
    x0, y0, x1, y1 = changed
    outside = np.ones((64, 64), dtype=bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(np.asarray(image)[outside], np.asarray(first)[outside])

    again = repairer.repair(image, PROMPT, NEGATIVE, SEED, mask, steps=2)
    assert first.tobytes() == again.tobytes()
    retry = repairer.repair(image, PROMPT, NEGATIVE, SEED, mask, steps=2, attempt=1)
    assert retry.tobytes() != first.tobytes()  # a retry draws new noise
    assert np.array_equal(generate(), before)  # repairing did not disturb generation

    # Without the crop, and in batch-invariant numerics: still exact outside the mask and deterministic.
    invariant = Repairer(sd, batch_invariant=True)
    a = invariant.repair(image, PROMPT, NEGATIVE, SEED, mask, padding=None, strength=0.5, steps=2)
    b = invariant.repair(image, PROMPT, NEGATIVE, SEED, mask, padding=None, strength=0.5, steps=2)
    assert a.tobytes() == b.tobytes() and outside_equal_inside_changed(image, a, mask) > 5

    empty = Image.new("L", (64, 64), 0)
    assert repairer.repair(image, PROMPT, NEGATIVE, SEED, empty).tobytes() == image.tobytes()
    with pytest.raises(ValueError):
        repairer.repair(image, PROMPT, NEGATIVE, SEED, Image.new("L", (32, 32), 255))


def test_sdxl_repair(image, quadrant_mask):
    pipe = build_tiny_sdxl().to("cpu")
    pipe.set_progress_bar_config(disable=True)
    repairer = Repairer(pipe)
    assert type(repairer.pipe).__name__ == "StableDiffusionXLInpaintPipeline"
    assert repairer.pipe.unet is pipe.unet and repairer.pipe.text_encoder_2 is pipe.text_encoder_2
    mask, _ = quadrant_mask
    first = repairer.repair(image, PROMPT, NEGATIVE, SEED, mask)  # the defaults: strength 0.4, 4 steps, crop
    assert outside_equal_inside_changed(image, first, mask) > 5
    assert repairer.repair(image, PROMPT, NEGATIVE, SEED, mask).tobytes() == first.tobytes()


def test_dedicated_9_channel_inpaint_unet(sd, image, quadrant_mask, tmp_path):
    from diffusers import UNet2DConditionModel

    config = dict(sd.unet.config)
    config["in_channels"] = 9  # latents + mask + masked-image latents, as sd-1.5-inpainting
    torch.manual_seed(0)
    UNet2DConditionModel.from_config(config).save_pretrained(tmp_path / "inpaint-unet")
    repairer = Repairer(sd, inpaint_unet=tmp_path / "inpaint-unet")
    assert repairer.pipe.unet is not sd.unet and repairer.pipe.unet.config.in_channels == 9
    assert repairer.pipe.vae is sd.vae and sd.unet.config.in_channels == 4  # the generation pipeline is untouched
    mask, _ = quadrant_mask
    out = repairer.repair(image, PROMPT, NEGATIVE, SEED, mask, steps=2)
    assert outside_equal_inside_changed(image, out, mask) > 5

    with pytest.raises(ModelError, match="no config.json"):
        Repairer(sd, inpaint_unet=tmp_path / "missing")
    config["cross_attention_dim"] = 64
    UNet2DConditionModel.from_config(config).save_pretrained(tmp_path / "other")
    with pytest.raises(ModelError, match="cross_attention_dim"):
        Repairer(sd, inpaint_unet=tmp_path / "other")


def test_batched_repair_equals_single_calls_and_keeps_outside_pixels(sd):
    """Three images with different masks and seeds in one call give the bytes of three single calls
    (batch-invariant numerics), and no pixel outside a mask changes."""
    repairer = Repairer(sd, batch_invariant=True)
    boxes = [(32, 32, 64, 64), (0, 0, 24, 40), (16, 8, 48, 32)]
    items = []
    for i, box in enumerate(boxes):
        mask, _ = defects.build_mask((64, 64), box, dilate=2, blur=2)
        items.append(RepairItem(blocks(size=64, seed=i), mask, f"{PROMPT} {i}", NEGATIVE, SEED + i, attempt=i % 2))
    batched = repairer.repair_batch(items, steps=2)
    for it, out in zip(items, batched):
        single = repairer.repair(it.image, it.prompt, it.negative_prompt, it.seed, it.mask, steps=2, attempt=it.attempt)
        assert out.tobytes() == single.tobytes()
        assert outside_equal_inside_changed(it.image, out, it.mask) > 5


def test_repair_steps_scale_with_strength():
    assert [repair_steps(s, 0.4) for s in (1, 2, 4, 6, 8)] == [1, 1, 2, 3, 4]
    assert repair_steps(4, 1.0) == 4 and repair_steps(4, 0.5) == 2 and repair_steps(4, 0.05) == 1


def _encode_counted(repairer, items, **kwargs):
    """(images, VAE encode calls) of one repair_batch call; the count from a wrapper on the real VAE's method."""
    vae, calls = repairer.pipe.vae, []
    encode = vae.encode
    vae.encode = lambda *a, **k: calls.append(1) or encode(*a, **k)
    try:
        return repairer.repair_batch(items, **kwargs), len(calls)
    finally:
        del vae.encode


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_shortcuts_skip_the_unused_masked_image_encode_with_the_same_bytes(sd, kind):
    """A 4-channel UNet never reads the masked-image latents: one VAE encode per repaired image instead of two,
    and the bytes of diffusers' own inpaint pipeline (which encodes both) over the same modules."""
    from factory.quality.repair import inpaint_pipeline

    pipe = sd if kind == "sd" else build_tiny_sdxl().to("cpu")
    fast = Repairer(pipe, batch_invariant=True)
    stock = Repairer(pipe, batch_invariant=True)
    stock.pipe = inpaint_pipeline(pipe, scheduler=type(pipe.scheduler).from_config(pipe.scheduler.config))
    stock.pipe.set_progress_bar_config(disable=True)
    assert type(stock.pipe).__name__ == type(fast.pipe).__name__ and type(stock.pipe) is not type(fast.pipe)
    items = [
        RepairItem(
            blocks(size=64, seed=i), defects.build_mask((64, 64), box, dilate=2, blur=2)[0], PROMPT, "", SEED + i, i
        )
        for i, box in enumerate([(32, 32, 64, 64), (0, 0, 24, 40)])
    ]
    ours, ours_calls = _encode_counted(fast, items, steps=2)
    theirs, their_calls = _encode_counted(stock, items, steps=2)
    assert (ours_calls, their_calls) == (2, 4)
    assert [im.tobytes() for im in ours] == [im.tobytes() for im in theirs]
    assert fast.pipe._execution_device == torch.device("cpu")


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_inpaint_pipeline_is_what_autopipeline_builds(sd, kind):
    """Built directly (no AutoPipeline import): the class, shared modules and config options from_pipe gives."""
    from diffusers import AutoPipelineForInpainting

    from factory.quality.repair import inpaint_pipeline

    pipe = sd if kind == "sd" else build_tiny_sdxl().to("cpu")
    ours, auto = inpaint_pipeline(pipe), AutoPipelineForInpainting.from_pipe(pipe)
    assert type(ours) is type(auto)
    assert all(ours.components[k] is v for k, v in auto.components.items())
    public = {k: v for k, v in auto.config.items() if not k.startswith("_")}
    assert {k: v for k, v in ours.config.items() if not k.startswith("_")} == public


def test_building_the_repairer_does_not_import_autopipeline(tiny_models):
    """AutoPipeline imports every pipeline family diffusers has (~0.6 s of a worker's start-up)."""
    import subprocess
    import sys

    from tests.conftest import cli_env

    code = (
        "import sys, torch\n"
        "from factory.config import ModelConfig\n"
        "from factory.generation.models import load_pipeline\n"
        "from factory.quality.repair import Repairer\n"
        f"Repairer(load_pipeline(ModelConfig(pipeline={str(tiny_models['pipeline'])!r}), 'cpu', torch.float32))\n"
        "assert 'diffusers.pipelines.auto_pipeline' not in sys.modules, 'imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=cli_env())
    assert res.returncode == 0, res.stderr[-2000:]
