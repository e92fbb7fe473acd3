"""Cost per image of the provenance marks and of the night-wide similarity search (`adfactory dev provenance-bench`).

Provenance: PNG encoding of a noise image (the tiny model's look; worst case for zlib) without marks, with the XMP
label + parameters, plus the visible label, plus C2PA signing (a throwaway chain from tools/builders/signing_chain.py).
Similarity: `finalize.flag_similar` on random unit vectors of CLIP ViT-B-32's width (512) in one category, numpy
and faiss paths, with one reference set.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image

from factory.config import ProvenanceConfig, QualityConfig
from factory.io import provenance
from factory.io.png import PngText, png_bytes
from factory.io.records import ImageRecord
from factory.job.finalize import flag_similar
from factory.quality import duplicates

PLAIN = ProvenanceConfig()


def _ms_per_call(fn: Any, n: int) -> float:
    fn()  # warm (font load, signer set-up)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000


def provenance_costs(size: int = 256, n: int = 50) -> dict[str, float]:
    """Milliseconds per image at `size`x`size`, each part timed on its own (differences of whole encodes drown in
    the noise of a shared machine): the PNG encode, the marks (pixel hash, XMP, parameters), the visible label, the
    C2PA signature; plus the bytes a signature adds."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    task = SimpleNamespace(
        sku_id="SKU-1", variant=0, prompt="product photo of red sneakers, HD", negative_prompt="blurry", steps=4,
        seed=1, width=size, height=size, image_path="images/shoes/SKU-1-v0.png", placement="",
    )  # fmt: skip
    from factory.tools.builders.signing_chain import make_signing_chain

    def marks() -> list[PngText]:
        digest = provenance.pixel_sha256(image)
        pid = provenance.produce_id(task.sku_id, task.variant, digest)
        return [
            PngText(provenance.XMP_KEY, provenance.xmp_packet(provenance.aigc_label(PLAIN, pid, digest)), True),
            PngText(provenance.PARAMETERS_KEY, provenance.a1111_parameters(task, 1.0, "0123456789ab", "tiny-sd")),
        ]

    with tempfile.TemporaryDirectory() as tmp:
        chain = make_signing_chain(Path(tmp))
        signer = provenance.C2paSigner(ProvenanceConfig(c2pa_cert=str(chain.chain), c2pa_key=str(chain.key)))
        unsigned = png_bytes(image, marks())
        out = {
            "png_encode_ms": _ms_per_call(lambda: png_bytes(image), n),
            "marks_ms": _ms_per_call(marks, n),
            "visible_label_ms": _ms_per_call(
                lambda: provenance.draw_visible_label(image, "AI生成", "bottom-right", 0.05), n
            ),
            "c2pa_sign_ms": _ms_per_call(lambda: signer.sign(unsigned, "SKU-1-v0.png"), n),
            "c2pa_bytes_added": len(signer.sign(unsigned, "SKU-1-v0.png")) - len(unsigned),
            "marks_bytes_added": len(unsigned) - len(png_bytes(image)),
        }
    return {k: round(v, 3) for k, v in out.items()}


def similarity_costs(sizes: tuple[int, ...] = (1000, 4096, 20000), dim: int = 512, refs: int = 100) -> list[dict]:
    """flag_similar wall time per night size and method, per image in microseconds."""
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        emb = rng.standard_normal((n, dim)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        records = [
            ImageRecord(sku_id=f"S{i:06d}", category="shoes", clip_embedding=e.tolist()) for i, e in enumerate(emb)
        ]
        ref = rng.standard_normal((refs, dim)).astype(np.float32)
        ref = duplicates.References(
            [f"r{i}.png" for i in range(refs)], ref / np.linalg.norm(ref, axis=1, keepdims=True)
        )
        for method in duplicates.SEARCH_METHODS:
            t0 = time.perf_counter()
            flag_similar(records, {"shoes": QualityConfig()}, ref, method)
            elapsed = time.perf_counter() - t0
            rows.append(
                {
                    "images": n,
                    "method": method,
                    "total_s": round(elapsed, 3),
                    "us_per_image": round(elapsed / n * 1e6, 1),
                }
            )
    return rows
