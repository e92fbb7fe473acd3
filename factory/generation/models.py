"""Model loading: real checkpoints and the embedded tiny models alike, through the same entry points.

The factory only ever loads the generator through `load_pipeline` (and CLIP through
`factory.quality.clip_model.load_clip`), which use the standard entry points
(`DiffusionPipeline.from_pretrained(dir, local_files_only=True)`,
`open_clip.create_model_and_transforms(name, pretrained=path)`). `factory.tools.builders.tiny_models` writes
random-weight models of the real architectures in those same on-disk formats, so the whole factory runs offline on a
CPU.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.config import ModelConfig, resolve_path
from factory.errors import ModelError
from factory.generation.lora_formats import load_lora
from factory.generation.single_file import SINGLE_FILE_SUFFIXES, candidate_config_dirs, is_single_file, load_single_file
from factory.modes import NULL_PIPELINE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _NullTokens:
    input_ids: list[list[int]]


class NullTokenizer:
    """Stands in for the CLIP tokenizer: a word count plus BOS/EOS (prompt_tokens is then not a real token count)."""

    model_max_length = 77

    def __call__(self, texts: list[str], truncation: bool = False) -> _NullTokens:
        return _NullTokens([[0] * (len(t.split()) + 2) for t in texts])


class NullPipeline:
    """A pipeline-shaped object without weights: one solid colour per image, taken from its generator's seed."""

    unet = None
    tokenizer = NullTokenizer()

    def __call__(self, *, prompt: list[str], width: int, height: int, generator: list[Any], **_: Any) -> Any:
        from types import SimpleNamespace

        from PIL import Image

        colours = [
            (g.initial_seed() >> 40 & 255, g.initial_seed() >> 24 & 255, g.initial_seed() & 255) for g in generator
        ]
        return SimpleNamespace(images=[Image.new("RGB", (width, height), c) for c in colours[: len(prompt)]])

    def set_progress_bar_config(self, **_: Any) -> None:
        pass


def load_pipeline(cfg: ModelConfig, device: str, dtype: Any) -> Any:
    """Load a local SD1.5-family or SDXL text-to-image pipeline, switched to the LCM scheduler (or NullPipeline)."""
    if cfg.pipeline == NULL_PIPELINE:
        return NullPipeline()
    import_libraries()  # torchao kept out of diffusers/transformers (see there), whoever calls first
    from diffusers import LCMScheduler
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # per-component load bars would flood cron logs
    transformers_logging.disable_progress_bar()
    path = resolve_path(cfg.pipeline)
    if is_single_file(path):
        pipe = load_single_file(path, cfg.single_file_config, dtype)
    else:
        pipe = _load_directory(path, dtype)
    if not hasattr(pipe, "unet") or not hasattr(pipe, "text_encoder"):
        raise ModelError(f"{path}: {type(pipe).__name__} is not an SD1.5-family or SDXL text-to-image pipeline")
    if not isinstance(pipe.scheduler, LCMScheduler):
        # Only LCMScheduler's own keys: PNDM/Euler extras would be carried along and warned about on every copy.
        accepted = inspect.signature(LCMScheduler.__init__).parameters
        pipe.scheduler = LCMScheduler.from_config({k: v for k, v in pipe.scheduler.config.items() if k in accepted})
    if cfg.lora:
        lora = resolve_path(cfg.lora)
        try:
            load_lora(pipe, lora, "model_lora")  # kohya / A1111, diffusers or peft format
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"{lora}: cannot load LoRA weights ({type(exc).__name__}: {exc})") from exc
        # Fused weights run at base-model speed and can be quantized afterwards.
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    if device == "cpu":
        own_memory(pipe)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def own_memory(pipe: Any) -> None:
    """Copy every weight into freshly allocated memory. Weights loaded from safetensors live where the file put them
    (mmap), and CPU kernels pick their vectorized paths by address alignment: the same weights at another offset (a
    single file vs. the directory form, a re-saved file) gave UNet outputs ~1e-6 apart, enough to flip pixels."""
    for module in pipe.components.values():
        if not hasattr(module, "modules"):
            continue
        for m in module.modules():
            for table in (m._parameters, m._buffers):
                for t in table.values():
                    if t is not None:
                        t.data = t.data.clone()


def _load_directory(path: Path, dtype: Any) -> Any:
    from diffusers import DiffusionPipeline

    index = path / "model_index.json"
    if not index.is_file():
        raise ModelError(
            f"{path}: neither a diffusers pipeline directory (no model_index.json) nor a single-file checkpoint "
            f"({' / '.join(SINGLE_FILE_SUFFIXES)}); run 'make models' for the embedded one"
        )
    kwargs: dict[str, Any] = {}
    if "safety_checker" in json.loads(index.read_text()):
        # The factory has its own quality/brand-safety gate; the SD1.5 NSFW checker would cost a model load.
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        return DiffusionPipeline.from_pretrained(path, local_files_only=True, dtype=dtype, **kwargs)
    except Exception as exc:  # diffusers raises many types; the user needs the path and the cause
        raise ModelError(f"{path}: cannot load the diffusers pipeline ({type(exc).__name__}: {exc})") from exc


def model_fingerprint(cfg: ModelConfig) -> str:
    """A short id of the generation weights (path contents, not names), recorded in manifests."""
    if cfg.pipeline == NULL_PIPELINE:
        return NULL_PIPELINE
    h = hashlib.sha256()
    pipeline = resolve_path(cfg.pipeline)
    roots = [pipeline] + ([resolve_path(cfg.lora)] if cfg.lora else [])
    if is_single_file(pipeline):
        # The configs a single file loads with change pixels as a directory's JSON files do: hashed the same way.
        roots += candidate_config_dirs(pipeline, cfg.single_file_config)
    for root in roots:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            st = f.stat()
            # Size + mtime is cheap for multi-GB checkpoints; config files are hashed fully.
            h.update(str(f.relative_to(root.parent)).encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
            else:
                h.update(f"{st.st_size}".encode())
                with f.open("rb") as fh:
                    h.update(fh.read(1 << 20))
    return h.hexdigest()[:12]


def import_libraries(quantization: str = "none") -> None:
    """Import what a worker needs to load models (torch, diffusers, transformers, open_clip) once, so the worker
    times its imports apart from its model loads; ray is never imported here (only its executor does).

    diffusers and transformers import torchao at import time whenever it is installed (to load torchao-serialized
    checkpoints, which the factory never does): that is seconds of imports for a night that does not quantize. For
    such a night torchao is hidden while they are imported (`sys.modules[name] = None` makes find_spec answer
    "not installed"), then un-hidden, so a later `quantize_unet` in the same process still imports it.
    """
    from factory import logs

    logs.quiet()  # known-harmless import-time messages dropped here too: a Ray worker never runs logs.setup()
    hide = quantization == "none" and "diffusers" not in sys.modules and "torchao" not in sys.modules
    if hide:
        sys.modules["torchao"] = None  # type: ignore[assignment]
    try:
        import diffusers.models.modeling_utils  # noqa: F401
        import diffusers.quantizers  # noqa: F401
        import open_clip  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
        from diffusers import DiffusionPipeline, LCMScheduler  # noqa: F401
    finally:
        if hide:
            del sys.modules["torchao"]
