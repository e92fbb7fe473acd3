"""LCM-LoRA distillation (`--method lcm-distill`), after diffusers' `train_lcm_distill_lora_sd_wds.py`.

Teacher: the frozen base UNet (not LCM-distilled: no `time_cond_proj_dim`). Student: a copy of it with a LoRA on
the attention, feed-forward, resnet conv and time-embedding layers (the script's default targets). Per step, for a
random DDIM-solver timestep t_{n+k} (`num_ddim_timesteps` on the 1000-step schedule, skip k = 1000 // N):

1. z_{n+k} = forward-diffused VAE latents; the student's consistency output
   f(z_{n+k}) = c_skip(t_{n+k}) z_{n+k} + c_out(t_{n+k}) x0_student (boundary scalings, timestep scaling 10);
2. the teacher's CFG estimate at a guidance w ~ U[w_min, w_max] (LCM's form: cond + w (cond - uncond)) and one
   DDIM step from t_{n+k} to t_n → z_n, the next point of the guided probability-flow ODE;
3. target f(z_n) = c_skip(t_n) z_n + c_out(t_n) x0, computed by the *same* student under no_grad (the script uses
   no separate EMA target network for LoRA);
4. huber (sqrt(d² + c²) - c) or l2 loss between the two, AdamW on the LoRA weights.

The LoRA has no guidance embedding: w is baked in, so it runs with `guidance_scale = 1` under LCMScheduler.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from factory.errors import ConfigError
from factory.training.common import (
    Base,
    LatentCache,
    StepProgress,
    TrainArgs,
    batches,
    cpu_randn,
    encode_text,
    optimize,
)
from factory.training.data import Example
from factory.training.lora import add_lora

log = logging.getLogger(__name__)

LOSS_TYPES = ("huber", "l2")
TIMESTEP_SCALING = 10.0  # LCMScheduler's timestep_scaling: the boundary scalings must match the sampler's
DISTILL_TARGETS = [
    *("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"),
    *("conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"),
]


def boundary_scalings(t: Any, sigma_data: float = 0.5) -> tuple[Any, Any]:
    """c_skip, c_out of LCMScheduler.get_scalings_for_boundary_condition_discrete, shaped to broadcast on latents."""
    scaled = TIMESTEP_SCALING * t.float()
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


class DDIMSolver:
    """The DDIM timesteps [k-1, 2k-1, ..., T-1] and one deterministic DDIM step to the previous one."""

    def __init__(self, alphas_cumprod: Any, num_train_timesteps: int, num_ddim_timesteps: int):
        import torch

        self.k = num_train_timesteps // num_ddim_timesteps
        self.timesteps = torch.arange(1, num_ddim_timesteps + 1) * self.k - 1
        prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[self.timesteps[:-1]]])
        self.alpha_prev = prev

    def step(self, x0: Any, eps: Any, index: Any) -> Any:
        a = self.alpha_prev.to(x0.device)[index].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


class Parameterisation:
    """x0 and epsilon from a model output, for the checkpoint's prediction type (epsilon or v_prediction)."""

    def __init__(self, alphas_cumprod: Any, prediction_type: str, device: str):
        self.alpha = alphas_cumprod.sqrt().to(device)
        self.sigma = (1 - alphas_cumprod).sqrt().to(device)
        self.v = prediction_type == "v_prediction"

    def x0_eps(self, out: Any, t: Any, z: Any) -> tuple[Any, Any]:
        a, s = self.alpha[t].view(-1, 1, 1, 1), self.sigma[t].view(-1, 1, 1, 1)
        if self.v:
            return a * z - s * out, a * out + s * z
        return (z - s * out) / a, out


def check_teacher(base: Base, args: TrainArgs) -> None:
    unet = base.pipe.unet
    if unet.config.time_cond_proj_dim is not None:
        raise ConfigError(
            f"the base model's UNet is already LCM-distilled (time_cond_proj_dim={unet.config.time_cond_proj_dim}): "
            "--method lcm-distill needs a non-LCM base (teacher) model in model.pipeline"
        )
    total = base.noise_scheduler.config.num_train_timesteps
    if not 1 <= args.num_ddim_timesteps <= total:
        raise ConfigError(f"--num-ddim-timesteps {args.num_ddim_timesteps} must be in 1..{total}")


def distill(base: Base, args: TrainArgs, examples: list[Example]) -> tuple[list[float], Any]:
    """Distil an LCM-LoRA into a copy of the base UNet; the per-step losses and the student UNet."""
    import torch

    check_teacher(base, args)
    pipe, sched, device = base.pipe, base.noise_scheduler, base.device
    teacher = pipe.unet.eval()
    student = copy.deepcopy(teacher)
    params = add_lora(student, args.rank, DISTILL_TARGETS, args.seed)
    student.train()
    gen = torch.Generator().manual_seed(args.seed)
    acp = sched.alphas_cumprod
    solver = DDIMSolver(acp, sched.config.num_train_timesteps, args.num_ddim_timesteps)
    param = Parameterisation(acp, sched.config.prediction_type, device)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    latents_cache = LatentCache(pipe.vae, examples, args.resolution, device)
    with torch.no_grad():
        text = encode_text(pipe, [e.caption for e in examples], device)
        uncond = encode_text(pipe, [""], device)
    progress, losses = StepProgress(args.steps, "lcm-distill"), []
    for idx in batches(len(examples), args.batch_size, args.steps, gen):
        latents = latents_cache[idx]
        loss = _step_loss(teacher, student, solver, param, sched, args, latents, text[idx.to(device)], uncond, gen)
        optimize(loss, params, optimizer, losses, progress)
    progress.close()
    return losses, student.eval()


def _step_loss(teacher, student, solver, param, sched, args, latents, text, uncond, gen) -> Any:
    import torch

    n, device = latents.shape[0], latents.device
    index = torch.randint(0, len(solver.timesteps), (n,), generator=gen)
    start = solver.timesteps[index].to(device)
    end = (start - solver.k).clamp(min=0)
    noise = cpu_randn(latents.shape, gen).to(device)
    z_start = sched.add_noise(latents, noise, start)
    w = (args.w_min + (args.w_max - args.w_min) * torch.rand(n, generator=gen)).view(-1, 1, 1, 1).to(device)

    c_skip, c_out = boundary_scalings(start)
    x0, _ = param.x0_eps(student(z_start, start, encoder_hidden_states=text).sample, start, z_start)
    online = c_skip * z_start + c_out * x0
    with torch.no_grad():
        x0_c, eps_c = param.x0_eps(teacher(z_start, start, encoder_hidden_states=text).sample, start, z_start)
        un = uncond.expand(n, -1, -1)
        x0_u, eps_u = param.x0_eps(teacher(z_start, start, encoder_hidden_states=un).sample, start, z_start)
        z_end = solver.step(x0_c + w * (x0_c - x0_u), eps_c + w * (eps_c - eps_u), index.to(device))
        x0_t, _ = param.x0_eps(student(z_end, end, encoder_hidden_states=text).sample, end, z_end)
        c_skip_e, c_out_e = boundary_scalings(end)
        target = c_skip_e * z_end + c_out_e * x0_t
    if args.loss_type == "l2":
        return torch.nn.functional.mse_loss(online.float(), target.float())
    return (((online.float() - target.float()) ** 2 + args.huber_c**2).sqrt() - args.huber_c).mean()
