"""A batch's generated images in the two places they live: the uint8 tensor on the device (what the gate scores)
and the PIL images on the host (what repair edits and the writer encodes), made by one device-to-host copy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from factory.inputs.placements import fit_image

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

    def fit(self, targets: list[tuple[int, int, str]]) -> Frames:
        """Each image at its (width, height) by its fit mode (`inputs.placements.fit_image`): tasks promoted to a
        larger bucket (padding = "size") resized down, placements fitted to their pixels, with LANCZOS on the host,
        which leaves no one-size tensor to score."""
        if all(im.size == (w, h) for im, (w, h, _) in zip(self.images, targets)):
            return self
        return Frames([fit_image(im, w, h, mode) for im, (w, h, mode) in zip(self.images, targets)])

    def __add__(self, other: Frames) -> Frames:
        """The images of both, in order (the halves of a batch split on a CUDA out-of-memory error)."""
        import torch

        joined = None
        if self.pixels is not None and other.pixels is not None and self.pixels.shape[1:] == other.pixels.shape[1:]:
            joined = torch.cat([self.pixels, other.pixels])
        return Frames(self.images + other.images, joined)
