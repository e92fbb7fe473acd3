"""Measured robustness of the watermark (`adfactory dev watermark-bench`; docs/watermark.md).

Per transform (the ones an ad platform, a re-post or a screenshot applies): the detection rate (found with the
right payload) and the mean bit error rate of the coded bits, on two image sets:
  photo-like  procedural 512^2 pictures: a smooth two-colour gradient, blurred solid shapes, fine texture and sensor
              noise. The tiny model draws noise, which hides a watermark far better than a photo's flat areas do,
              so photo-like images are the hard, honest case;
  demo-like   the embedded tiny model's own images at the demo's bucket sizes (64-192 px).
Plus false positives on clean images (photo-like, never marked) with a Clopper-Pearson 95 % interval, the PSNR of
the marked image, the change of its CLIP score (the tiny CLIP: plumbing only, its scores mean nothing) and the time
per image of embedding and detection.
"""

from __future__ import annotations

import io
import math
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from factory.config import FactoryConfig
from factory.io import watermark

BENCH_SECRET = b"adfactory-watermark-bench-key"  # a fixed bench key: the night's own secret is never needed here
Transform = Callable[[Image.Image, random.Random], Image.Image]


def photo_like(seed: int, size: int = 512) -> Image.Image:
    """A deterministic photo-like RGB picture: gradient, soft shapes, texture and a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = Image.fromarray(np.clip(c0 + (c1 - c0) * t[..., None], 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = rng.uniform(-0.2, 0.9, 2) * size
        w, h = rng.uniform(0.1, 0.6, 2) * size
        fill = tuple(int(v) for v in rng.uniform(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h], fill=fill)
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 3)))), dtype=np.float64)
    coarse = rng.normal(0, 1, (max(size // 4, 1), max(size // 4, 1))).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
    arr = arr + texture[..., None] * rng.uniform(1, 6) + rng.normal(0, 1.5, arr.shape)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def _encoded(image: Image.Image, fmt: str, **kw: Any) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _resize_half(im: Image.Image, _: random.Random) -> Image.Image:
    w, h = im.size
    return im.resize((w // 2, h // 2), Image.Resampling.LANCZOS).resize((w, h), Image.Resampling.BICUBIC)


def _crop_10(im: Image.Image, rng: random.Random) -> Image.Image:
    """10 % of the width and of the height cut off, split at random between the two edges (odd offsets too)."""
    w, h = im.size
    cw, ch = round(0.1 * w), round(0.1 * h)
    left, top = rng.randint(0, cw), rng.randint(0, ch)
    return im.crop((left, top, left + w - cw, top + h - ch))


def _screenshot(im: Image.Image, _: random.Random) -> Image.Image:
    """Shown at 125 % on a HiDPI screen (bilinear, no antialiasing) and captured as PNG: a non-integer rescale."""
    w, h = im.size
    return _encoded(im.resize((round(w * 1.25), round(h * 1.25)), Image.Resampling.BILINEAR), "PNG")


TRANSFORMS: dict[str, Transform] = {
    "none (PNG, metadata stripped)": lambda im, _: im,
    "JPEG q90": lambda im, _: _encoded(im, "JPEG", quality=90),
    "JPEG q75": lambda im, _: _encoded(im, "JPEG", quality=75),
    "JPEG q50": lambda im, _: _encoded(im, "JPEG", quality=50),
    "resize 0.5x and back": _resize_half,
    "crop 10 %": _crop_10,
    "PNG -> WebP (q80)": lambda im, _: _encoded(im, "WEBP", quality=80),
    "screenshot (x1.25 bilinear)": _screenshot,
}


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def robustness(
    images: list[Image.Image], strength: float, transforms: dict[str, Transform] | None = None
) -> dict[str, Any]:
    """Mark each image (its own payload), apply each transform, detect; the original sizes are the candidate
    sizes a rescaled copy is tried at (as the night's buckets are). Rates, mean BER, PSNR and timings."""
    transforms = TRANSFORMS if transforms is None else transforms
    sizes = tuple(dict.fromkeys(im.size for im in images))
    rows = {name: {"found": 0, "ber": 0.0} for name in transforms}
    psnrs, embed_s, detect_s = [], 0.0, 0.0
    for i, image in enumerate(images):
        key = watermark.payload_key(BENCH_SECRET, "bench", f"image-{i}")
        t0 = time.perf_counter()
        marked = watermark.embed(image, key, BENCH_SECRET, strength)
        embed_s += time.perf_counter() - t0
        psnrs.append(psnr(image, marked))
        for name, transform in transforms.items():
            received = transform(marked, random.Random(i))
            t0 = time.perf_counter()
            d = watermark.detect(received, BENCH_SECRET, key, sizes)
            detect_s += time.perf_counter() - t0
            rows[name]["found"] += int(d.found and d.key == key)
            rows[name]["ber"] += d.bit_error_rate
    n = len(images)
    return {
        "images": n,
        "sizes": [f"{w}x{h}" for w, h in sizes],
        "transforms": {k: {"detection_rate": v["found"] / n, "mean_ber": v["ber"] / n} for k, v in rows.items()},
        "psnr_db": float(np.mean(psnrs)),
        "embed_ms": embed_s / n * 1000,
        "detect_ms": detect_s / (n * len(transforms)) * 1000,
    }


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval of a binomial rate k/n, by bisection on the binomial CDF."""
    alpha = (1 - confidence) / 2

    def cdf(p: float, upto: int) -> float:  # P(X <= upto) for X ~ Binomial(n, p)
        if p <= 0:
            return 1.0
        if p >= 1:
            return 0.0 if upto < n else 1.0
        logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(upto + 1)]
        return sum(math.exp(c + i * math.log(p) + (n - i) * math.log1p(-p)) for i, c in enumerate(logs))

    def solve(target: float, upto: int) -> float:  # the p where cdf(p, upto) = target (cdf falls as p grows)
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if cdf(mid, upto) > target else (lo, mid)
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else solve(1 - alpha, k - 1)
    upper = 1.0 if k == n else solve(alpha, k)
    return lower, upper


def false_positives(n: int, size: int, seed0: int = 1_000_000) -> dict[str, Any]:
    """Detection on `n` never-marked photo-like images (every third one JPEG q75 first, as uploads are)."""
    found = 0
    max_z = 0.0
    for i in range(n):
        image = photo_like(seed0 + i, size)
        if i % 3 == 2:
            image = _encoded(image, "JPEG", quality=75)
        d = watermark.detect(image, BENCH_SECRET, sizes=((size, size),))
        found += int(d.found)
        max_z = max(max_z, d.z)
    lo, hi = clopper_pearson(found, n)
    return {"images": n, "found": found, "rate": found / n, "ci95": [lo, hi], "max_sync_z": max_z}


def clip_change(cfg: FactoryConfig, images: list[Image.Image], strength: float) -> dict[str, float]:
    """Mean |change| of the CLIP score (100 x cosine to a prompt) and mean image-image cosine, marked vs not.
    Images are encoded one at a time (batch-invariant features)."""
    from factory.quality.clip_model import load_clip
    from factory.quality.clip_scores import encode_images, encode_texts

    clip = load_clip(cfg.model, "cpu")
    if clip is None:
        return {}
    text = encode_texts(clip, ["a product photo"])[0]
    deltas, cosines = [], []
    for i, image in enumerate(images):
        marked = watermark.embed(image, watermark.payload_key(BENCH_SECRET, "bench", f"c{i}"), BENCH_SECRET, strength)
        a, b = encode_images(clip, [image])[0], encode_images(clip, [marked])[0]
        deltas.append(abs(float(100 * (b @ text) - 100 * (a @ text))))
        cosines.append(float(a @ b))
    return {"clip_score_abs_change": float(np.mean(deltas)), "image_cosine": float(np.mean(cosines))}


def demo_like(cfg: FactoryConfig, n: int) -> list[Image.Image]:
    """`n` images of the configured (tiny) model, round-robin over the config's bucket sizes, 2 LCM steps."""
    import torch

    from factory.generation.models import load_pipeline

    pipe = load_pipeline(cfg.model, "cpu", torch.float32)
    out = []
    for i in range(n):
        b = cfg.planner.buckets[i % len(cfg.planner.buckets)]
        gen = torch.Generator("cpu").manual_seed(i)
        result = pipe(
            prompt=[f"product photo {i}"], num_inference_steps=2, guidance_scale=1.0, width=b.width,
            height=b.height, generator=gen,
        )  # fmt: skip
        out.append(result.images[0].convert("RGB"))
    return out


def watermark_bench(
    cfg: FactoryConfig, photos: int, demo: int, clean: int, size: int = 512, strength: float | None = None
) -> dict[str, Any]:
    """The whole measurement (see the module docstring); `strength` defaults to the config's."""
    import os
    import platform

    strength = cfg.provenance.watermark_strength if strength is None else strength
    photo_set = [photo_like(i, size) for i in range(photos)]
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.system()}",
        "strength": strength,
        "photo_like": robustness(photo_set, strength),
    }
    if demo:
        result["demo_like"] = robustness(demo_like(cfg, demo), strength)
    result["false_positives"] = false_positives(clean, size)
    result["clip"] = clip_change(cfg, photo_set[: min(photos, 16)], strength)
    return result


def format_report(r: dict[str, Any]) -> str:
    """The robustness table as docs/watermark.md shows it (markdown)."""
    sets = [k for k in ("photo_like", "demo_like") if k in r]
    head = " | ".join(f"{k.replace('_', '-')} ({r[k]['images']} images, {', '.join(r[k]['sizes'][:4])})" for k in sets)
    lines = [f"machine: {r['machine']}; strength {r['strength']:g}", "", f"| transform | {head} |"]
    lines.append("|---|" + "---|" * len(sets))
    for name in r[sets[0]]["transforms"]:
        cells = []
        for k in sets:
            t = r[k]["transforms"][name]
            cells.append(f"{100 * t['detection_rate']:.1f} % found, BER {t['mean_ber']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| PSNR | " + " | ".join(f"{r[k]['psnr_db']:.1f} dB" for k in sets) + " |")
    lines.append("| embed / detect time per image | " + " | ".join(
        f"{r[k]['embed_ms']:.1f} ms / {r[k]['detect_ms']:.1f} ms" for k in sets) + " |")  # fmt: skip
    fp = r["false_positives"]
    lines += [
        "",
        f"false positives: {fp['found']} of {fp['images']} clean images (rate {fp['rate']:.4f}, Clopper-Pearson 95 % "
        f"interval [{fp['ci95'][0]:.4f}, {fp['ci95'][1]:.4f}]; highest sync z {fp['max_sync_z']:.2f}, "
        f"threshold {watermark.Z_MIN})",
    ]
    if r.get("clip"):
        c = r["clip"]
        lines.append(
            f"CLIP (tiny, plumbing only): mean |score change| {c['clip_score_abs_change']:.3f}, "
            f"image cosine marked vs original {c['image_cosine']:.4f}"
        )
    return "\n".join(lines)
