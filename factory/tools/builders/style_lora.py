"""A tiny "style" LoRA for the embedded tiny UNet: deterministic random weights, strong enough to change pixels.

It stands in for a brand or category style LoRA in tests and the demo (`[lora.adapters.<name>]`): made with peft on
the attention projections (the targets of diffusers' train_text_to_image_lora.py) and saved the way a trained one
is, `pytorch_lora_weights.safetensors` in diffusers format via `StableDiffusionPipeline.save_lora_weights`. Random
weights prove the plumbing (loading, switching, keys, determinism), never a style.
"""

from __future__ import annotations

import os
from pathlib import Path

STYLE_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
STYLE_LORA_FILE = "pytorch_lora_weights.safetensors"


def write_style_lora(path: str | Path, seed: int = 0, rank: int = 4, scale: float = 0.3) -> Path:
    """Write a style LoRA for the tiny SD UNet into directory `path`; same `seed` -> same bytes. Returns the file.

    `scale`: the std of the random LoRA matrices (peft starts lora_B at zero, i.e. a LoRA that changes nothing)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from factory.tools.builders.tiny_models import tiny_sd_unet

    unet = tiny_sd_unet()  # only the module names and shapes matter: the LoRA matrices are drawn below
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=STYLE_TARGETS))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(unet.named_parameters()):
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(path, unet_lora_layers=layers, safe_serialization=True)
    umask = os.umask(0)
    os.umask(umask)
    (path / STYLE_LORA_FILE).chmod(0o666 & ~umask)  # safetensors writes 0600; a model file is shared like outputs
    return path / STYLE_LORA_FILE
