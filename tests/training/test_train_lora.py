"""`adfactory train-lora` on the embedded tiny LCM model: a real peft LoRA trained on generated striped images,
saved in diffusers format and loaded back with `load_lora_weights`. A tiny random model proves plumbing and the
direction of the objective, never image quality."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from factory.config import ModelConfig, load_config
from factory.errors import ConfigError, TrainingDataError
from factory.generation.models import load_pipeline, model_fingerprint
from factory.training.common import WEIGHTS_NAME, TrainArgs
from factory.training.data import load_pixels, read_examples
from factory.training.train import train, validate_args
from tests.conftest import cli

PALETTES = [((220, 30, 30), (250, 240, 200)), ((200, 40, 40), (240, 230, 190)), ((230, 20, 50), (255, 250, 210))]
CAPTION = "red and cream horizontal stripes"
SIDE = 64
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # 2 shared cores: torch's thread pool oversubscribes them 20× (measured)


def stripes(i: int, side: int = SIDE) -> Image.Image:
    """8 px horizontal bands of a two-colour palette; the phase alternates between images."""
    a = np.zeros((side, side, 3), np.uint8)
    for y in range(side):
        a[y, :] = PALETTES[i % 3][((y + 8 * (i % 2)) // 8) % 2]
    return Image.fromarray(a)


def write_stripes(folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        stripes(i).save(folder / f"stripe{i}.png")
    (folder / "stripe0.txt").write_text("red and cream horizontal stripes, brand style\n")
    return folder


def config_file(tmp_path: Path, pipeline: Path) -> Path:
    path = tmp_path / "train.toml"
    path.write_text(f'[model]\npipeline = "{pipeline}"\n')
    return path


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def generate(pipe, n: int = 8) -> tuple[torch.Tensor, np.ndarray]:
    """The pipeline's 4-step latents for n seeds and their decoded pixels (0..255), as `output_type="np"` gives."""
    gens = [torch.Generator().manual_seed(s) for s in range(n)]
    kw = dict(num_inference_steps=4, guidance_scale=1.0, height=SIDE, width=SIDE, generator=gens)
    latents = pipe([CAPTION] * n, output_type="latent", **kw).images
    with torch.no_grad():
        img = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return latents, ((img / 2 + 0.5).clamp(0, 1) * 255).permute(0, 2, 3, 1).numpy()


def style_stats(latents: torch.Tensor, img: np.ndarray, train_latents: torch.Tensor) -> dict[str, float]:
    """Distance of the generated latents to the nearest training latent; palette distance and horizontal-stripe
    energy (share of the row profile's spectrum at the 16 px period) of the decoded pixels."""
    pal = np.array([c for p in PALETTES for c in p], np.float32)
    prof = img.mean(axis=(2, 3))
    prof -= prof.mean(axis=1, keepdims=True)
    spec = np.abs(np.fft.rfft(prof, axis=1)) ** 2
    return {
        "latent_dist": torch.cdist(latents.flatten(1), train_latents.flatten(1)).min(dim=1).values.mean().item(),
        "palette_dist": float(np.linalg.norm(img[..., None, :] - pal, axis=-1).min(axis=-1).mean()),
        "stripe_energy": float((spec[:, SIDE // 16] / spec[:, 1:].sum(axis=1)).mean()),
    }


def test_train_lora_cli_trains_saves_and_loads(tiny_models, tmp_path, one_thread):
    images, out = write_stripes(tmp_path / "images"), tmp_path / "lora"
    config = config_file(tmp_path, tiny_models["pipeline"])
    args = ["--images", str(images), "--output", str(out), "--config", str(config)]
    args += ["--caption", CAPTION, "--rank", "8", "--steps", "40", "--lr", "1e-2", "--resolution", str(SIDE)]
    r = cli("train-lora", *args, "--seed", "3", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert "step 40/40 (100%)" in r.stderr  # no TTY: plain progress lines, not a bar
    summary = json.loads((out / "train.json").read_text())
    assert summary["steps"] == 40 and summary["images"] == 6 and summary["method"] == "lora"
    assert summary["loss_end"] < summary["loss_start"], summary
    assert summary["arguments"]["rank"] == 8 and summary["arguments"]["seed"] == 3
    assert summary["base_model"]["guidance_scale"] == 1.0  # the LCM UNet's w-embedding trained under

    pipe = load_pipeline(_model(tiny_models), "cpu", torch.float32)
    assert summary["base_model"]["fingerprint"] == model_fingerprint(_model(tiny_models))
    examples = read_examples(images, CAPTION, SIDE)
    with torch.no_grad():
        px = torch.stack([load_pixels(e, SIDE) for e in examples])
        train_latents = pipe.vae.encode(px).latent_dist.mode() * pipe.vae.config.scaling_factor
    latents_before, pixels_before = generate(pipe)
    pipe.load_lora_weights(str(out))  # the directory: load_lora_weights finds pytorch_lora_weights.safetensors
    latents_after, pixels_after = generate(pipe)
    before = style_stats(latents_before, pixels_before, train_latents)
    after = style_stats(latents_after, pixels_after, train_latents)
    print(f"\nloss {summary['loss_start']:.4f} -> {summary['loss_end']:.4f}; before {before}; after {after}")
    assert np.abs(pixels_after - pixels_before).mean() > 0.1  # the adapter is applied
    # Toward the training images where the tiny model can show it (its random VAE cannot render stripes).
    assert after["latent_dist"] < 0.9 * before["latent_dist"]


def _model(tiny_models) -> ModelConfig:
    return ModelConfig(pipeline=str(tiny_models["pipeline"]))


def test_same_seed_same_weights_and_text_encoder_lora(tiny_models, tmp_path, one_thread):
    from safetensors import safe_open

    cfg = load_config(config_file(tmp_path, tiny_models["pipeline"]))
    args = TrainArgs(
        images=write_stripes(tmp_path / "images", 3), output=tmp_path / "a", caption=CAPTION, rank=4, steps=3,
        resolution=SIDE, batch_size=2, seed=7, text_encoder=True,
    )  # fmt: skip
    a = train(cfg, args)
    b = train(cfg, replace(args, output=tmp_path / "b"))
    assert a["weights_sha256"] == b["weights_sha256"]
    assert (tmp_path / "a" / WEIGHTS_NAME).read_bytes() == (tmp_path / "b" / WEIGHTS_NAME).read_bytes()
    mask = os.umask(0)
    os.umask(mask)
    for name in (WEIGHTS_NAME, "train.json"):  # written via private temp names, then given the umask's mode
        assert (tmp_path / "a" / name).stat().st_mode & 0o777 == 0o666 & ~mask
    with safe_open(str(tmp_path / "a" / WEIGHTS_NAME), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    pipe = load_pipeline(_model(tiny_models), "cpu", torch.float32)
    pipe.load_lora_weights(str(tmp_path / "a"))
    lora_layers = lambda m: {n for n, x in m.named_modules() if hasattr(x, "lora_A")}  # noqa: E731
    assert len(lora_layers(pipe.text_encoder)) == 2 * 4  # 2 CLIP layers x q/k/v/out_proj
    assert len(lora_layers(pipe.unet)) == 8 * 4  # 8 attention layers (attn1/attn2) x to_q/k/v/out.0


def _bad(tmp_path: Path, name: str, make) -> tuple[Path, Path]:
    folder = write_stripes(tmp_path / "images", 2)
    bad = folder / name
    make(bad)
    return folder, bad


BAD_INPUTS = {
    "unreadable": ("broken.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")),
    "truncated": ("cut.png", lambda p: p.write_bytes(_png_bytes(stripes(0))[:-30])),
    "rgba": ("alpha.png", lambda p: stripes(0).convert("RGBA").save(p)),
    "grayscale": ("gray.png", lambda p: stripes(0).convert("L").save(p)),
    "too_small": ("small.png", lambda p: stripes(0, 32).save(p)),
    "caption_not_utf8": ("stripe1.txt", lambda p: p.write_bytes(b"\xff\xfe caption")),
    "caption_empty": ("stripe1.txt", lambda p: p.write_text("  \n")),
}


def _png_bytes(im: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_training_input_is_a_typed_error_naming_the_file(tmp_path, case):
    name, make = BAD_INPUTS[case]
    folder, bad = _bad(tmp_path, name, make)
    with pytest.raises(TrainingDataError) as exc:
        read_examples(folder, CAPTION, SIDE)
    assert str(bad) in str(exc.value) and exc.value.exit_code == 2


def test_bad_input_exits_2_from_the_cli_before_any_model_loads(tmp_path):
    folder, bad = _bad(tmp_path, "alpha.png", BAD_INPUTS["rgba"][1])
    r = cli("train-lora", "--images", str(folder), "--output", str(tmp_path / "o"), "--resolution", "64")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert f"error: {bad}: image mode is RGBA, not RGB" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_no_images_and_bad_flags(tmp_path, tiny_models, one_thread):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(TrainingDataError, match="no images") as exc:
        read_examples(tmp_path / "empty", CAPTION, SIDE)
    assert str(tmp_path / "empty") in str(exc.value)
    base = TrainArgs(images=write_stripes(tmp_path / "images", 1), output=tmp_path / "o", resolution=SIDE)
    for change, needle in [
        ({"method": "dreambooth"}, "--method"),
        ({"resolution": 60}, "--resolution"),
        ({"loss_type": "l1", "method": "lcm-distill"}, "--loss-type"),
        ({"text_encoder": True, "method": "lcm-distill"}, "--text-encoder"),
        ({"w_min": 9.0, "w_max": 3.0, "method": "lcm-distill"}, "--w-min"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            validate_args(replace(base, **change))
    # The embedded model is already LCM-distilled: it cannot be an lcm-distill teacher.
    cfg = load_config(config_file(tmp_path, tiny_models["pipeline"]))
    with pytest.raises(ConfigError, match="time_cond_proj_dim") as exc:
        train(cfg, replace(base, method="lcm-distill", steps=1))
    assert exc.value.exit_code == 2
