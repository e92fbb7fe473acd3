"""Tiny replicas of the published checkpoint layouts docs/real-weights.md names, for tests and `models check`.

Each replica copies what the loader sees of a published repository: its `model_index.json` (`_class_name`,
component entries incl. `safety_checker` / `feature_extractor` where the real one has them, and the pipeline
flags), its component folders, its scheduler class, its UNet kind (LCM-distilled or base) and, for LCM-LoRAs, the
published file name and key format (kohya-style `lora_unet_*` keys with `.alpha`, as the LCM-LoRA releases ship).
The weights are tiny and random (`factory.tools.builders.tiny_models` builders, 64 px class): the replicas prove loading
and plumbing (load, LoRA fusing, generation, inpaint repair) for each layout, never image quality.

| replica                        | published as                                                  | LCM from        |
| ------------------------------ | ------------------------------------------------------------- | --------------- |
| `lcm-dreamshaper-v7`           | SimianLuo/LCM_Dreamshaper_v7 (LatentConsistencyModelPipeline) | distilled UNet  |
| `stable-diffusion-v1-5`        | stable-diffusion-v1-5 (StableDiffusionPipeline, PNDM)         | lcm-lora-sdv1-5 |
| `stable-diffusion-xl-base-1.0` | stabilityai/stable-diffusion-xl-base-1.0 (Euler)              | lcm-lora-sdxl   |
| `sdxl-lcm-unet`                | the SDXL base directory, `unet/` from latent-consistency/lcm-sdxl | distilled UNet |

`lcm-sdxl` (a UNet-only repository: `config.json` + weights, no `model_index.json`) is written too: it is not a
pipeline directory by itself, and `models check` says so.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.tools.builders.tiny_models import (
    TINY_SEED,
    _lcm_scheduler,
    _tiny_text_encoder_config,
    _tiny_vae,
    build_clip_tokenizer,
    tiny_sd_unet,
    tiny_sdxl_unet,
)

# The published model_index.json files (component entries and flags; `_diffusers_version` as published).
LCM_DREAMSHAPER_INDEX: dict[str, Any] = {
    "_class_name": "LatentConsistencyModelPipeline",
    "_diffusers_version": "0.22.0.dev0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "requires_safety_checker": True,
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "LCMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
SD15_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
SDXL_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.19.0.dev0",
    "force_zeros_for_empty_prompt": True,
    "add_watermarker": None,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
# Modules the LCM-LoRA distillation script adapts (diffusers' train_lcm_distill_lora_*: attention, feed-forward,
# resnet convolutions and time embeddings).
LCM_LORA_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
]
LORA_FILE = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class Replica:
    name: str
    replica_of: str  # the published repositories this directory mirrors
    pipeline: Path  # the directory `model.pipeline` points at
    lora: Path | None  # the LCM-LoRA directory `model.lora` points at, if LCM comes from a LoRA
    pipeline_class: str  # `_class_name` in model_index.json
    lcm: str  # "distilled" (UNet with time_cond_proj_dim) | "lora"


def write_replicas(root: str | Path, lora_format: str = "kohya") -> dict[str, Replica]:
    """Write every replica under `root` (replaced if present) and return them by name.

    lora_format  "kohya": the published LCM-LoRA files' keys (`lora_unet_..._proj_in.lora_up.weight`, `.alpha`);
                 "diffusers": `save_lora_weights`' keys for a peft-adapted UNet (`unet.<module>.lora_A.weight`).
    """
    import torch

    root = Path(root)
    sd15, sdxl = root / "stable-diffusion-v1-5", root / "stable-diffusion-xl-base-1.0"
    _write_pipeline(_lcm_dreamshaper(), root / "lcm-dreamshaper-v7", LCM_DREAMSHAPER_INDEX)
    _write_pipeline(_sd15(), sd15, SD15_INDEX)
    write_lcm_lora("sd15", root / "lcm-lora-sdv1-5", lora_format)
    _write_pipeline(_sdxl(), sdxl, SDXL_INDEX)
    write_lcm_lora("sdxl", root / "lcm-lora-sdxl", lora_format)
    # latent-consistency/lcm-sdxl is a UNet-only repository; its README loads it into the SDXL base pipeline.
    unet_only = _fresh(root / "lcm-sdxl")
    torch.manual_seed(TINY_SEED + 4)
    tiny_sdxl_unet(time_cond_proj_dim=32).save_pretrained(unet_only, safe_serialization=True)
    assembled = root / "sdxl-lcm-unet"
    shutil.rmtree(assembled, ignore_errors=True)
    shutil.copytree(sdxl, assembled)
    shutil.rmtree(assembled / "unet")
    shutil.copytree(unet_only, assembled / "unet")
    return _replicas(root)


def _replicas(root: Path) -> dict[str, Replica]:
    sd15, sdxl = root / "stable-diffusion-v1-5", root / "stable-diffusion-xl-base-1.0"
    lcm_sd, sd_lora, xl_lora = root / "lcm-dreamshaper-v7", root / "lcm-lora-sdv1-5", root / "lcm-lora-sdxl"
    sd, lcm, xl = "StableDiffusionPipeline", "LatentConsistencyModelPipeline", "StableDiffusionXLPipeline"
    replicas = [
        Replica("lcm-sd15", "SimianLuo/LCM_Dreamshaper_v7", lcm_sd, None, lcm, "distilled"),
        Replica("sd15+lcm-lora", "stable-diffusion-v1-5 + latent-consistency/lcm-lora-sdv1-5", sd15, sd_lora, sd,
                "lora"),
        Replica("sdxl+lcm-lora", "stabilityai/stable-diffusion-xl-base-1.0 + latent-consistency/lcm-lora-sdxl", sdxl,
                xl_lora, xl, "lora"),
        Replica("sdxl-lcm-unet", "stabilityai/stable-diffusion-xl-base-1.0 with latent-consistency/lcm-sdxl",
                root / "sdxl-lcm-unet", None, xl, "distilled"),
    ]  # fmt: skip
    return {r.name: r for r in replicas}


def _write_pipeline(pipe: Any, path: Path, index: dict[str, Any]) -> None:
    pipe.save_pretrained(_fresh(path), safe_serialization=True)
    # save_pretrained writes today's index (e.g. `image_encoder: [null, null]`); the loader must see the published one.
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _safety_checker_and_features() -> tuple[Any, Any]:
    """A tiny StableDiffusionSafetyChecker (a CLIP vision tower + concept embeddings) and the CLIP preprocessor."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    text = _tiny_text_encoder_config().to_dict()
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config=text, vision_config={**vision, "image_size": 32, "patch_size": 8}, projection_dim=32
    )
    return StableDiffusionSafetyChecker(config), CLIPImageProcessor()


def _lcm_dreamshaper() -> Any:
    """LCM_Dreamshaper_v7: an LCM-distilled SD1.5 UNet, LCMScheduler, and SD1.5's safety checker entries."""
    import torch
    from diffusers import LatentConsistencyModelPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(TINY_SEED + 1)
    unet, vae, text = tiny_sd_unet(time_cond_proj_dim=32), _tiny_vae(), CLIPTextModel(_tiny_text_encoder_config())
    checker, features = _safety_checker_and_features()
    return LatentConsistencyModelPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=build_clip_tokenizer(),
        unet=unet,
        scheduler=_lcm_scheduler(),
        safety_checker=checker,
        feature_extractor=features,
        requires_safety_checker=True,
    )


def _sd15() -> Any:
    """stable-diffusion-v1-5: a base UNet (no LCM embedding), PNDMScheduler, safety checker + feature extractor."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(TINY_SEED + 2)
    unet, vae, text = tiny_sd_unet(time_cond_proj_dim=None), _tiny_vae(), CLIPTextModel(_tiny_text_encoder_config())
    checker, features = _safety_checker_and_features()
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=build_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=checker,
        feature_extractor=features,
        requires_safety_checker=True,
    )


def _sdxl() -> Any:
    """stable-diffusion-xl-base-1.0: two text encoders (tokenizer_2 pads with "!"), EulerDiscreteScheduler."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(TINY_SEED + 3)
    unet, vae = tiny_sdxl_unet(time_cond_proj_dim=None), _tiny_vae()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        interpolation_type="linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
        use_karras_sigmas=False,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(_tiny_text_encoder_config()),
        text_encoder_2=CLIPTextModelWithProjection(_tiny_text_encoder_config()),
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=scheduler,
    )


def write_lcm_lora(base: str, path: str | Path, fmt: str = "kohya") -> Path:
    """An LCM-LoRA for the "sd15" or "sdxl" base replica's UNet, made with peft, saved in `path` as
    `pytorch_lora_weights.safetensors` with `fmt` keys (see `write_replicas`). Deterministic."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    if base not in ("sd15", "sdxl") or fmt not in ("kohya", "diffusers"):
        raise ValueError(f"base must be 'sd15' or 'sdxl' and fmt 'kohya' or 'diffusers', got {base!r}, {fmt!r}")
    unet = _base_unet(base)
    names = {n for n, _ in unet.named_modules()}
    targets = [t for t in LCM_LORA_TARGETS if any(n == t or n.endswith("." + t) for n in names)]
    torch.manual_seed(TINY_SEED + 10)
    # init_lora_weights=False: lora_B is random too (peft starts it at zero), so fusing visibly changes the UNet.
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    layers = get_peft_model_state_dict(unet)
    path = _fresh(Path(path))
    if fmt == "kohya":
        keyed = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in layers.items()})
        save_file({k: v.contiguous() for k, v in keyed.items()}, str(path / LORA_FILE))
    else:  # peft's own keys under "unet.", as `save_lora_weights` writes them for a peft-adapted UNet
        cls = StableDiffusionPipeline if base == "sd15" else StableDiffusionXLPipeline
        cls.save_lora_weights(path, unet_lora_layers=layers, safe_serialization=True)
    return path / LORA_FILE


def _base_unet(base: str) -> Any:
    """The UNet of the saved "sd15" / "sdxl" base replica: the same seed, and the UNet is the first module drawn."""
    import torch

    torch.manual_seed(TINY_SEED + 2 if base == "sd15" else TINY_SEED + 3)
    return tiny_sd_unet(time_cond_proj_dim=None) if base == "sd15" else tiny_sdxl_unet(time_cond_proj_dim=None)


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
