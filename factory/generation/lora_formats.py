"""LoRA files in the formats people have, told apart by their keys and loaded as one named peft adapter each.

- `kohya` (kohya-ss, A1111, ComfyUI, Civitai): `lora_unet_*`, `lora_te_*` (`lora_te1_`/`lora_te2_` for SDXL) with
  `.lora_down/.lora_up.weight` and `.alpha`; loaded by `load_lora_weights` (diffusers' kohya conversion).
- `diffusers` (`save_lora_weights`): `unet.*` / `text_encoder.*` with `lora_A/lora_B` (or the older `lora.down/up`),
  alpha in the file's metadata; loaded by `load_lora_weights`.
- `peft` (peft's `save_pretrained` directory): `adapter_config.json` (rank, alpha, targets) +
  `adapter_model.safetensors` keyed `base_model.model.<module>.lora_A.weight`; loaded by `unet.load_lora_adapter`
  with the config as its metadata.

A peft directory adapts one model; for the UNet only (a text-encoder one is refused: save it in diffusers format).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.errors import ModelInputError

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"  # what `save_lora_weights` writes in a directory
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
PEFT_PREFIX = "base_model.model."
# LoraConfig fields a peft adapter_config.json may carry that change what the adapter computes
_PEFT_FIELDS = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora")
_UNET_MODULES = ("down_blocks.", "up_blocks.", "mid_block.", "conv_in", "conv_out", "time_embedding", "add_embedding")


@dataclass(frozen=True)
class LoraFile:
    weights: Path  # the safetensors file
    format: str  # kohya | diffusers | peft
    keys: tuple[str, ...]
    peft_config: Path | None = None


def find_lora(path: Path) -> LoraFile:
    """The LoRA at `path` (a file, or a directory with one of the known files), its format from its keys."""
    from factory.generation.single_file import header_shapes

    config = None
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors"))
        if (path / PEFT_CONFIG).is_file():
            config, weights = path / PEFT_CONFIG, path / PEFT_WEIGHTS
        elif (path / DIFFUSERS_WEIGHTS).is_file():
            weights = path / DIFFUSERS_WEIGHTS
        elif len(candidates) == 1:
            weights = candidates[0]
        else:
            raise ModelInputError(
                f"{path}: no LoRA file ({DIFFUSERS_WEIGHTS}, a peft {PEFT_CONFIG}, or one *.safetensors)"
            )
    else:
        weights = path
        if path.name == PEFT_WEIGHTS and (path.parent / PEFT_CONFIG).is_file():
            config = path.parent / PEFT_CONFIG
    if not weights.is_file():
        raise ModelInputError(f"{weights}: no such LoRA file")
    if weights.suffix != ".safetensors":
        raise ModelInputError(f"{weights}: LoRAs are read from .safetensors files only (a pickle could run code)")
    keys = tuple(header_shapes(weights))
    return LoraFile(weights, key_format(keys, weights, config), keys, config)


def key_format(keys: tuple[str, ...], where: Path, peft_config: Path | None = None) -> str:
    if not keys:
        raise ModelInputError(f"{where}: an empty LoRA file")
    if all(k.startswith(KOHYA_PREFIXES) for k in keys):
        return "kohya"
    if all(k.startswith(PEFT_PREFIX) for k in keys):
        if peft_config is None:
            raise ModelInputError(f"{where}: peft keys but no {PEFT_CONFIG} beside it (it holds the rank and alpha)")
        return "peft"
    if all(k.startswith(("unet.", "text_encoder.", "text_encoder_2.")) for k in keys):
        return "diffusers"
    raise ModelInputError(f"{where}: not a LoRA in a known format (kohya lora_unet_*, diffusers unet.*, or peft)")


def load_lora(pipe: Any, path: Path, adapter_name: str) -> str:
    """Load the LoRA at `path` into `pipe` as peft adapter `adapter_name`; returns its format."""
    lora = find_lora(path)
    # A UNet-only LoRA (the usual kind) makes diffusers warn, on every load, that the text encoder got no keys.
    # transformers prints a load report naming the *other* adapters' text-encoder keys as missing: noise.
    quiet = [logging.getLogger(n) for n in ("diffusers.loaders.lora_base", "transformers")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # a 2nd adapter: intended
            if lora.format == "peft":
                _load_peft(pipe, lora, adapter_name)
            else:
                pipe.load_lora_weights(
                    str(lora.weights.parent), weight_name=lora.weights.name, adapter_name=adapter_name
                )
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    return lora.format


def _load_peft(pipe: Any, lora: LoraFile, adapter_name: str) -> None:
    from safetensors.torch import load_file

    modules = [k.removeprefix(PEFT_PREFIX) for k in lora.keys]
    if not all(m.startswith(_UNET_MODULES) for m in modules):
        raise ModelInputError(
            f"{lora.weights}: a peft adapter for a model other than the UNet (e.g. {modules[0]!r}); save a "
            "text-encoder LoRA with save_lora_weights (diffusers format)"
        )
    try:
        conf = json.loads(lora.peft_config.read_text(encoding="utf-8"))  # type: ignore[union-attr]
    except (OSError, ValueError) as exc:
        raise ModelInputError(f"{lora.peft_config}: not a peft adapter config ({type(exc).__name__}: {exc})") from None
    meta = {k: conf[k] for k in _PEFT_FIELDS if conf.get(k) is not None}
    if isinstance(meta.get("target_modules"), list):
        meta["target_modules"] = sorted(meta["target_modules"])
    sd = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(lora.weights)).items()}
    pipe.unet.load_lora_adapter(sd, prefix=None, adapter_name=adapter_name, metadata=meta, _pipeline=pipe)
