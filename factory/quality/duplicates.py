"""Night-wide similarity checks on the CLIP image embeddings the gate already computed (no extra forward pass):

near_duplicate   an image whose cosine to an image of an *earlier* SKU of the same category is >= the category's
                 `quality.near_duplicate`; "earlier" is the (sku_id, variant, placement) order, never batch
                 completion order, so the result does not depend on worker count, batch size or executor. The
                 later SKU goes to review, naming the earlier one (the one with the highest cosine).
reference_match  an image whose cosine to an image of `quality.reference_dir` is >= `quality.reference_threshold`.

Both run on the driver at finalize, where every image of the night is known: fresh ones (embedding in the worker's
result), resumed ones (embedding in the part file) and cross-day cache hits (embedding from the source date's
`<date>/embeddings.parquet`). Search is exact: numpy blocks for nights up to FAISS_MIN_IMAGES images per
category, a faiss `IndexFlatIP` (exact inner product) at or above it. Reference embeddings are cached by file hash.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from factory.errors import ConfigError

log = logging.getLogger(__name__)

SEARCH_METHODS = ("numpy", "faiss")  # both exact; chosen by size (similarity_method) unless a caller names one
FAISS_MIN_IMAGES = 4096  # per category; below it numpy matrix products in blocks are as fast (docs/performance.md)
_BLOCK = 1024  # rows per numpy block: bounds the similarity matrix to BLOCK x n floats
REFERENCE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class Match:
    other: str  # the earlier sku_id, or the reference file (relative to reference_dir)
    score: float  # cosine


@dataclass
class References:
    names: list[str]  # relative to reference_dir
    embeddings: np.ndarray  # (m, d) float32, L2-normalised


def similarity_method(n: int) -> str:
    return "faiss" if n >= FAISS_MIN_IMAGES else "numpy"


def near_duplicates(
    skus: Sequence[str], emb: np.ndarray, threshold: float, method: str | None = None
) -> dict[int, Match]:
    """Rows (already in (sku_id, variant, placement) order) -> the best match among earlier rows of another SKU,
    where the cosine is >= threshold. Ties go to the earliest row."""
    best: dict[int, tuple[float, int]] = {}
    for i, j, score in _pairs(emb, threshold, method or similarity_method(len(emb))):
        if j >= i or skus[j] == skus[i]:
            continue
        current = best.get(i)
        if current is None or (score, -j) > (current[0], -current[1]):
            best[i] = (score, j)
    return {i: Match(skus[j], score) for i, (score, j) in sorted(best.items())}


def _pairs(emb: np.ndarray, threshold: float, method: str) -> list[tuple[int, int, float]]:
    """All (i, j, cosine) with j < i and cosine >= threshold, exactly."""
    n = len(emb)
    if n < 2 or threshold > 1:
        return []
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    out: list[tuple[int, int, float]] = []
    index = None
    if method == "faiss":
        import faiss

        index = faiss.IndexFlatIP(emb.shape[1])
        # range_search keeps scores > radius: step just below the threshold so that >= holds
        radius = float(np.nextafter(np.float32(threshold), np.float32(-2)))
    for start in range(0, n, _BLOCK):  # each block against the rows up to its end: half the all-pairs work
        stop = min(start + _BLOCK, n)
        if index is not None:
            index.add(emb[start:stop])
            lims, scores, ids = index.range_search(emb[start:stop], radius)
            for r in range(stop - start):
                for s, j in zip(scores[lims[r] : lims[r + 1]].tolist(), ids[lims[r] : lims[r + 1]].tolist()):
                    if j < start + r and s >= threshold:
                        out.append((start + r, j, s))
            continue
        sims = emb[start:stop] @ emb[:stop].T
        rows, cols = np.nonzero(sims >= threshold)
        for r, j in zip(rows.tolist(), cols.tolist()):
            if j < start + r:
                out.append((start + r, j, float(sims[r, j])))
    return out


def reference_matches(
    emb: np.ndarray, refs: References, thresholds: Sequence[float], method: str | None = None
) -> dict[int, Match]:
    """Rows -> the closest reference image when its cosine is >= that row's threshold."""
    if not len(refs.names) or not len(emb):
        return {}
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if (method or similarity_method(len(emb))) == "faiss":
        import faiss

        index = faiss.IndexFlatIP(refs.embeddings.shape[1])
        index.add(np.ascontiguousarray(refs.embeddings, dtype=np.float32))
        scores, ids = index.search(emb, 1)
        best, which = scores[:, 0], ids[:, 0]
    else:
        sims = emb @ refs.embeddings.T
        which = sims.argmax(axis=1)
        best = sims[np.arange(len(emb)), which]
    return {i: Match(refs.names[int(which[i])], float(best[i])) for i in range(len(emb)) if best[i] >= thresholds[i]}


def reference_files(reference_dir: Path) -> list[Path]:
    """Image files under `reference_dir` (recursively, name order); ConfigError if the directory is unusable."""
    if not reference_dir.is_dir():
        raise ConfigError(f"quality.reference_dir {reference_dir}: not a directory")
    files = sorted(p for p in reference_dir.rglob("*") if p.is_file() and p.suffix.lower() in REFERENCE_SUFFIXES)
    return [p for p in files if not any(part.startswith(".") for part in p.relative_to(reference_dir).parts)]


_CACHE_SCHEMA = pa.schema([pa.field("sha256", pa.string(), False), pa.field("embedding", pa.list_(pa.float32()))])


def load_references(
    reference_dir: Path, cache_file: Path, encode: Callable[[list[Path]], np.ndarray]
) -> tuple[References, int]:
    """The reference set's embeddings, by file hash from `cache_file` (one per CLIP model) and `encode` (the CLIP
    image encoder, called only for files not cached yet). Returns the references and how many were encoded."""
    files = reference_files(reference_dir)
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    cached: dict[str, list[float]] = {}
    if cache_file.is_file():
        try:
            cached = {r["sha256"]: r["embedding"] for r in pq.read_table(cache_file).to_pylist()}
        except (pa.ArrowException, OSError) as exc:  # a cache is never fatal: recompute
            log.warning("ignoring unreadable reference cache %s (%s)", cache_file, exc)
    missing = [(f, d) for f, d in zip(files, digests) if d not in cached]
    if missing:
        for (_, digest), vector in zip(missing, encode([f for f, _ in missing])):
            cached[digest] = [float(x) for x in vector]
        rows = [{"sha256": d, "embedding": cached[d]} for d in sorted(set(digests))]
        _write_cache(cache_file, pa.Table.from_pylist(rows, schema=_CACHE_SCHEMA))
    names = [f.relative_to(reference_dir).as_posix() for f in files]
    dim = len(next(iter(cached.values()))) if cached else 0
    matrix = np.array([cached[d] for d in digests], dtype=np.float32).reshape(len(files), dim)
    return References(names, matrix), len(missing)


def clip_encoder(model_cfg: object, preprocess: str = "torch") -> Callable[[list[Path]], np.ndarray]:
    """Encode image files with the configured CLIP model and preprocessing (`quality.preprocess`) on this
    process's CPU, one image per forward (the same batch-invariant features the workers compute). Loads the model
    on first use only."""
    from PIL import Image

    from factory.quality.clip_model import load_clip
    from factory.quality.clip_scores import encode_images

    def encode(files: list[Path]) -> np.ndarray:
        clip = load_clip(model_cfg, "cpu", preprocess)
        out = []
        for f in files:
            try:
                with Image.open(f) as im:
                    image = im.convert("RGB")
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise ConfigError(f"quality.reference_dir: {f} is not a readable image ({exc})") from None
            out.append(encode_images(clip, [image])[0].numpy())
        return np.stack(out) if out else np.zeros((0, 0), np.float32)

    return encode


def _write_cache(cache_file: Path, table: pa.Table) -> None:
    """Atomically (a local Store: temp file + rename), so two nights sharing the cache never read half a file."""
    from factory.io.storage import open_store

    with open_store(str(cache_file.parent)).open_output_stream(cache_file.name) as f:
        pq.write_table(table, f, compression="zstd")
