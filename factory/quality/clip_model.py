"""The open_clip model the quality gate scores with, loaded from a local checkpoint (never from a hub).

Real checkpoints and the embedded tiny one (`factory.tools.builders.tiny_models`) load through the same call,
`open_clip.create_model_and_transforms(name, pretrained=path)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from factory.config import ModelConfig, resolve_path
from factory.errors import ModelError
from factory.modes import NULL_PIPELINE
from factory.quality.clip_preprocess import ClipTransform


@dataclass
class Clip:
    model: Any
    preprocess: Any  # PIL image -> tensor (open_clip's transform)
    tokenizer: Any
    device: str
    transform: ClipTransform | None = None  # the same as batched torch ops (quality.preprocess = "torch"); None: PIL


def load_clip(cfg: ModelConfig, device: str, mode: str = "torch") -> Clip | None:
    """Load an open_clip model from a local checkpoint (never from a hub); None for the null pipeline.
    `mode` (quality.preprocess): "torch" scores tensors with `ClipTransform`, "pil" with open_clip's own."""
    if cfg.pipeline == NULL_PIPELINE:
        return None
    import open_clip

    if cfg.clip_config_dir:
        config_dir = resolve_path(cfg.clip_config_dir)
        if not config_dir.is_dir():
            raise ModelError(f"{config_dir}: open_clip config directory not found; run 'make models'")
        open_clip.add_model_config(config_dir)
    checkpoint = resolve_path(cfg.clip_pretrained)
    if not checkpoint.is_file():
        raise ModelError(f"{checkpoint}: open_clip checkpoint not found; run 'make models'")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            cfg.clip_model, pretrained=str(checkpoint), device=device
        )
    except Exception as exc:
        raise ModelError(f"{checkpoint}: cannot load open_clip model {cfg.clip_model!r} ({exc})") from exc
    model.eval()
    transform = ClipTransform.of(preprocess) if mode == "torch" else None
    return Clip(model, preprocess, open_clip.get_tokenizer(cfg.clip_model), device, transform)
