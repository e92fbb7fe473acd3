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


FORMAT_RANK, FORMAT_ALPHA = 4, 2.0  # alpha != rank: every format must carry the alpha/rank scale (0.5) through
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def write_format_loras(root: str | Path, seed: int = 0, scale: float = 0.3) -> dict[str, Path]:
    """One random style LoRA for the tiny SD model written in each format people have, for tests and the demo:

    unet-diffusers   `pytorch_lora_weights.safetensors` (`save_lora_weights`, alpha in its metadata)
    unet-kohya       `unet-kohya.safetensors`: kohya / A1111 keys (`lora_unet_*.lora_down.weight`, `.alpha`)
    unet-peft        a peft `save_pretrained` directory (`adapter_config.json` + `adapter_model.safetensors`)
    te-diffusers     UNet + text-encoder LoRA, diffusers keys (`unet.*`, `text_encoder.*`)
    te-kohya         the same weights with kohya keys (`lora_unet_*`, `lora_te_*`)
    The unet-* files hold the same weights, and so do the te-* files. Returns name -> what `path` takes."""
    import json

    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from factory.tools.builders.tiny_models import _tiny_text_encoder_config, tiny_sd_unet

    root = Path(root)
    unet, text = tiny_sd_unet(), CLIPTextModel(_tiny_text_encoder_config())
    unet_cfg = LoraConfig(r=FORMAT_RANK, lora_alpha=FORMAT_ALPHA, target_modules=STYLE_TARGETS)
    te_cfg = LoraConfig(r=FORMAT_RANK, lora_alpha=FORMAT_ALPHA, target_modules=TE_TARGETS)
    unet.add_adapter(unet_cfg)
    text.add_adapter(te_cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in (unet, text):
            for _, p in sorted((n, p) for n, p in model.named_parameters() if "lora_" in n):
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    u = get_peft_model_state_dict(unet)
    # the key names of the text encoder as published LoRAs have them (transformers' CLIPTextModel.text_model.*)
    t = {f"text_model.{k.removeprefix('text_model.')}": v for k, v in get_peft_model_state_dict(text).items()}
    meta = {k: v for k, v in unet_cfg.to_dict().items() if k in ("r", "lora_alpha", "target_modules")}
    meta["target_modules"] = sorted(meta["target_modules"])
    te_meta = {**meta, "target_modules": sorted(TE_TARGETS)}
    out = {}
    for name, te in (("unet", None), ("te", t)):
        d = root / f"{name}-diffusers"
        d.mkdir(parents=True, exist_ok=True)
        StableDiffusionPipeline.save_lora_weights(
            d, unet_lora_layers=u, text_encoder_lora_layers=te, safe_serialization=True,
            unet_lora_adapter_metadata=meta, text_encoder_lora_adapter_metadata=te_meta if te else None,
        )  # fmt: skip
        out[f"{name}-diffusers"] = d
        layers = {f"unet.{k}": v for k, v in u.items()} | {f"text_encoder.{k}": v for k, v in (te or {}).items()}
        kohya = convert_state_dict_to_kohya(layers)
        kohya = {k.replace("lora_te1_", "lora_te_"): v for k, v in kohya.items()}  # SD1.x kohya names: lora_te_
        kohya = {k: torch.tensor(FORMAT_ALPHA) if k.endswith(".alpha") else v.contiguous() for k, v in kohya.items()}
        out[f"{name}-kohya"] = root / f"{name}-kohya.safetensors"
        save_file(kohya, str(out[f"{name}-kohya"]))
    peft_dir = root / "unet-peft"
    peft_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {f"base_model.model.{k}": v.contiguous() for k, v in u.items()}, str(peft_dir / "adapter_model.safetensors")
    )
    conf = {**unet_cfg.to_dict(), "target_modules": sorted(STYLE_TARGETS), "peft_type": "LORA"}
    (peft_dir / "adapter_config.json").write_text(json.dumps(conf, indent=2, default=str) + "\n")
    out["unet-peft"] = peft_dir
    return out
