"""Standard text-to-image LoRA (`--method lora`): the loop of diffusers' `train_text_to_image_lora.py`.

Frozen VAE, text encoder and UNet; a rank-r LoRA (alpha = r, gaussian init) on the UNet attention projections
(and, with `--text-encoder`, on the CLIP attention projections); VAE latents × scaling factor, DDPM noise at a
uniform timestep, MSE against the noise (epsilon) or the velocity (v_prediction) as the scheduler config says;
AdamW on the fp32 LoRA weights, gradient norm clipped at 1.

LCM-distilled UNets (`time_cond_proj_dim`, like the embedded tiny model) also take a guidance embedding. The loop
passes the one the pipeline passes when the factory generates: the embedding of `model.guidance_scale - 1`
(`get_guidance_scale_embedding`), so the LoRA is trained under the conditioning it will run under.
"""

from __future__ import annotations

import logging
from typing import Any

from factory.training.common import Base, LatentCache, StepProgress, TrainArgs, batches, encode_text, optimize
from factory.training.data import Example

log = logging.getLogger(__name__)

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # as diffusers' dreambooth LoRA script


def add_lora(module: Any, rank: int, targets: list[str], seed: int) -> list[Any]:
    """Attach a fresh adapter (alpha = rank, gaussian init from `seed`); returns its fp32 trainable parameters."""
    import torch
    from peft import LoraConfig

    torch.manual_seed(seed)  # peft draws the gaussian lora_A init from the global generator
    module.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets))
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def guidance_cond(pipe: Any, guidance_scale: float, n: int) -> Any:
    """The LCM guidance embedding the pipeline passes at `guidance_scale` (None for a non-LCM UNet)."""
    import torch

    dim = pipe.unet.config.time_cond_proj_dim
    if dim is None:
        return None
    w = torch.tensor(guidance_scale - 1.0).repeat(n)
    return pipe.get_guidance_scale_embedding(w, embedding_dim=dim).to(pipe.device)


def train_lora(base: Base, args: TrainArgs, examples: list[Example], guidance_scale: float) -> list[float]:
    """Train the LoRA in place on `base.pipe` (unet, and text_encoder with --text-encoder); the per-step losses."""
    import torch
    import torch.nn.functional as F

    pipe, sched, device = base.pipe, base.noise_scheduler, base.device
    gen = torch.Generator().manual_seed(args.seed)
    params = add_lora(pipe.unet, args.rank, UNET_TARGETS, args.seed)
    if args.text_encoder:
        params += add_lora(pipe.text_encoder, args.rank, TEXT_ENCODER_TARGETS, args.seed + 1)
        pipe.text_encoder.train()
    pipe.unet.train()
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    latents_cache = LatentCache(pipe.vae, examples, args.resolution, device)
    captions = [e.caption for e in examples]
    with torch.no_grad():
        cached_text = None if args.text_encoder else encode_text(pipe, captions, device)
    progress, losses = StepProgress(args.steps, "train-lora"), []
    for idx in batches(len(examples), args.batch_size, args.steps, gen):
        latents = latents_cache[idx]
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen).to(device)
        noisy = sched.add_noise(latents, noise, t)
        if args.text_encoder:
            text = encode_text(pipe, [captions[i] for i in idx.tolist()], device)
        else:
            text = cached_text[idx.to(device)]
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)
        cond = guidance_cond(pipe, guidance_scale, len(idx))
        pred = pipe.unet(noisy, t, encoder_hidden_states=text, timestep_cond=cond).sample
        loss = F.mse_loss(pred.float(), target.float())
        optimize(loss, params, optimizer, losses, progress)
    progress.close()
    pipe.unet.eval()
    pipe.text_encoder.eval()
    return losses
