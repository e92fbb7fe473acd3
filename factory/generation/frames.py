"""A batch's generated images in the two places they live: the uint8 tensor on the device (what the gate scores)
and the PIL images on the host (what repair edits and the writer encodes), made by one device-to-host copy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    import torch


@dataclass
class Frames:
    images: list[Image.Image]  # in task order
    pixels: torch.Tensor | None = None  # (N, H, W, 3) uint8 on the device, the same pixels; None: mixed sizes

    @classmethod
    def from_output(cls, images: torch.Tensor) -> Frames:
        """From a pipeline's `output_type="pt"` images, (N, 3, H, W) floats in 0..1: diffusers' own uint8 rounding
        (`numpy_to_pil`: float32 x 255, round half to even), so the pixels are those of `output_type="pil"`. A
        pipeline that returns PIL images whatever it is asked (the null pipeline) gives host images only."""
        import torch

        if isinstance(images, list):
            return cls(images)
        # rounded in the pipeline's (N, 3, H, W) layout, then laid out (N, H, W, 3) as uint8: the cheap order
        pixels = images.float().mul(255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        host = pixels.cpu().numpy()  # the one copy to the host per batch
        return cls([Image.fromarray(a) for a in host], pixels)

    def fit(self, sizes: list[tuple[int, int]]) -> Frames:
        """Each image at its (width, height): tasks promoted to a larger bucket (padding = "size") are resized down
        with LANCZOS on the host, which leaves no one-size tensor to score."""
        if all(im.size == size for im, size in zip(self.images, sizes)):
            return self
        fitted = [
            im if im.size == size else im.resize(size, Image.Resampling.LANCZOS) for im, size in zip(self.images, sizes)
        ]
        return Frames(fitted)

    def __add__(self, other: Frames) -> Frames:
        """The images of both, in order (the halves of a batch split on a CUDA out-of-memory error)."""
        import torch

        joined = None
        if self.pixels is not None and other.pixels is not None and self.pixels.shape[1:] == other.pixels.shape[1:]:
            joined = torch.cat([self.pixels, other.pixels])
        return Frames(self.images + other.images, joined)
