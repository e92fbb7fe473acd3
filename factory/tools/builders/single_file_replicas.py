"""Tiny single-file checkpoints in the original LDM key layout, each with its directory form, for tests and the demo.

Every replica is one tiny random pipeline written twice: `<name>/` as `save_pretrained` writes it (the directory form)
and `<name>.safetensors` with its weights renamed to the original layout (`ldm_layout.to_ldm`), next to
`<name>.config/`, the pipeline's component configs without weights (what `model.single_file_config = "auto"` finds
next to a file; the shipped full-size configs do not fit tiny tensors). Loading both must give the same tensors and
pixels. The weights are random: loading and plumbing only, never image quality.

- `lcm-sd15`: an SD1.5 UNet with LCM's guidance embedding (`time_cond_proj_dim`), like an LCM-distilled fine-tune;
- `sd15`: an SD1.5 base UNet, like a brand SD1.5 fine-tune (run with an LCM-LoRA); also written as `sd15.ckpt`;
- `sdxl`: an SDXL UNet with a CLIP-L-like and an OpenCLIP-bigG-like text encoder, like an SDXL fine-tune.

The tiny SDXL's second text encoder is wider (48) than its first (32), as bigG (1280) is wider than ViT-L (768):
diffusers tells the two encoders of an SDXL file apart by their widths.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from factory.tools.builders.ldm_layout import to_ldm
from factory.tools.builders.tiny_models import (
    TINY_SEED,
    _lcm_scheduler,
    _sd_pipeline,
    _tiny_text_encoder_config,
    _tiny_vae,
    build_clip_tokenizer,
    tiny_sd_unet,
)

REPLICAS = ("lcm-sd15", "sd15", "sdxl")


def write_single_file_replicas(root: str | Path) -> dict[str, Path]:
    """Write every replica under `root`; returns name -> the `.safetensors` file (`sd15.ckpt` sits beside its file)."""
    import torch
    from safetensors.torch import save_file
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a "Writing model shards" bar for one tiny shard: noise
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in REPLICAS:
        pipe = build_replica(name)
        directory = root / name
        shutil.rmtree(directory, ignore_errors=True)
        pipe.save_pretrained(directory, safe_serialization=True)
        write_config_dir(pipe, root / f"{name}.config")
        sd = to_ldm(pipe)
        save_file(sd, str(root / f"{name}.safetensors"))
        if name == "sd15":
            torch.save(sd, root / "sd15.ckpt")  # the other format people have: a torch zip of plain tensors
        out[name] = root / f"{name}.safetensors"
    return out


def build_replica(name: str) -> Any:
    import torch
    from transformers import CLIPTextModel

    if name == "sdxl":
        return _tiny_sdxl_two_widths()
    torch.manual_seed(TINY_SEED + 20 + REPLICAS.index(name))
    unet = tiny_sd_unet(time_cond_proj_dim=32 if name == "lcm-sd15" else None)
    return _sd_pipeline(unet, _tiny_vae(), CLIPTextModel(_tiny_text_encoder_config()))


def _tiny_sdxl_two_widths() -> Any:
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(TINY_SEED + 23)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids x 8 + text_encoder_2's pooled projection
        cross_attention_dim=32 + 48,  # both encoders' hidden states, concatenated
        norm_num_groups=8,
    )
    wide = _tiny_text_encoder_config()
    wide.hidden_size, wide.intermediate_size = 48, 96
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_tiny_text_encoder_config()),
        text_encoder_2=CLIPTextModelWithProjection(wide),
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=_lcm_scheduler(),
    )


def write_config_dir(pipe: Any, path: Path) -> Path:
    """A diffusers config directory for `pipe` without weights: model_index.json, each model's config.json, the
    scheduler config, and tokenizer_config.json (the vocabulary comes from open_clip at load time)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    pipe.save_config(path)
    for name, module in pipe.components.items():
        if module is None:
            continue
        folder = path / name
        folder.mkdir()
        if hasattr(module, "save_config"):  # diffusers models and schedulers
            module.save_config(folder)
        elif hasattr(module, "pad_token"):  # a tokenizer
            conf = {"model_max_length": module.model_max_length, "pad_token": str(module.pad_token)}
            (folder / "tokenizer_config.json").write_text(json.dumps(conf, indent=2) + "\n")
        else:  # transformers models
            module.config.save_pretrained(folder)
    return path
