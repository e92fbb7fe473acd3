"""Single-file checkpoints (`.safetensors` / `.ckpt` in the original LDM key layout: A1111, ComfyUI, Civitai).

`model.pipeline = "/models/brand-base.safetensors"` loads here: the family is told from the keys (`detect`), the
component configs come from a local diffusers config directory (`config_dir`: one next to the file, one named by
`model.single_file_config`, or the full-size set shipped in `single_file_configs/<family>/`), and every weighted
component goes through its diffusers class's own `from_single_file` conversion (text encoders through
`create_diffusers_clip_model_from_ldm`, what the pipeline-level `from_single_file` calls) from one read of the file,
with `local_files_only=True` and a config directory, so nothing is fetched. Tokenizers are built from open_clip's BPE
vocabulary (`clip_tokenizer.py`) unless the config directory has its own `vocab.json`.

What the keys tell (`CheckpointInfo`): SD1.5 family (`cond_stage_model.transformer.*`, CLIP ViT-L) or SDXL
(`conditioner.embedders.1.model.*`, OpenCLIP bigG); inpainting (a 9-channel `conv_in`); LCM-distilled (a UNet with
LCM's guidance embedding, `time_embedding.cond_proj.weight`: diffusers' conversion drops that key, so it is loaded
here); v-prediction (`v_pred`) and zero-terminal-SNR (`ztsnr`) marker keys. An LCM-LoRA merged into the weights
leaves no trace in the keys: such a checkpoint reads as a base model.
"""

from __future__ import annotations

import json
import logging
import pickle
import struct
from collections import Counter
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

from factory.errors import ModelInputError
from factory.modes import SINGLE_FILE_FAMILIES

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "single_file_configs"
CONFIG_DIR_SUFFIX = ".config"  # brand-base.safetensors -> brand-base.config/ next to it (model_index.json + configs)
UNET = "model.diffusion_model."
VAE = "first_stage_model."
COND_PROJ = UNET + "time_embedding.cond_proj.weight"  # LCM's guidance embedding (w -> time embedding)
_PREFIX_FAMILY = {"cond_stage_model.transformer.": "sd15", "conditioner.embedders.1.model.": "sdxl"}
_REFUSED_PREFIXES = {
    "cond_stage_model.model.": "an SD2.x checkpoint (OpenCLIP ViT-H text encoder)",
    "conditioner.embedders.0.model.": "an SDXL refiner checkpoint (no CLIP ViT-L text encoder)",
}


@dataclass(frozen=True)
class CheckpointInfo:
    family: str  # sd15 | sdxl
    in_channels: int  # UNet conv_in input channels: 4, or 9 for an inpainting checkpoint
    lcm_dim: int | None  # time_cond_proj_dim of an LCM-distilled UNet; None: not detectable (a base, or LoRA merged)
    prediction: str  # epsilon | v_prediction (a `v_pred` marker key)
    zero_snr: bool  # a `ztsnr` marker key: trained with zero terminal SNR
    dtype: str  # the UNet tensors' dtype
    params: int  # tensor elements in the file

    @property
    def inpainting(self) -> bool:
        return self.in_channels == 9


def is_single_file(path: Path) -> bool:
    return path.suffix in SINGLE_FILE_SUFFIXES and not path.is_dir()


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Every tensor of the file. A `.ckpt` loads with `weights_only=True`: one that needs arbitrary unpickling is
    refused (it could run code)."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            try:
                sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:  # a pre-zip (torch < 1.6) file cannot be memory-mapped
                if "mmap" not in str(exc):
                    raise
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelInputError(
            f"{path}: this .ckpt needs arbitrary code to unpickle, which is refused; convert it to .safetensors "
            "where you trust it"
        ) from None
    except Exception as exc:  # safetensors / torch raise many types for a truncated or foreign file
        raise ModelInputError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    while isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]  # Lightning-era .ckpt files nest the weights
    if not isinstance(sd, dict):
        raise ModelInputError(f"{path}: not a checkpoint (a {type(sd).__name__}, not a dict of tensors)")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def header_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) from a safetensors header, without reading the weights."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as exc:
        raise ModelInputError(f"{path}: not a safetensors file ({type(exc).__name__}: {exc})") from None
    header.pop("__metadata__", None)
    return {k: (tuple(v["shape"]), v["dtype"]) for k, v in header.items()}


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    """What the file's keys say it is (a safetensors header is enough; a .ckpt is loaded, weights_only)."""
    if path.suffix == ".safetensors":
        return detect(header_shapes(path), path)
    sd = read_checkpoint(path)
    return detect({k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}, path)


def detect(shapes: dict[str, tuple[tuple[int, ...], str]], path: Path) -> CheckpointInfo:
    """Family, inpainting, LCM and prediction type from key names and shapes; anything else is one sentence."""
    keys = shapes.keys()
    family = next((f for p, f in _PREFIX_FAMILY.items() if any(k.startswith(p) for k in keys)), None)
    if family is None:
        refused = next((what for p, what in _REFUSED_PREFIXES.items() if any(k.startswith(p) for k in keys)), None)
        if refused:
            raise ModelInputError(f"{path}: {refused}; only SD1.5- and SDXL-family checkpoints are supported")
        if any("lora_" in k or ".alpha" in k for k in keys):
            raise ModelInputError(f"{path}: a LoRA, not a checkpoint: configure it as model.lora or [lora.adapters]")
        if any(k.startswith(("down_blocks.", "unet.", "encoder.down_blocks.")) for k in keys):
            raise ModelInputError(f"{path}: diffusers-format weights of one component; give the pipeline directory")
        raise ModelInputError(f"{path}: no SD1.5 or SDXL text encoder keys (cond_stage_model.* / conditioner.*)")
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None:
        raise ModelInputError(f"{path}: no UNet weights ({UNET}*)")
    if not any(k.startswith(VAE) for k in keys):
        raise ModelInputError(f"{path}: no VAE weights ({VAE}*); checkpoints without a baked-in VAE are not supported")
    cond = shapes.get(COND_PROJ)
    dtypes = Counter(d for k, (_, d) in shapes.items() if k.startswith(UNET))
    return CheckpointInfo(
        family=family,
        in_channels=conv_in[0][1],
        lcm_dim=cond[0][1] if cond else None,
        prediction="v_prediction" if "v_pred" in keys else "epsilon",
        zero_snr="ztsnr" in keys,
        dtype=dtypes.most_common(1)[0][0].lower().replace("f16", "float16").replace("f32", "float32"),
        params=sum(prod(s) for s, _ in shapes.values()),
    )


def config_dir(path: Path, setting: str, family: str) -> Path:
    """The diffusers config directory for `path` (`model.single_file_config`): "auto" = `<stem>.config/` next to
    the file if it has a model_index.json, else the shipped full-size set of the detected family."""
    if setting == "auto":
        beside = path.with_suffix(CONFIG_DIR_SUFFIX)
        return beside if (beside / "model_index.json").is_file() else SHIPPED_CONFIGS / family
    if setting in SINGLE_FILE_FAMILIES:
        if setting != family:
            raise ModelInputError(f"model.single_file_config is {setting!r} but {path}'s keys are an {family} model's")
        return SHIPPED_CONFIGS / setting
    d = Path(setting).expanduser()
    if not (d / "model_index.json").is_file():
        raise ModelInputError(
            f"model.single_file_config {setting}: not a diffusers config directory (no model_index.json)"
        )
    if ("text_encoder_2" in json.loads((d / "model_index.json").read_text())) != (family == "sdxl"):
        raise ModelInputError(f"model.single_file_config {setting}: its model_index.json is not an {family} pipeline's")
    return d


def candidate_config_dirs(path: Path, setting: str) -> list[Path]:
    """Every config directory `config_dir` could pick for `path` without reading weights (for the model key)."""
    if setting == "auto":
        beside = path.with_suffix(CONFIG_DIR_SUFFIX)
        if (beside / "model_index.json").is_file():
            return [beside]
        return [SHIPPED_CONFIGS / f for f in SINGLE_FILE_FAMILIES]
    return [SHIPPED_CONFIGS / setting] if setting in SINGLE_FILE_FAMILIES else [Path(setting).expanduser()]


def load_single_file(path: Path, setting: str, dtype: Any) -> Any:
    """The text-to-image pipeline of a single-file checkpoint (see the module docstring)."""
    import diffusers

    sd = read_checkpoint(path)
    info = detect({k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}, path)
    if info.inpainting:
        raise ModelInputError(
            f"{path}: an inpainting checkpoint (9-channel UNet) cannot generate from text; model.pipeline needs a "
            "text-to-image checkpoint"
        )
    cdir = config_dir(path, setting, info.family)
    index = json.loads((cdir / "model_index.json").read_text())
    cls = getattr(diffusers, index["_class_name"])
    accepted = set(cls._get_signature_keys(cls)[0]) | set(cls._get_signature_keys(cls)[1])
    kwargs: dict[str, Any] = {k: v for k, v in index.items() if not k.startswith("_") and not isinstance(v, list)}
    # from_single_file casts with .to(dtype) and warns on every load that no module needed float32: noise.
    quiet = logging.getLogger("diffusers.models.modeling_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for name, entry in index.items():
            if isinstance(entry, list) and None not in entry and name not in ("safety_checker", "feature_extractor"):
                kwargs[name] = _component(name, entry[1], sd, cdir, info, dtype, path)
    finally:
        quiet.setLevel(level)
    if "safety_checker" in accepted:  # the factory's quality gate does brand safety
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})


def _component(name: str, class_name: str, sd: dict, cdir: Path, info: CheckpointInfo, dtype: Any, path: Path) -> Any:
    import diffusers
    import transformers

    try:
        if class_name in ("UNet2DConditionModel", "AutoencoderKL"):
            extra = {"time_cond_proj_dim": info.lcm_dim} if name == "unet" and info.lcm_dim else {}
            weights = _lcm_unet(sd, cdir, info.lcm_dim) if extra else sd
            module = getattr(diffusers, class_name).from_single_file(
                weights, config=str(cdir), subfolder=name, local_files_only=True, torch_dtype=dtype, **extra
            )
        elif class_name in ("CLIPTextModel", "CLIPTextModelWithProjection"):
            from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

            module = create_diffusers_clip_model_from_ldm(
                getattr(transformers, class_name), sd, subfolder=name, config=str(cdir), torch_dtype=dtype,
                local_files_only=True,
            )  # fmt: skip
        elif class_name == "CLIPTokenizer":
            return _tokenizer(cdir / name)
        else:  # schedulers (and any config-only component)
            return _scheduler(getattr(diffusers, class_name), cdir, name, info)
    except ModelInputError:
        raise
    except Exception as exc:  # diffusers / transformers raise many types; a shape mismatch is the usual one
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelInputError(
            f"{path}: its {name} weights do not load with the configs in {cdir} ({type(exc).__name__}: {first[:300]})"
        ) from exc
    missing = [n for n, p in module.named_parameters() if p.is_meta]
    if missing:
        raise ModelInputError(
            f"{path}: no weights for {name}.{missing[0]} (and {len(missing) - 1} more) in {cdir}'s layout"
        )
    return module


def _lcm_unet(sd: dict, cdir: Path, dim: int) -> dict:
    """An LCM UNet's weights in diffusers' names: diffusers' own conversion, plus LCM's guidance embedding, which it
    has no mapping for (a diffusers-named state dict is loaded by from_single_file as it is)."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = UNet2DConditionModel.load_config(cdir, subfolder="unet", local_files_only=True)
    weights = convert_ldm_unet_checkpoint(sd, {**config, "time_cond_proj_dim": dim})
    weights["time_embedding.cond_proj.weight"] = sd[COND_PROJ]
    return weights


def _tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    from factory.generation.clip_tokenizer import build_clip_tokenizer

    if (folder / "vocab.json").is_file():
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    conf = (
        json.loads((folder / "tokenizer_config.json").read_text())
        if (folder / "tokenizer_config.json").is_file()
        else {}
    )
    pad = conf.get("pad_token")
    return build_clip_tokenizer(pad if pad != "<|endoftext|>" else None, conf.get("model_max_length", 77))


def _scheduler(cls: Any, cdir: Path, name: str, info: CheckpointInfo) -> Any:
    config = dict(cls.load_config(cdir, subfolder=name, local_files_only=True))
    if info.prediction != "epsilon" or info.zero_snr:
        config.update(prediction_type=info.prediction, rescale_betas_zero_snr=info.zero_snr)
    return cls.from_config(config)
