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


@dataclass
class Clip:
    model: Any
    preprocess: Any  # PIL image -> tensor
    tokenizer: Any
    device: str


def load_clip(cfg: ModelConfig, device: str) -> Clip | None:
    """Load an open_clip model from a local checkpoint (never from a hub); None for the null pipeline."""
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
    return Clip(model=model, preprocess=preprocess, tokenizer=open_clip.get_tokenizer(cfg.clip_model), device=device)
