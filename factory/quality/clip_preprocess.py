"""CLIP's image preprocessing as batched torch ops on a uint8 (N, H, W, 3) tensor, where the images are.

open_clip's eval transform (tiny CLIP and ViT-L/14 alike) is torchvision's Resize(shorter side, bicubic,
antialias) → CenterCrop → ToTensor → Normalize on a PIL image. `ClipTransform.of` reads those parameters off the
loaded transform; `preprocess_pixels` does the same arithmetic: PIL's separable resample (horizontal pass, then
vertical, each rounded and clamped to 0..255 as PIL's 8-bit resampler stores it), torchvision's crop offsets, /255
and the normalisation. On a CUDA tensor the resample is float (two rounded passes) where PIL's is 22-bit fixed point; on
a CPU tensor it is torch's own fixed-point uint8 kernel (~7x cheaper there). Either way a resized value can differ by
one or two grey levels (measured: ≤ 0.1 % of values at 512² → 32, 0.05-0.4 % at 512² → 224, ~1 % when 64-192 px
images are upscaled to 224); the scores agree within 3e-4 (tests/quality/test_clip_preprocess.py; measured ≤ 1e-4
on the demo night). `quality.preprocess = "pil"` keeps open_clip's own transform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from factory.errors import ModelError

if TYPE_CHECKING:
    import torch

_MODES = {"bicubic": "bicubic", "bilinear": "bilinear"}  # PIL filters with a torch antialiased twin


@dataclass(frozen=True)
class ClipTransform:
    size: int  # the shorter side after the resize
    crop: tuple[int, int]  # (height, width) of the centre crop
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str  # "bicubic" | "bilinear"

    @classmethod
    def of(cls, preprocess: Any) -> ClipTransform:
        """The parameters of an open_clip eval transform; ModelError naming the fix when it is another shape."""
        from torchvision import transforms as T

        steps = list(getattr(preprocess, "transforms", []))
        resize = next((s for s in steps if isinstance(s, T.Resize)), None)
        crop = next((s for s in steps if isinstance(s, T.CenterCrop)), None)
        norm = next((s for s in steps if isinstance(s, T.Normalize)), None)
        size = getattr(resize, "size", None)
        size = size[0] if isinstance(size, (list, tuple)) and len(size) == 1 else size
        mode = _MODES.get(getattr(getattr(resize, "interpolation", None), "value", ""))
        if resize is None or crop is None or norm is None or not isinstance(size, int) or mode is None:
            raise ModelError(
                f"quality.preprocess = 'torch' needs open_clip's Resize(int, bicubic|bilinear)/CenterCrop/Normalize "
                f"transform; this CLIP's is {preprocess}; set quality.preprocess = 'pil'"
            )
        ch, cw = crop.size
        if ch > size or cw > size:
            raise ModelError(f"CLIP transform crops {crop.size} from a {size}px resize; set quality.preprocess = 'pil'")
        return cls(size, (ch, cw), tuple(norm.mean), tuple(norm.std), mode)


def preprocess_pixels(pixels: torch.Tensor, t: ClipTransform, kernel: str = "") -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, crop_h, crop_w) float32 CLIP input, on the tensor's device. `kernel`: "uint8"
    (torch's fixed-point antialiased kernel, CPU only, ~7x cheaper there), "float" (two rounded passes, any
    device), "" = uint8 on a CPU, float elsewhere."""
    x = pixels.permute(0, 3, 1, 2)
    h, w = x.shape[2:]
    # torchvision's Resize(int): the shorter side to `size`, the longer truncated in proportion
    nh, nw = (t.size, int(t.size * w / h)) if h <= w else (int(t.size * h / w), t.size)
    if (kernel or ("uint8" if x.device.type == "cpu" else "float")) == "uint8":
        x = _resample(x.contiguous(), (nh, nw), t.interpolation) if (nh, nw) != (h, w) else x
    else:
        x = x.float()
        if nw != w:
            x = _resample(x, (h, nw), t.interpolation).round().clamp(0.0, 255.0)
        if nh != h:
            x = _resample(x, (nh, nw), t.interpolation).round().clamp(0.0, 255.0)
    ch, cw = t.crop
    top, left = int(round((nh - ch) / 2.0)), int(round((nw - cw) / 2.0))
    return _normalize(x[:, :, top : top + ch, left : left + cw].float().div(255.0), t)


def _normalize(x: torch.Tensor, t: ClipTransform) -> torch.Tensor:
    import torch

    mean = torch.tensor(t.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(t.std, device=x.device).view(1, -1, 1, 1)
    return x.sub(mean).div(std)


def _resample(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased as PIL (its support scaling on a reduction)."""
    import torch.nn.functional as F

    return F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
