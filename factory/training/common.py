"""What both training methods share: the arguments, the frozen base model, cached latents and text embeddings,
the batch order, progress reporting, and the diffusers-format LoRA + train.json outputs."""

from __future__ import annotations

import inspect
import logging
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.config import FactoryConfig
from factory.errors import ConfigError
from factory.training.data import Example, load_pixels

log = logging.getLogger(__name__)

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # the name `load_lora_weights(dir)` looks for
VAE_CHUNK = 8  # images per VAE encode call while caching latents


@dataclass(frozen=True)
class TrainArgs:
    images: Path
    output: Path
    method: str = "lora"  # factory.training.train.METHODS
    caption: str = ""  # used for images without a same-name .txt
    rank: int = 16
    steps: int = 1000
    lr: float = 1e-4
    resolution: int = 512
    batch_size: int = 4
    seed: int = 0
    text_encoder: bool = False  # also train a LoRA on the text encoder (method lora only)
    # lcm-distill only (defaults of diffusers' train_lcm_distill_lora_sd_wds.py, huber as its README runs it)
    num_ddim_timesteps: int = 50
    w_min: float = 5.0
    w_max: float = 15.0
    loss_type: str = "huber"  # factory.training.lcm_distill.LOSS_TYPES
    huber_c: float = 0.001


@dataclass
class Base:
    """The base model, frozen, in float32 on the training device."""

    pipe: Any  # StableDiffusionPipeline (scheduler switched to LCM by load_pipeline; only its config is used)
    noise_scheduler: Any  # DDPMScheduler with the checkpoint's betas and prediction type
    device: str
    fingerprint: str


def load_base(cfg: FactoryConfig) -> Base:
    """Load `model.pipeline` (and `model.lora`, fused) exactly as a night does, in float32, all weights frozen."""
    import torch
    from diffusers import DDPMScheduler

    from factory.generation.models import load_pipeline, model_fingerprint
    from factory.generation.runtime import local_device

    device, _ = local_device(cfg)
    # float32 whatever model.dtype says: trainable LoRA weights must be fp32 and the frozen ones stay simple.
    pipe = load_pipeline(cfg.model, device, torch.float32)
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise ConfigError(f"{cfg.model.pipeline}: train-lora supports SD1.5-family pipelines, not SDXL")
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.requires_grad_(False)
    accepted = inspect.signature(DDPMScheduler.__init__).parameters
    sched = DDPMScheduler.from_config({k: v for k, v in pipe.scheduler.config.items() if k in accepted})
    if sched.config.prediction_type not in ("epsilon", "v_prediction"):
        raise ConfigError(f"{cfg.model.pipeline}: prediction_type {sched.config.prediction_type!r} is not supported")
    return Base(pipe=pipe, noise_scheduler=sched, device=device, fingerprint=model_fingerprint(cfg.model))


class LatentCache:
    """The frozen VAE's latents (posterior mean × scaling factor) of every image, computed once.

    The posterior mean, not a sample as `train_text_to_image_lora.py` draws: a real SD VAE's posterior std is
    negligible next to the latents' spread, so a sample adds only noise; the tiny random VAE's std is ~1 (5× the
    spread of its means) and a sample would bury the images in noise.
    """

    def __init__(self, vae: Any, examples: list[Example], resolution: int, device: str):
        import torch

        chunks = []
        with torch.no_grad():
            for i in range(0, len(examples), VAE_CHUNK):
                px = torch.stack([load_pixels(e, resolution) for e in examples[i : i + VAE_CHUNK]]).to(device)
                chunks.append(vae.encode(px).latent_dist.mode())
        self.latents = torch.cat(chunks) * vae.config.scaling_factor

    def __getitem__(self, idx: Any) -> Any:
        return self.latents[idx.to(self.latents.device)]


def cpu_randn(shape: Any, gen: Any) -> Any:
    import torch

    return torch.randn(shape, generator=gen)


def encode_text(pipe: Any, captions: list[str], device: str) -> Any:
    """CLIP hidden states for the captions, as the pipeline encodes prompts (max-length padding, truncation)."""
    tok = pipe.tokenizer
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    return pipe.text_encoder(ids.input_ids.to(device))[0]


def batches(n: int, batch_size: int, steps: int, gen: Any) -> Iterator[Any]:
    """`steps` index batches: seeded permutations of the images, epoch after epoch (no image twice in a batch)."""
    import torch

    size = min(batch_size, n)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < size:
            order += torch.randperm(n, generator=gen).tolist()
        yield torch.tensor(order[:size])
        del order[:size]


class StepProgress:
    """A tqdm bar on a TTY; otherwise one log line at every ~10 % of the steps (cron and CI logs)."""

    def __init__(self, total: int, desc: str):
        from tqdm.auto import tqdm

        self.total, self.done, self.next_mark, self.t0 = total, 0, 0.1, time.perf_counter()
        self.bar = tqdm(total=total, desc=desc, unit="step") if sys.stderr.isatty() else None

    def update(self, loss: float) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")
            return
        frac = self.done / self.total
        if frac >= self.next_mark or self.done == self.total:
            rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
            log.info(
                "step %d/%d (%.0f%%), loss %.4f, %.2f steps/s, eta %.0fs",
                *(self.done, self.total, 100 * frac, loss, rate, (self.total - self.done) / rate),
            )
            while self.next_mark <= frac:
                self.next_mark += 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def loss_summary(losses: list[float]) -> tuple[float, float]:
    """Mean loss of the first and of the last 10 % of the steps (at least one step each)."""
    k = max(1, math.ceil(len(losses) / 10))
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


def lora_bytes(unet: Any, text_encoder: Any | None = None, convert: bool = True) -> bytes:
    """`pytorch_lora_weights.safetensors` for `load_lora_weights`, as bytes (the caller stores them atomically).

    `convert`: diffusers' legacy key names (`lora.down`/`lora.up`), as `train_text_to_image_lora.py` saves them;
    they exist only for attention projections, so an adapter on other layers (lcm-distill's convs, feed-forwards)
    keeps peft's names (`lora_A`/`lora_B`), as `train_lcm_distill_lora_sd_wds.py` saves it: a file mixing both
    loads without its attention layers (measured: diffusers drops them with a warning)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    keys = convert_state_dict_to_diffusers if convert else dict
    # No adapter metadata: safetensors writes a metadata map in random key order (measured: same weights, other
    # bytes), and the loader infers the rank from the shapes and alpha = rank, which is what both methods train.
    kwargs: dict[str, Any] = {"unet_lora_layers": keys(get_peft_model_state_dict(unet))}
    if text_encoder is not None:
        kwargs["text_encoder_lora_layers"] = keys(get_peft_model_state_dict(text_encoder))
    with tempfile.TemporaryDirectory(prefix="adfactory-lora-") as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, safe_serialization=True, **kwargs)
        return (Path(tmp) / WEIGHTS_NAME).read_bytes()


def optimize(loss: Any, params: list[Any], optimizer: Any, losses: list[float], progress: StepProgress) -> None:
    """One training step after the forward pass: backward, clip the gradient norm at 1 (as diffusers' scripts),
    step, and record the loss."""
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    losses.append(loss.item())
    progress.update(losses[-1])
