"""Random-weight models of the real architectures, saved in the real on-disk layouts (tests, demo, GPU bench).

`init_tiny` writes the embedded tiny SD pipeline and tiny open_clip model that `make models` builds; the factory
loads them through the same `load_pipeline` / `load_clip` as real checkpoints. A tiny model proves plumbing,
never image quality.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from factory.generation.clip_tokenizer import build_clip_tokenizer

log = logging.getLogger(__name__)

__all__ = ["build_clip_tokenizer"]  # re-exported: the builders and tests name it here

TINY_SEED = 0  # fixed: `adfactory dev init-tiny` always writes the same weights
TINY_CLIP_NAME = "tiny-clip"


def _tiny_text_encoder_config() -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=32,
    )


def _tiny_vae() -> Any:
    from diffusers import AutoencoderKL

    # Four blocks -> the real SD latent factor of 8, so the tiny model's cost scales with resolution like SD's.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


# The noise schedule every published SD1.5 checkpoint's scheduler config shares (LCM and DDPM alike).
SD15_NOISE_SCHEDULE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "clip_sample": False,
}


def _lcm_scheduler() -> Any:
    from diffusers import LCMScheduler

    # The scheduler config of the published LCM SD1.5 checkpoints.
    return LCMScheduler(
        **SD15_NOISE_SCHEDULE,
        original_inference_steps=50,
        set_alpha_to_one=True,
        timestep_spacing="leading",
    )


def _sd_pipeline(unet: Any, vae: Any, text_encoder: Any) -> Any:
    """An SD1.5-family pipeline with the CLIP tokenizer and LCM scheduler (no safety checker: the gate does it)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(),
        unet=unet,
        scheduler=_lcm_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sd_unet(time_cond_proj_dim: int | None = 32) -> Any:
    """A tiny SD1.5-architecture UNet; `time_cond_proj_dim` is LCM's guidance embedding (None: a base model)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def build_tiny_sd() -> Any:
    """A tiny SD1.5-architecture LCM pipeline: UNet with `time_cond_proj_dim` (LCM's guidance embedding)."""
    import torch
    from transformers import CLIPTextModel

    torch.manual_seed(TINY_SEED)
    unet = tiny_sd_unet()
    return _sd_pipeline(unet, _tiny_vae(), CLIPTextModel(_tiny_text_encoder_config()))


def build_tiny_sd_base() -> Any:
    """A tiny SD1.5-architecture *base* (non-LCM) pipeline: no `time_cond_proj_dim`, SD1.5's DDPM scheduler.

    The teacher of `adfactory train-lora --method lcm-distill` in tests; same VAE and text encoder as `build_tiny_sd`.
    """
    import torch
    from diffusers import DDPMScheduler
    from transformers import CLIPTextModel

    torch.manual_seed(TINY_SEED)
    pipe = _sd_pipeline(tiny_sd_unet(time_cond_proj_dim=None), _tiny_vae(), CLIPTextModel(_tiny_text_encoder_config()))
    pipe.scheduler = DDPMScheduler(**SD15_NOISE_SCHEDULE)  # the scheduler config of the published SD1.5 checkpoints
    return pipe


def tiny_sdxl_unet(time_cond_proj_dim: int | None = 32) -> Any:
    """A tiny SDXL-architecture UNet (text_time conditioning); `time_cond_proj_dim` as in `tiny_sd_unet`."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids x 8 + pooled text_encoder_2 embedding
        cross_attention_dim=64,  # text_encoder (32) + text_encoder_2 (32) hidden states, concatenated
        norm_num_groups=8,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def build_tiny_sdxl() -> Any:
    """A tiny SDXL-architecture pipeline (two text encoders, text_time conditioning) with the LCM scheduler."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(TINY_SEED)
    unet = tiny_sdxl_unet()
    vae = _tiny_vae()
    tokenizer = build_clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(_tiny_text_encoder_config()),
        text_encoder_2=CLIPTextModelWithProjection(_tiny_text_encoder_config()),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=_lcm_scheduler(),
    )


def build_random_sd15(dtype: Any = None) -> Any:
    """A full-size SD1.5-architecture LCM pipeline with random weights (GPU benchmarking: timing does not depend
    on weight values). Published SD1.5 shapes; the UNet has LCM's `time_cond_proj_dim`."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(TINY_SEED)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, time_cond_proj_dim=256)  # SD1.5 defaults
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    pipe = _sd_pipeline(unet, vae, text)
    return pipe.to(dtype=dtype) if dtype is not None else pipe


TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def init_tiny(root: str | Path = "data/models", force: bool = False) -> dict[str, Path]:
    """Build the embedded tiny models under `root` (deterministic: same bytes every time). Skips existing ones."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    root = Path(root)
    sd_dir, clip_dir = root / "tiny-sd", root / "tiny-clip"
    if force or not (sd_dir / "model_index.json").is_file():
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a "Writing model shards" bar for one tiny shard: noise
        build_tiny_sd().save_pretrained(_fresh_dir(sd_dir), safe_serialization=True)
    ckpt = clip_dir / "open_clip_model.safetensors"
    if force or not ckpt.is_file():
        _fresh_dir(clip_dir)
        (clip_dir / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(TINY_CLIP_CONFIG, indent=2) + "\n")
        open_clip.add_model_config(clip_dir)
        torch.manual_seed(TINY_SEED)
        model = open_clip.create_model(TINY_CLIP_NAME)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    return {"pipeline": sd_dir, "clip": clip_dir}


def _fresh_dir(path: Path) -> Path:
    import shutil

    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
