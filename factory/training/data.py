"""The training folder: images, each with an optional same-name `.txt` caption, checked before any model loads.

Every image is opened and checked up front (readable, RGB, at least `resolution` on both sides), so a bad file
stops the command in seconds with one sentence naming it, not after an hour of training. Images larger than the
resolution are resized (shorter side → resolution, bicubic) and centre-cropped, as diffusers'
`train_text_to_image_lora.py` does with `--center_crop`; no random flips or crops, so a seed fixes the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.errors import TrainingDataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Example:
    path: Path
    caption: str


def read_examples(images: Path, default_caption: str, resolution: int) -> list[Example]:
    """The folder's images (name order) with their captions; raises TrainingDataError naming the bad file."""
    if not images.is_dir():
        raise TrainingDataError(f"{images}: --images must be a directory of images")
    files = sorted(p for p in images.iterdir() if p.is_file() and not p.name.startswith("."))
    paths = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise TrainingDataError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)}) in the directory")
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES + (".txt",)]
    if others:
        log.warning("%s: ignoring %d non-image file(s), e.g. %s", images, len(others), others[0])
    examples = []
    for path in paths:
        _check_image(path, resolution)
        examples.append(Example(path, _caption(path, default_caption)))
    return examples


def _check_image(path: Path, resolution: int) -> None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()  # reads the whole file: a truncated PNG fails here, not mid-training
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
            im.load()
    except Exception as exc:  # PIL raises many types for a bad file; the user needs the file and the cause
        raise TrainingDataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    if mode != "RGB":
        raise TrainingDataError(f"{path}: image mode is {mode}, not RGB (convert it to 8-bit RGB, no alpha)")
    if min(w, h) < resolution:
        raise TrainingDataError(f"{path}: {w}x{h} is smaller than --resolution {resolution} on a side")


def _caption(image: Path, default_caption: str) -> str:
    txt = image.with_suffix(".txt")
    if not txt.is_file():
        if not default_caption.strip():
            raise TrainingDataError(f"{image}: no caption file {txt.name} and --caption is empty")
        return default_caption
    try:
        text = txt.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TrainingDataError(f"{txt}: caption is not UTF-8 text") from None
    text = " ".join(text.split())  # one line: newlines and tabs mean nothing to the tokenizer
    if not text:
        raise TrainingDataError(f"{txt}: caption file is empty (delete it to use --caption)")
    return text


def load_pixels(example: Example, resolution: int) -> Any:
    """One image as a (3, R, R) float tensor in [-1, 1]: shorter side resized to R, centre crop."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(example.path) as im:
        w, h = im.size
        scale = resolution / min(w, h)
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        im = im.resize(size, Image.Resampling.BICUBIC) if size != (w, h) else im.copy()
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    im = im.crop((left, top, left + resolution, top + resolution))
    arr = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1)
    return arr / 127.5 - 1.0
