"""`adfactory train-lora --method lcm-distill` on a tiny *non-LCM* teacher that denoises its training data.

The teacher: the tiny random base (`build_tiny_sd_base`) made a real, if tiny, denoiser of the six striped training
images, test-locally: its VAE scaling factor set to 1/std of their latents (how SD's 0.18215 was chosen; the random
VAE's latents have std ~0.05 at 0.18215) and a short full fine-tune of its UNet with the plain noise-prediction MSE
(10 % empty captions, so the CFG's unconditional branch is trained too) — a brand's own fine-tuned base, then distilled,
which is what the method is for. A *random* teacher denoises nothing: its many-step samples (latent std ~12) lie far
from its training latents, and the distillation moved only the 1- and 2-step outputs closer (docs/styles.md).

What this proves: the distillation runs end to end (DDIM solver, CFG teacher, boundary scalings, huber loss), its loss
falls, the LoRA it writes loads into an LCMScheduler pipeline with every trained layer (attention, convs, feed-forwards,
time embedding), and — the consistency objective as implemented here, on data the teacher models — the 1-step output
(one jump from pure noise) and the 2-step output (one re-noising at t=499) get closer to the teacher's 50-step DDIM
(ODE) solution from the same noise at the same guidance, over 64 seeds. What it does not prove: that the 4-step output
gets closer. It is printed, not asserted: within this CPU budget it fell in 7 of 11 teacher/length pairs measured and
rose in the other 4 (this test's own teacher: 0.577 -> 0.586; docs/styles.md, "Training a brand style"), so a
distillation this short (600 steps of 6 images) does not robustly fix the weak-signal jump at t=759. Nor are the two
stripe phases' clusters the cause: on one-mode data (one palette and phase, jitter) it rose with all 3 teachers at 600
and at 2000 steps, beyond the seed noise in 5 of those 6 (docs/styles.md). Nor image quality (a random VAE decodes
nothing), real weights, real data or scale.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler, StableDiffusionPipeline
from safetensors import safe_open

from factory.config import load_config
from factory.tools.builders.tiny_models import build_tiny_sd_base
from factory.training.common import WEIGHTS_NAME, LatentCache, TrainArgs, encode_text
from factory.training.data import read_examples
from factory.training.train import train
from tests.training.test_train_lora import CAPTION, SIDE, config_file, one_thread, write_stripes  # noqa: F401

STEPS = (1, 2, 4)  # LCM steps compared
W = 2.0  # guidance of the distillation (LCM form); the teacher's CFG scale for the same guidance is W + 1
TEACHER_STEPS = 1000  # full fine-tune of the tiny base UNet into a denoiser of the training latents
DISTILL_STEPS, DISTILL_BATCH = 600, 6
REFERENCE_STEPS = 50  # the teacher's DDIM on the distillation's own 50-step grid (trailing: 999, 979, ..., 19)
SEEDS = range(100, 164)  # 64 initial noises: the 4-step distance is a count of clusters hit, 4 seeds are too few


def denoiser_teacher(images: Path, folder: Path, seed: int = 0) -> Path:
    """The tiny random base made a denoiser of `images`: unit-variance latents, then a full UNet fine-tune."""
    pipe = build_tiny_sd_base()
    examples = read_examples(images, CAPTION, SIDE)
    raw = LatentCache(pipe.vae, examples, SIDE, "cpu").latents / pipe.vae.config.scaling_factor
    pipe.vae.register_to_config(scaling_factor=float(1 / raw.std()))
    _fine_tune(pipe, raw * pipe.vae.config.scaling_factor, [e.caption for e in examples], seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def _fine_tune(pipe, latents: torch.Tensor, captions: list[str], seed: int) -> None:
    """Noise-prediction MSE at uniform timesteps, AdamW lr 1e-3 on every UNet weight, 10 % empty captions."""
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        text, empty = encode_text(pipe, captions, "cpu"), encode_text(pipe, [""], "cpu")
    unet = pipe.unet.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(TEACHER_STEPS):
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(latents),), generator=gen)
        drop = (torch.rand(len(latents), generator=gen) < 0.1).view(-1, 1, 1)
        cond = torch.where(drop, empty.expand_as(text), text)
        loss = F.mse_loss(unet(sched.add_noise(latents, noise, t), t, encoder_hidden_states=cond).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    unet.eval().requires_grad_(False)


def _pipe(path: Path, scheduler, **config):
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, steps: int, guidance: float) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    kw = dict(num_inference_steps=steps, guidance_scale=guidance, height=SIDE, width=SIDE, generator=gens)
    return pipe([CAPTION] * len(gens), output_type="latent", **kw).images


@pytest.mark.slow
def test_lcm_distill_brings_one_and_two_step_output_to_the_teachers_ode_solution(tmp_path, one_thread):  # noqa: F811
    images = write_stripes(tmp_path / "images")
    teacher_dir = denoiser_teacher(images, tmp_path / "teacher")
    cfg = load_config(config_file(tmp_path, teacher_dir))
    args = TrainArgs(
        images=images, output=tmp_path / "lcm", method="lcm-distill", caption=CAPTION, rank=8, steps=DISTILL_STEPS,
        lr=1e-3, resolution=SIDE, batch_size=DISTILL_BATCH, seed=0, num_ddim_timesteps=50, w_min=W, w_max=W,
    )  # fmt: skip
    summary = train(cfg, args)
    assert summary == json.loads((tmp_path / "lcm" / "train.json").read_text())
    assert summary["method"] == "lcm-distill" and summary["loss_end"] < summary["loss_start"], summary

    ref = _run(_pipe(teacher_dir, DDIMScheduler, timestep_spacing="trailing"), REFERENCE_STEPS, W + 1)
    # LCMScheduler's original_inference_steps (50) = num_ddim_timesteps: its 4 steps (999, 759, 499, 259) lie on
    # the solver's grid, where the consistency function was trained.
    student = _pipe(teacher_dir, LCMScheduler, original_inference_steps=args.num_ddim_timesteps)
    before = {n: _run(student, n, 1.0) for n in STEPS}
    student.load_lora_weights(str(tmp_path / "lcm"))
    after = {n: _run(student, n, 1.0) for n in STEPS}

    with safe_open(str(tmp_path / "lcm" / WEIGHTS_NAME), "pt") as f:
        saved = {k.removeprefix("unet.").rsplit(".lora_", 1)[0] for k in f.keys()}
    loaded = {n for n, m in student.unet.named_modules() if hasattr(m, "lora_A") and "default_0" in m.lora_A}
    assert saved == loaded and any("conv1" in n for n in saved) and any("attn1.to_q" in n for n in saved)

    rmse = lambda a, b: float(((a - b) ** 2).mean() ** 0.5)  # noqa: E731
    dist = {n: (round(rmse(before[n], ref), 3), round(rmse(after[n], ref), 3)) for n in STEPS}
    print(
        f"\nlcm-distill loss {summary['loss_start']:.4f} -> {summary['loss_end']:.4f}; LCM n-step vs the teacher's "
        f"{REFERENCE_STEPS}-step DDIM (CFG {W + 1}), latent RMSE over {len(SEEDS)} seeds without -> with the LoRA: "
        f"{dist}; training latents' std 1"
    )
    assert dist[1][1] < dist[1][0]  # one consistency jump from pure noise
    assert dist[2][1] < dist[2][0]  # jump, re-noise to t=499 (signal ~half the variance), jump
    # dist[4] is printed only: it rose in 4 of 11 runs here, and systematically on one-mode data (docstring).
