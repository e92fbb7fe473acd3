"""diffusers -> original LDM key layout: the inverse of diffusers' single-file conversion (single_file_utils.py).

`to_ldm(pipe)` returns the state dict a single-file SD1.5/SDXL checkpoint (A1111, ComfyUI, Civitai) holds for that
pipeline: `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), `cond_stage_model.transformer.*` (SD1.5 CLIP
ViT-L) or `conditioner.embedders.0.transformer.*` + `conditioner.embedders.1.model.*` (SDXL CLIP ViT-L + OpenCLIP
bigG, q/k/v fused into `in_proj_*`, `text_projection` transposed). Each map undoes one step of
`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint` and
`convert_open_clip_checkpoint`; the tests load the result back through them to the same tensors and pixels. An LCM
UNet's `time_embedding.cond_proj.weight` (no LDM name) keeps its diffusers name under `model.diffusion_model.`, as
diffusers' convert_diffusers_to_original scripts leave unmapped keys.
"""

from __future__ import annotations

import re
from typing import Any

from factory.generation.single_file import UNET, VAE

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "time_embedding.cond_proj": "time_embedding.cond_proj",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_TOP = ("conv_in", "conv_out", "quant_conv", "post_quant_conv")


def _split(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


def unet_to_ldm(sd: dict[str, Any], config: Any) -> dict[str, Any]:
    """A diffusers UNet2DConditionModel state dict -> `model.diffusion_model.*` keys (LDM / SGM numbering)."""
    per = config["layers_per_block"] + 1  # input/output blocks per level: resnets (+ the down/up sampler)
    attn_up = ["CrossAttn" in t for t in config["up_block_types"]]
    out = {}
    for key, value in sd.items():
        module, param = _split(key)
        if module in _UNET_TOP:
            new = _UNET_TOP[module]
        elif m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", module):
            side, b, kind, i, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
            idx = (1 + b * per + i) if side == "down" else (b * per + i)
            blocks = "input_blocks" if side == "down" else "output_blocks"
            new = (
                f"{blocks}.{idx}.0.{_UNET_RESNET.get(rest, rest)}" if kind == "resnets" else f"{blocks}.{idx}.1.{rest}"
            )
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", module):
            new = f"input_blocks.{(int(m[1]) + 1) * per}.0.op"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", module):
            b = int(m[1])
            new = f"output_blocks.{b * per + per - 1}.{2 if attn_up[b] else 1}.conv"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", module):
            new = f"middle_block.{2 * int(m[1])}.{_UNET_RESNET.get(m[2], m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", module):
            new = f"middle_block.1.{m[1]}"
        else:
            raise ValueError(f"no LDM name for UNet key {key!r}")
        out[f"{UNET}{new}.{param}"] = value
    return out


def vae_to_ldm(sd: dict[str, Any], config: Any) -> dict[str, Any]:
    """A diffusers AutoencoderKL state dict -> `first_stage_model.*` (attention as 1x1 convolutions)."""
    n_up = len(config["up_block_types"])
    out = {}
    for key, value in sd.items():
        module, param = _split(key)
        if module in _VAE_TOP or module.endswith(("conv_in", "conv_out")):
            new = module
        elif m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out", module):
            new = f"{m[1]}.norm_out"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", module):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv", module):
            new = f"encoder.down.{m[1]}.downsample.conv"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", module):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv", module):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", module):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", module):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}"
            if param == "weight" and m[2] != "group_norm":
                value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        else:
            raise ValueError(f"no LDM name for VAE key {key!r}")
        out[f"{VAE}{new}.{param}"] = value
    return out


def clip_to_ldm(sd: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A transformers CLIPTextModel state dict -> HF-layout keys under `prefix` (what SD1.5 / SDXL's first encoder
    keep: `<prefix>text_model.*`)."""
    return {f"{prefix}text_model.{k.removeprefix('text_model.')}": v for k, v in sd.items()}


_OPEN_CLIP = {
    "embeddings.token_embedding": "token_embedding",
    "final_layer_norm": "ln_final",
}
_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def open_clip_to_ldm(sd: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A CLIPTextModelWithProjection state dict -> OpenCLIP keys under `prefix` (SDXL: conditioner.embedders.1.model.),
    q/k/v concatenated into `in_proj_*`, the position embedding a bare tensor, `text_projection` transposed."""
    import torch

    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    out = {f"{prefix}positional_embedding": sd.pop("embeddings.position_embedding.weight")}
    out[f"{prefix}text_projection"] = sd.pop("text_projection.weight").T.contiguous()
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for n in layers:
        src, dst = f"encoder.layers.{n}.", f"{prefix}transformer.resblocks.{n}."
        for param in ("weight", "bias"):
            qkv = [sd.pop(f"{src}self_attn.{p}_proj.{param}") for p in "qkv"]
            out[f"{dst}attn.in_proj_{param}"] = torch.cat(qkv, dim=0)
        for key in [k for k in sd if k.startswith(src)]:
            module, param = _split(key.removeprefix(src))
            out[f"{dst}{_OPEN_CLIP_LAYER[module]}.{param}"] = sd.pop(key)
    for key in list(sd):
        module, param = _split(key)
        out[f"{prefix}{_OPEN_CLIP[module]}.{param}"] = sd.pop(key)
    return out


def to_ldm(pipe: Any) -> dict[str, Any]:
    """The whole single-file state dict of an SD1.5-family or SDXL pipeline (contiguous tensors, safetensors-ready)."""
    out = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)
    out.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    if getattr(pipe, "text_encoder_2", None) is not None:
        out.update(clip_to_ldm(pipe.text_encoder.state_dict(), "conditioner.embedders.0.transformer."))
        out.update(open_clip_to_ldm(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    else:
        out.update(clip_to_ldm(pipe.text_encoder.state_dict(), "cond_stage_model.transformer."))
    return {k: v.detach().contiguous() for k, v in out.items()}
