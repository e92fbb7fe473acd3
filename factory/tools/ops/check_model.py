"""`adfactory models check DIR [--lora PATH]`: the check an operator runs on a new checkpoint before the nightly.

It loads the directory the way a worker does (`load_pipeline`: LCM scheduler, LoRA fused; the configured
quantization; the inpaint repair pipeline over the same modules), runs one small generation and one repair, and
reports one line per component. Any problem with the directory or the LoRA is one sentence and exit 2
(`ModelInputError`); an out-of-memory GPU is exit 1 (the node, not the checkpoint). It proves the checkpoint
runs through the factory's code, not that its images are good.

    report = check_model("/models/lcm-dreamshaper-v7", None, load_config(None), emit=print_line)
    report.ok  # True; report.lines == [("model_index", "LatentConsistencyModelPipeline ..."), ...]
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.config import FactoryConfig, resolve_path
from factory.errors import FactoryError, ModelError, ModelInputError
from factory.generation.single_file import is_single_file

PROMPT = "product photography of a white sneaker, side view, white background"
NEGATIVE = "blurry, deformed, watermark"
SEED = 20261121
WEIGHT_SUFFIXES = (".safetensors", ".bin")
NOT_LOADED = {"safety_checker": "not loaded: the factory's quality gate does brand safety"}


@dataclass
class ModelCheck:
    lines: list[tuple[str, str]] = field(default_factory=list)  # (component or step, what was found)
    warnings: int = 0

    def add(self, name: str, text: str, emit: Callable[[str, str], None] | None) -> None:
        self.lines.append((name, text))
        self.warnings += text.startswith("WARNING")
        if emit:
            emit(name, text)


def check_model(
    pipeline: str | Path,
    lora: str | Path | None,
    cfg: FactoryConfig,
    size: int = 64,
    steps: int = 2,
    emit: Callable[[str, str], None] | None = None,
) -> ModelCheck:
    """Load `pipeline` (+ `lora`) with `cfg`'s model and repair settings, generate and repair one `size`² image."""
    if size < 8 or size % 8 or not 1 <= steps <= 50:
        raise ModelInputError(f"--size must be a positive multiple of 8 and --steps 1..50, got {size} and {steps}")
    report = ModelCheck()
    # 1. the directory (or single file) and the LoRA file, before any weights are loaded
    path = resolve_path(str(pipeline))
    if is_single_file(path) and path.is_file():
        index = describe_single_file(path, cfg.model.single_file_config, report, emit)
    else:
        index = read_index(path)
        report.add("model_index", f"{index['_class_name']} (diffusers {index.get('_diffusers_version', '?')})", emit)
    lora_path = resolve_path(str(lora)) if lora else None
    lora_line = describe_lora(lora_path) if lora_path else "none"
    from factory.generation.models import load_pipeline  # torch: after the cheap checks
    from factory.generation.quantize import quantize_unet
    from factory.generation.runtime import local_device, resolve
    from factory.quality.repair import Repairer

    # 2. load as a worker does: LCM scheduler, LoRA fused and unloaded, then the configured quantization
    model_cfg = dataclasses.replace(cfg.model, pipeline=str(path), lora=str(lora_path or ""))
    runtime = resolve(dataclasses.replace(cfg, model=model_cfg), *local_device(cfg))
    pipe = _stage("load", lambda: load_pipeline(model_cfg, runtime.device, runtime.torch_dtype))
    mode = runtime.quantization
    quant = _stage("quantize", lambda: quantize_unet(pipe.unet, mode))
    for name, text in describe_components(pipe, index):
        report.add(name, text, emit)
    report.add("lora", lora_line, emit)
    report.add("lcm", describe_lcm(pipe, lora_path), emit)
    report.add("quantization", f"{mode} ({quant['quantized']} of {quant['linear_layers']} UNet Linear layers)", emit)
    # 3. the repair pipeline over the same modules, as the worker builds it
    inpaint_unet = cfg.repair.inpaint_unet or None
    repairer = _stage("repair pipeline", lambda: Repairer(pipe, inpaint_unet, runtime.batch_invariant))
    shared = [
        k for k, v in repairer.pipe.components.items() if hasattr(v, "parameters") and pipe.components.get(k) is v
    ]
    report.add("repair", f"{type(repairer.pipe).__name__}, sharing {', '.join(shared) or 'no module'}", emit)
    # 4. one generation and one repair, with the worker's call arguments
    t0 = time.perf_counter()
    image = _stage("generation", lambda: _generate(pipe, size, steps, cfg.model.guidance_scale))
    report.add("generate", f"1 image {size}x{size}, {steps} steps, {time.perf_counter() - t0:.2f} s", emit)
    t0 = time.perf_counter()
    changed = _stage("repair", lambda: _repair(repairer, image, cfg, steps))
    report.add("repair run", f"{changed}, {time.perf_counter() - t0:.2f} s", emit)
    return report


def describe_single_file(path: Path, setting: str, report: ModelCheck, emit: Callable[[str, str], None] | None) -> dict:
    """What a single-file checkpoint's keys say (family, inpainting, dtype, size, LCM, prediction) and the configs
    it loads with; returns the config directory's model_index.json, without its unloaded (null) entries."""
    from factory.generation.single_file import SHIPPED_CONFIGS, config_dir, inspect_checkpoint

    info = inspect_checkpoint(path)
    kind = "inpainting (9-channel UNet)" if info.inpainting else f"text-to-image ({info.in_channels}-channel UNet)"
    report.add("checkpoint", f"{info.family} single file (original LDM keys), {kind}, {info.dtype}, "
               f"{info.params / 1e6:.1f}M params", emit)  # fmt: skip
    lcm = (
        f"LCM-distilled (time_cond_proj_dim={info.lcm_dim})"
        if info.lcm_dim
        else "not detectable from the keys (a base model, or an LCM-LoRA merged into the weights)"
    )
    report.add("lcm keys", lcm, emit)
    pred = info.prediction + (", zero terminal SNR (ztsnr)" if info.zero_snr else "")
    report.add("prediction", f"{pred} (from the keys' v_pred/ztsnr markers)", emit)
    cdir = config_dir(path, setting, info.family)
    where = "next to the file" if setting == "auto" else "model.single_file_config"
    where = "the shipped full-size set" if cdir.parent == SHIPPED_CONFIGS else where
    report.add("configs", f"{cdir} ({where})", emit)
    if info.inpainting:
        raise ModelInputError(
            f"{path}: an inpainting checkpoint cannot generate from text; it cannot be model.pipeline"
        )
    index = json.loads((cdir / "model_index.json").read_text(encoding="utf-8"))
    return {k: v for k, v in index.items() if not (isinstance(v, list) and None in v)}


def read_index(path: Path) -> dict[str, Any]:
    """model_index.json of a pipeline directory, after checking that every listed component is on disk."""
    if not path.exists():
        raise ModelInputError(f"{path}: no such directory")
    if not path.is_dir():
        raise ModelInputError(f"{path}: a file, not a diffusers pipeline directory")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelInputError(_not_a_pipeline(path))
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        cls = index["_class_name"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelInputError(f"{index_file}: not a diffusers model index ({type(exc).__name__}: {exc})") from None
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or None in entry or name in NOT_LOADED:
            continue
        folder = path / name
        if not folder.is_dir():
            raise ModelInputError(f"{path}: model_index.json lists {name!r} but there is no {name}/ folder")
        _check_weights(folder)
    if not isinstance(cls, str):
        raise ModelInputError(f"{index_file}: _class_name must be a string")
    return index


def _not_a_pipeline(path: Path) -> str:
    config = path / "config.json"
    if config.is_file():
        try:
            cls = json.loads(config.read_text(encoding="utf-8")).get("_class_name", "")
        except ValueError:
            cls = ""
        if cls == "UNet2DConditionModel":
            return (
                f"{path}: a UNet-only directory (e.g. latent-consistency/lcm-sdxl), not a pipeline: copy it into "
                "the unet/ folder of a copy of its base pipeline directory and check that directory"
            )
    if (path / "pytorch_lora_weights.safetensors").is_file():
        return f"{path}: a LoRA, not a pipeline: pass it with --lora after its base pipeline directory"
    return f"{path}: not a diffusers pipeline directory (no model_index.json)"


def _check_weights(folder: Path) -> None:
    """A model folder (one with config.json) needs weights; Git LFS pointers (a clone without LFS) are not weights."""
    if not (folder / "config.json").is_file():
        return  # tokenizers, schedulers and processors have their own files; diffusers reports those
    weights = [p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.name.endswith(".safetensors.index.json")]
    if not weights:
        raise ModelInputError(f"{folder}: no weights (*.safetensors or *.bin): an incomplete download?")
    for p in weights:
        if p.stat().st_size < 1024 and p.read_bytes().startswith(b"version https://git-lfs"):
            raise ModelInputError(f"{p}: a Git LFS pointer, not weights: fetch with 'git lfs pull' or hf download")


def describe_lora(path: Path) -> str:
    """What a LoRA file adapts, from its keys (no weights loaded): file, layer counts, format."""
    from factory.generation.lora_formats import PEFT_PREFIX, find_lora

    lora = find_lora(path)
    file, keys = lora.weights, lora.keys
    down = [k for k in keys if any(s in k for s in ("lora_down.weight", "lora_A.weight", "lora.down.weight"))]
    unet = sum(k.startswith(("lora_unet_", "unet.", PEFT_PREFIX)) for k in down)
    text = sum(k.startswith(("lora_te", "text_encoder")) for k in down)
    fmt = f"{lora.format} format"
    if not unet:
        return f"WARNING: {file}: no UNet layers ({len(keys)} keys), so it cannot be an LCM-LoRA"
    return f"{file}: {unet} UNet layers, {text} text-encoder layers, {fmt}; fused into the weights"


def describe_components(pipe: Any, index: dict[str, Any]) -> list[tuple[str, str]]:
    """One (name, text) per model_index component: class, dtype, size and the settings that matter for LCM."""
    lines = []
    for name in [k for k in index if not k.startswith("_") and isinstance(index[k], list)]:
        module = pipe.components.get(name)
        saved = index[name][1] if len(index[name]) == 2 else None
        if module is None:
            lines.append((name, NOT_LOADED.get(name, "none") + (f" (saved: {saved})" if saved else "")))
            continue
        text = type(module).__name__
        if saved and saved != text:
            text += f" (saved: {saved}; replaced)"
        if hasattr(module, "parameters"):
            params = sum(p.numel() for p in module.parameters())
            text += f", {str(module.dtype).removeprefix('torch.')}, {params / 1e6:.1f}M params"
        config = getattr(module, "config", None)
        if name == "unet":
            text += f", in_channels={config.in_channels}, time_cond_proj_dim={config.time_cond_proj_dim}"
        elif name == "tokenizer" or name == "tokenizer_2":
            text += f", model_max_length={module.model_max_length}"
        elif name == "scheduler":
            text += f", original_inference_steps={getattr(config, 'original_inference_steps', None)}"
        lines.append((name, text))
    return lines


def describe_lcm(pipe: Any, lora: Path | None) -> str:
    dim = pipe.unet.config.time_cond_proj_dim
    if dim:
        return f"LCM-distilled UNet (time_cond_proj_dim={dim}: guidance embedded, negative prompts unused)"
    if lora:
        return "base UNet + the LoRA: LCM only if the LoRA is an LCM-LoRA (the check cannot tell)"
    return "WARNING: base UNet and no LoRA: LCM's 2-8 steps give unfinished images; pass an LCM-LoRA with --lora"


def _stage(name: str, fn: Callable[[], Any]) -> Any:
    """Run one step; a failure caused by the checkpoint becomes one sentence and exit 2."""
    import torch

    try:
        return fn()
    except (ModelInputError, torch.cuda.OutOfMemoryError):
        raise  # an out-of-memory GPU is the node's problem, not the checkpoint's: exit 1
    except ModelError as exc:
        raise ModelInputError(str(exc).splitlines()[0]) from exc
    except FactoryError:
        raise  # e.g. a quantization mode the device cannot run: a config error with its own exit code
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelInputError(f"{name} failed: {type(exc).__name__}: {first}") from exc


def _generate(pipe: Any, size: int, steps: int, guidance_scale: float) -> Any:
    import numpy as np
    import torch

    generator = [torch.Generator("cpu").manual_seed(SEED)]
    with torch.inference_mode():
        image = pipe(
            prompt=[PROMPT],
            negative_prompt=[NEGATIVE],
            width=size,
            height=size,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="pil",
        ).images[0]
    if image.size != (size, size):
        raise RuntimeError(f"the pipeline returned a {image.size[0]}x{image.size[1]} image for {size}x{size}")
    if np.asarray(image).std() == 0:
        # A constant (usually black) image: NaNs or overflow, e.g. an SDXL VAE in float16 without upcasting.
        raise RuntimeError(f"the generated image is one flat colour (NaN or overflow in {pipe.unet.dtype}?)")
    return image


def _repair(repairer: Any, image: Any, cfg: FactoryConfig, steps: int) -> str:
    """Repaint the centre quarter; the factory's guarantee is that nothing outside the mask changes."""
    import numpy as np

    from factory.quality import defects

    w, h = image.size
    mask, _ = defects.build_mask(
        image.size, (w // 4, h // 4, 3 * w // 4, 3 * h // 4), cfg.repair.dilate, cfg.repair.blur
    )
    r = cfg.repair
    out = repairer.repair(image, PROMPT, NEGATIVE, SEED, mask, r.strength, steps, r.padding, cfg.model.guidance_scale)
    a, b, m = np.asarray(image).astype(int), np.asarray(out).astype(int), np.asarray(mask)
    if not np.array_equal(a[m == 0], b[m == 0]):
        raise RuntimeError("pixels outside the repair mask changed")
    inside = float(np.abs(a[m == 255] - b[m == 255]).mean())
    if inside == 0:
        raise RuntimeError("the repair changed no pixel inside the mask")
    return f"centre {w // 2}x{h // 2} repainted (mean change {inside:.1f}/255), pixels outside the mask unchanged"
