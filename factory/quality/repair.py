"""Inpaint repair of local defects, ADetailer-style: detect (factory.quality.defects) -> mask -> inpaint -> paste back.

`Repairer` wraps the worker's text-to-image pipeline in an inpainting pipeline over the same module objects
(`inpaint_pipeline`: the SD1.5 or SDXL inpainting class built from them, else `AutoPipelineForInpainting.from_pipe`):
the UNet, VAE and text encoders are shared, so a repair pass costs no second copy of the weights. By default the
generation UNet (4 input channels) does the inpainting: diffusers' SD and SDXL inpaint pipelines support 4-channel
UNets by re-noising the original latents outside the mask at every step (the "legacy" inpainting scheme). A dedicated
9-channel inpainting UNet (latents + mask + masked-image latents, e.g. sd-1.5-inpainting) can be given with
`inpaint_unet`; it then is the only extra weight in memory. A LoRA fused into the generation UNet (e.g. LCM-LoRA) is
not applied to a dedicated UNet, which must be LCM-capable itself.

Guarantees of `Repairer.repair`:
  - pixels where the mask is 0 are byte-identical to the input (the result is `Image.composite`d onto it);
  - same inputs -> same bytes: a CPU generator seeded with `repair_seed(seed, attempt)`, a private scheduler, and
    optionally `BatchInvariantMode` numerics (as in generation).

Typical use (the worker):
    repairer = Repairer(worker.pipe, inpaint_unet=None, batch_invariant=worker.batch_invariant)  # once
    if reasons.is_repairable(reasons):
        defect = defects.defect_mask(image, reasons, tile=64)
        fixed = repairer.repair(image, task.prompt, task.negative_prompt, task.seed, defect.mask, attempt=0)
        # then re-score `fixed`; on failure retry with attempt=1, ... or send to review
    Several images of one size: `repairer.repair_batch([RepairItem(image, mask, prompt, negative, seed, attempt),
    ...])` (one pipeline call; factory.quality.repair_loop groups a batch's repairs by (size, steps)).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from factory.errors import ModelError


def inpaint_size(size: tuple[int, int], render: tuple[int, int]) -> tuple[int, int]:
    """The width x height an inpaint of an image of `size` runs at: `size` itself when `render` is (0, 0) (a
    bucket's image: already a multiple of 8); else `size`'s aspect ratio at about `render`'s pixel count, in
    multiples of 8 (an ad placement's delivered pixels, e.g. 1080x1350, repaired at the cost of the trained size
    it was generated at)."""
    if not all(render):
        return size
    scale = math.sqrt(render[0] * render[1] / (size[0] * size[1]))
    return max(8, round(size[0] * scale / 8) * 8), max(8, round(size[1] * scale / 8) * 8)


def repair_seed(seed: int, attempt: int) -> int:
    """The generator seed of repair `attempt` (0, 1, ...) of an image generated with `seed`.

    A hash, not `seed + attempt`: consecutive planner seeds must not make one image's repair noise equal to another
    image's generation noise. Stable across processes (no Python `hash`) and within int64, like planner seeds.
    """
    digest = hashlib.sha256(f"repair\x00{seed}\x00{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def repair_steps(steps: int, strength: float) -> int:
    """Denoising steps a repair runs for an image generated in `steps` steps: the share of them that `strength`
    covers, ceil(steps * strength), at least 1 (4 steps at 0.4 -> 2, 8 at 0.4 -> 4).

    A generation spends `steps` steps on the whole noise range; a repair at `strength` starts from the
    `strength` share of it, so this gives the repaired region as many steps per noise level as the image had,
    and a repair's denoising costs about `strength` of a generation's (running all `steps` made a repair cost more
    than generating the image: docs/performance.md). Image quality of this choice is for real weights to judge.
    """
    return max(1, math.ceil(steps * strength - 1e-9))


def inference_steps(steps: int, strength: float, max_steps: int | None = None) -> int:
    """The `num_inference_steps` to request so that about `steps` denoising steps actually run at `strength`.

    img2img/inpaint pipelines run only the last `int(num_inference_steps * strength)` steps of the schedule (4 LCM
    steps at strength 0.4 would run int(1.6) = 1 step). So we ask for the smallest n with int(n * strength) >=
    steps; with LCM this picks `steps` timesteps from the low-noise end of an n-step LCM schedule. `max_steps` caps
    n (LCMScheduler refuses more than its `original_inference_steps`, 50), which at very low strength may run fewer
    steps than requested; if not even one step would run, this raises.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    n = max(steps, math.ceil(steps / strength))
    while int(n * strength) < steps:  # float rounding, e.g. 0.3 * 14 = 4.2 but 0.7 * 10 = 6.999...
        n += 1
    if max_steps is not None and n > max_steps:
        n = max_steps
        if int(n * strength) < 1:
            raise ValueError(f"strength {strength} runs no step with at most {max_steps} scheduler steps")
    return n


def load_inpaint_unet(path: str | Path, like: Any) -> Any:
    """A dedicated inpainting UNet from a local diffusers directory (a UNet dir, or a pipeline dir with `unet/`),
    in the dtype and on the device of the generation UNet `like`."""
    from diffusers import UNet2DConditionModel

    path = Path(path)
    subfolder = "unet" if (path / "unet" / "config.json").is_file() else None
    if not (path / (subfolder or "") / "config.json").is_file():
        raise ModelError(f"{path}: not a diffusers UNet directory (no config.json)")
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder=subfolder, local_files_only=True, dtype=like.dtype)
    except Exception as exc:  # diffusers raises many types; the user needs the path and the cause
        raise ModelError(f"{path}: cannot load the inpainting UNet ({type(exc).__name__}: {exc})") from exc
    if unet.config.in_channels not in (4, 9):
        raise ModelError(f"{path}: an inpainting UNet has 4 or 9 input channels, not {unet.config.in_channels}")
    for key in ("cross_attention_dim", "addition_embed_type"):
        if unet.config.get(key) != like.config.get(key):
            raise ModelError(f"{path}: UNet {key}={unet.config.get(key)} does not match the pipeline's")
    return unet.to(like.device)


# Text-to-image classes -> the inpainting class that runs their modules, built directly from them. Measured: importing
# AutoPipeline imports every pipeline family diffusers has, ~0.6 s of a worker's start-up on a quiet 2-core machine,
# for a pipeline that builds in ~4 ms. LatentConsistencyModelPipeline (LCM-distilled SD1.5 checkpoints, e.g.
# SimianLuo/LCM_Dreamshaper_v7), which AutoPipeline links to no inpainting pipeline, holds an SD1.5 UNet, VAE, text
# encoder and LCMScheduler: SD1.5's inpaint pipeline runs them, guidance embedding included. Other classes go
# through AutoPipelineForInpainting.from_pipe.
INPAINT_PIPELINE_FOR = {
    "StableDiffusionPipeline": "StableDiffusionInpaintPipeline",
    "LatentConsistencyModelPipeline": "StableDiffusionInpaintPipeline",
    "StableDiffusionXLPipeline": "StableDiffusionXLInpaintPipeline",
}


def inpaint_pipeline(pipe: Any, **components: Any) -> Any:
    """The inpainting pipeline that shares `pipe`'s modules (no second copy of the weights); `components` replace
    some of them (a private scheduler, a dedicated inpainting UNet)."""
    import diffusers

    name = type(pipe).__name__
    if name not in INPAINT_PIPELINE_FOR:
        try:
            return diffusers.AutoPipelineForInpainting.from_pipe(pipe, **components)
        except ValueError as exc:  # "AutoPipeline can't find a pipeline linked to ...", or missing modules
            raise ModelError(
                f"{name}: no inpainting pipeline shares its modules ({exc}); set repair.mode = 'off'"
            ) from exc
    cls = getattr(diffusers, INPAINT_PIPELINE_FOR[name])
    return cls(**{**_from_pipe_kwargs(cls, pipe), **components})


def _from_pipe_kwargs(cls: type, pipe: Any) -> dict[str, Any]:
    """What AutoPipeline's `from_pipe` passes to `cls`: `pipe`'s module objects as they are, and its config options
    that `cls` takes (e.g. SDXL's `force_zeros_for_empty_prompt`). Not `cls.from_pipe`: that would also cast every
    shared module to its `dtype` argument (float32 by default), the generation UNet included."""
    params = inspect.signature(cls.__init__).parameters
    modules = {k: v for k, v in pipe.components.items() if k in params}
    options = {k.lstrip("_"): v for k, v in pipe.config.items() if k.lstrip("_") in params and k not in pipe.components}
    if "requires_safety_checker" in params:  # the factory has its own gate (see models.load_pipeline)
        options["requires_safety_checker"] = bool(pipe.config.get("requires_safety_checker", False))
    return {**options, **modules}


class RepairShortcuts:
    """Mixed into the Repairer's private inpaint pipeline (`with_shortcuts`): two per-call costs removed, same bytes.

    - `_execution_device`: diffusers walks every submodule of every component looking for offloading hooks on each
      call (~2.6 ms per call for the tiny model, ~5 % of a one-image repair); the factory never offloads, so the
      pipeline's device, read once when the Repairer is built, is the execution device.
    - the masked image's VAE encode: a 4-channel UNet (the default: generation UNet, "legacy" inpainting) never reads
      the masked-image latents, yet diffusers encodes them (a second encode per repaired image). Skipped; the
      random draw that encode takes from each image's generator is taken all the same, so the scheduler's later
      draws, and the bytes, are unchanged (tests/quality/test_repair.py compares with the stock pipeline, SD1.5 and
      SDXL in float32; an fp16 SDXL VAE with `force_upcast` draws in float32 there, in float16 here: still
      deterministic and batch-invariant, possibly other bytes than stock diffusers).
    """

    _pinned_device: Any = None  # set by with_shortcuts: the Repairer never moves its pipeline

    @property
    def _execution_device(self) -> Any:
        return self._pinned_device

    def prepare_mask_latents(
        self, mask, masked_image, batch_size, height, width, dtype, device, generator, do_classifier_free_guidance
    ):  # diffusers' signature (SD and SDXL inpaint pipelines), called positionally
        skip = self.unet.config.in_channels == 4 and isinstance(generator, list) and masked_image is not None
        if skip and masked_image.shape[1] != 4:
            from diffusers.utils.torch_utils import randn_tensor

            scale, channels = self.vae_scale_factor, self.vae.config.latent_channels
            shape = (1, channels, height // scale, width // scale)
            for g in generator:  # the draw of DiagonalGaussianDistribution.sample in the skipped encode
                randn_tensor(shape, generator=g, device=device, dtype=self.vae.dtype)
            masked_image = torch.zeros(masked_image.shape[0], *shape[1:], dtype=dtype, device=device)
        return super().prepare_mask_latents(
            mask, masked_image, batch_size, height, width, dtype, device, generator, do_classifier_free_guidance
        )


_SHORTCUT_CLASSES: dict[type, type] = {}


def with_shortcuts(pipe: Any) -> Any:
    """`pipe` (an inpaint pipeline private to a Repairer) with `RepairShortcuts` mixed into its class."""
    cls = type(pipe)
    if cls not in _SHORTCUT_CLASSES:  # one subclass per pipeline class, same name (diffusers looks classes up by name)
        _SHORTCUT_CLASSES[cls] = type(cls.__name__, (RepairShortcuts, cls), {"__module__": cls.__module__})
    device = pipe.device
    pipe.__class__ = _SHORTCUT_CLASSES[cls]
    pipe._pinned_device = device
    return pipe


class Repairer:
    """Masked inpainting with the worker's pipeline weights. Build once per worker, call `repair` per image."""

    def __init__(self, pipe: Any, inpaint_unet: str | Path | None = None, batch_invariant: bool = False):
        components: dict[str, Any] = {
            # A private scheduler: set_timesteps/set_begin_index mutate scheduler state, which must never leak
            # between repair and generation calls (it is a small config object, not weights).
            "scheduler": type(pipe.scheduler).from_config(pipe.scheduler.config),
        }
        if inpaint_unet:
            components["unet"] = load_inpaint_unet(inpaint_unet, pipe.unet)
        self.pipe = with_shortcuts(inpaint_pipeline(pipe, **components))
        self.pipe.set_progress_bar_config(disable=True)
        self.batch_invariant = batch_invariant
        self._supports_crop = hasattr(self.pipe, "mask_processor")  # diffusers' crop-region helper
        # LCMScheduler refuses schedules longer than the distillation schedule (50 steps).
        self._max_steps = getattr(self.pipe.scheduler.config, "original_inference_steps", None)

    def _numerics(self) -> contextlib.AbstractContextManager:
        from factory.determinism import BatchInvariantMode

        return BatchInvariantMode() if self.batch_invariant else contextlib.nullcontext()

    def repair(
        self,
        image: Image.Image,
        prompt: str,
        negative_prompt: str | None,
        seed: int,
        mask: Image.Image,
        strength: float = 0.4,
        steps: int = 4,
        padding: int | None = 32,
        guidance_scale: float = 1.0,
        attempt: int = 0,
    ) -> Image.Image:
        """Repaint `image` where `mask` ("L", 255 = repaint; e.g. `defects.build_mask`) is nonzero.

        seed      the image's generation seed; the noise comes from `repair_seed(seed, attempt)`, so each retry
                  of the same image gets new noise and a re-run of the same attempt gets the same bytes.
        strength  how far back into the noise schedule the masked region goes (0.3-0.5 keeps the composition).
        steps     the generation's step count; the repair runs `repair_steps(steps, strength)` of them.
        padding   crop to the mask's bounding box plus this margin and inpaint the crop at the full image size
                  (ADetailer's "inpaint only masked": more pixels for the defect); None/0 inpaints the whole image.
        Width and height must be multiples of 8, as for generation.
        """
        item = RepairItem(image, mask, prompt, negative_prompt, seed, attempt)
        return self.repair_batch([item], strength, steps, padding, guidance_scale)[0]

    def repair_batch(
        self,
        items: list[RepairItem],
        strength: float = 0.4,
        steps: int = 4,
        padding: int | None = 32,
        guidance_scale: float = 1.0,
        size: tuple[int, int] | None = None,
    ) -> list[Image.Image]:
        """`repair` for several images of one size in ONE pipeline call: per-image masks, crops, prompts and
        seeded generators. Every per-image step (crop, noise, VAE encode, paste-back) is per sample, so with
        batch-invariant numerics an image's bytes do not depend on the other images in the call. `size`: the
        pipeline's width x height (multiples of 8; `inpaint_size`), when it is not the images' own."""
        images = [it.image.convert("RGB") for it in items]
        masks = [it.mask.convert("L") for it in items]
        if len({im.size for im in images}) > 1:
            raise ValueError(f"repair_batch takes images of one size, got {sorted({im.size for im in images})}")
        for im, m in zip(images, masks):
            if m.size != im.size:
                raise ValueError(f"mask size {m.size} differs from image size {im.size}")
        todo = [i for i, m in enumerate(masks) if m.getbbox() is not None]  # an empty mask repaints nothing
        out = [im.copy() for im in images]
        if not todo:
            return out
        width, height = size or images[0].size
        crops = [self._crop_box(masks[i], width, height, padding) for i in todo]
        painted = self._inpaint(
            [images[i].crop(c) for i, c in zip(todo, crops)],
            [masks[i].crop(c) for i, c in zip(todo, crops)],
            [items[i] for i in todo],
            width,
            height,
            strength,
            steps,
            guidance_scale,
        )
        for i, box, patch in zip(todo, crops, painted):
            out[i] = _paste_back(images[i], masks[i], patch, box)
        return out

    def _crop_box(self, mask: Image.Image, width: int, height: int, padding: int | None) -> tuple[int, int, int, int]:
        """The region inpainted at full size: the mask's box plus `padding`, grown to the aspect ratio of the
        pipeline's width x height (diffusers' `padding_mask_crop` rule, applied per image so a batch can hold
        different crops)."""
        if not padding or not self._supports_crop:
            return 0, 0, mask.width, mask.height
        x0, y0, x1, y1 = self.pipe.mask_processor.get_crop_region(mask, width, height, pad=padding)
        return max(int(x0), 0), max(int(y0), 0), min(int(x1), mask.width), min(int(y1), mask.height)

    def _inpaint(
        self,
        crops: list[Image.Image],
        masks: list[Image.Image],
        items: list[RepairItem],
        width: int,
        height: int,
        strength: float,
        steps: int,
        guidance_scale: float,
    ) -> list[Image.Image]:
        generators = [torch.Generator("cpu").manual_seed(repair_seed(it.seed, it.attempt)) for it in items]
        with torch.inference_mode(), self._numerics():
            return self.pipe(
                prompt=[it.prompt for it in items],
                negative_prompt=[it.negative_prompt or "" for it in items],
                image=crops,
                mask_image=masks,
                width=width,
                height=height,
                strength=strength,
                num_inference_steps=inference_steps(repair_steps(steps, strength), strength, self._max_steps),
                guidance_scale=guidance_scale,
                generator=generators,
                output_type="pil",
            ).images


@dataclass(frozen=True)
class RepairItem:
    """One image to repair in a `Repairer.repair_batch` call."""

    image: Image.Image
    mask: Image.Image  # "L", 255 = repaint
    prompt: str
    negative_prompt: str | None
    seed: int  # the image's generation seed (the repair noise is `repair_seed(seed, attempt)`)
    attempt: int = 0


def _paste_back(
    image: Image.Image, mask: Image.Image, patch: Image.Image, box: tuple[int, int, int, int]
) -> Image.Image:
    """The inpainted crop back in place, through the feathered mask: where mask == 0 the original bytes are kept
    exactly (the pipeline output differs there by a VAE round trip), and the feather blends the repaint in."""
    x0, y0, x1, y1 = box
    if patch.size != (x1 - x0, y1 - y0):
        patch = patch.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
    full = image.copy()
    full.paste(patch, (x0, y0))
    return Image.composite(full, image, mask)
