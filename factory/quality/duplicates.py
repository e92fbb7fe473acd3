"""Night-wide similarity checks on the CLIP image embeddings the gate already computed (no extra forward pass):

near_duplicate   an image whose cosine to an image of an *earlier* SKU of the same category is >= the category's
                 `quality.near_duplicate`; "earlier" is the (sku_id, variant, placement) order, never batch
                 completion order, so the result does not depend on worker count, batch size or executor. The
                 later SKU goes to review, naming the earlier one (the one with the highest cosine).
reference_match  an image whose cosine to an image of `quality.reference_dir` is >= `quality.reference_threshold`.

Both run on the driver at finalize, where every image of the night is known: fresh ones (embedding in the worker's
result), resumed ones (embedding in the part file) and cross-day cache hits (embedding from the source date's
`<date>/embeddings.parquet`). Search is exact and bounded: blocks of _ROWS query rows against _COLS candidate rows
at a time, keeping each row's best partner so far (memory does not grow with the night; the embeddings may be an
EmbeddingSpill on local disk); the block product is numpy's below FAISS_MIN_IMAGES images per category, a faiss
`IndexFlatIP` over each candidate block at or above it. Reference embeddings are cached by file hash.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from factory.errors import ConfigError

log = logging.getLogger(__name__)

SEARCH_METHODS = ("numpy", "faiss")  # both exact; chosen by size (similarity_method) unless a caller names one
FAISS_MIN_IMAGES = 4096  # per category; below it numpy matrix products in blocks are as fast (docs/performance.md)
_ROWS, _COLS = 2048, 8192  # query x candidate rows per block: a block's similarities are 64 MiB of float32
REFERENCE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class Match:
    other: str  # the earlier sku_id, or the reference file (relative to reference_dir)
    score: float  # cosine


@dataclass
class References:
    names: list[str]  # relative to reference_dir
    embeddings: np.ndarray  # (m, d) float32, L2-normalised


class Embeddings(Protocol):
    """(n, d) float32 rows that can be sliced: a numpy array or an EmbeddingSpill."""

    def __len__(self) -> int: ...

    def __getitem__(self, rows: slice) -> np.ndarray: ...


def similarity_method(n: int) -> str:
    return "faiss" if n >= FAISS_MIN_IMAGES else "numpy"


def near_duplicates(
    skus: Sequence[str], emb: Embeddings, threshold: float, method: str | None = None
) -> dict[int, Match]:
    """Rows (already in (sku_id, variant, placement) order) -> the best match among earlier rows of another SKU,
    where the cosine is >= threshold. Ties go to the earliest row."""
    codes = np.unique(np.asarray(skus, dtype=object), return_inverse=True)[1] if len(skus) else np.zeros(0, np.int64)
    partner, score = best_earlier(codes, emb, threshold, method or similarity_method(len(emb)))
    return {int(i): Match(skus[partner[i]], float(score[i])) for i in np.flatnonzero(partner >= 0)}


def best_earlier(codes: np.ndarray, emb: Embeddings, threshold: float, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Per row i, the earlier row j (j < i, codes[j] != codes[i]: another SKU) of highest cosine >= threshold, the
    earliest on a tie: (partner, score) arrays, partner -1 where none. Exact, in blocks of _ROWS x _COLS
    similarities: memory does not grow with the rows (`emb` may be an EmbeddingSpill on disk)."""
    n = len(emb)
    partner, best = np.full(n, -1, np.int64), np.full(n, -np.inf, np.float32)
    if n < 2 or threshold > 1:
        return partner, best
    for a in range(0, n, _ROWS):
        b = min(a + _ROWS, n)
        query = np.ascontiguousarray(emb[a:b], dtype=np.float32)
        for c in range(0, b, _COLS):  # candidates up to the block's end: half the all-pairs work
            e = min(c + _COLS, b)
            cand = query[c - a : e - a] if c >= a else np.ascontiguousarray(emb[c:e], dtype=np.float32)
            j, s = _block_best(query, cand, a, c, codes, threshold, method)
            better = s > best[a:b]  # strict: a tie keeps the earlier block's row
            best[a:b][better], partner[a:b][better] = s[better], j[better]
    return partner, best


def _block_best(
    query: np.ndarray, cand: np.ndarray, a: int, c: int, codes: np.ndarray, threshold: float, method: str
) -> tuple[np.ndarray, np.ndarray]:
    """For query rows a.. against candidate rows c..: each row's best allowed candidate (index, score; -1/-inf)."""
    r, k = len(query), len(cand)
    rows, cols = np.arange(a, a + r)[:, None], np.arange(c, c + k)[None, :]
    if method == "faiss":
        return _block_best_faiss(query, cand, a, c, codes, threshold)
    sims = query @ cand.T
    sims[(cols >= rows) | (codes[c : c + k][None, :] == codes[a : a + r][:, None]) | (sims < threshold)] = -np.inf
    arg = sims.argmax(axis=1)  # the first maximum: the earliest candidate on a tie
    score = sims[np.arange(r), arg]
    return np.where(np.isfinite(score), c + arg, -1), score


def _block_best_faiss(
    query: np.ndarray, cand: np.ndarray, a: int, c: int, codes: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(cand.shape[1])
    index.add(cand)
    # range_search keeps scores > radius: step just below the threshold so that >= holds
    lims, scores, ids = index.range_search(query, float(np.nextafter(np.float32(threshold), np.float32(-2))))
    row = np.repeat(np.arange(len(query)), np.diff(lims.astype(np.int64)))
    j = c + ids.astype(np.int64)
    ok = (j < a + row) & (codes[j] != codes[a + row]) & (scores >= threshold)
    row, j, scores = row[ok], j[ok], scores[ok]
    order = np.lexsort((j, -scores, row))  # per row: highest score, then earliest candidate
    first = order[np.unique(row[order], return_index=True)[1]]
    partner, best = np.full(len(query), -1, np.int64), np.full(len(query), -np.inf, np.float32)
    partner[row[first]], best[row[first]] = j[first], scores[first]
    return partner, best


def reference_matches(
    emb: Embeddings, refs: References, thresholds: Sequence[float], method: str | None = None
) -> dict[int, Match]:
    """Rows -> the closest reference image when its cosine is >= that row's threshold."""
    which, best = best_reference(emb, refs, method or similarity_method(len(emb)))
    return {i: Match(refs.names[int(which[i])], float(best[i])) for i in range(len(best)) if best[i] >= thresholds[i]}


def best_reference(emb: Embeddings, refs: References, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the closest reference image and its cosine (arrays; empty when there are no references), in
    blocks of _COLS rows."""
    n = len(emb) if len(refs.names) else 0
    which, best = np.zeros(n, np.int64), np.full(n, -np.inf, np.float32)
    index = None
    if n and method == "faiss":
        import faiss

        index = faiss.IndexFlatIP(refs.embeddings.shape[1])
        index.add(np.ascontiguousarray(refs.embeddings, dtype=np.float32))
    for a in range(0, n, _COLS):
        b = min(a + _COLS, n)
        query = np.ascontiguousarray(emb[a:b], dtype=np.float32)
        if index is not None:
            scores, ids = index.search(query, 1)
            which[a:b], best[a:b] = ids[:, 0], scores[:, 0]
            continue
        sims = query @ refs.embeddings.T
        which[a:b] = sims.argmax(axis=1)
        best[a:b] = sims[np.arange(b - a), which[a:b]]
    return which, best


class EmbeddingSpill:
    """(n, d) float32 rows appended to a local file and read back by slices: one category's embeddings for the
    night-wide search without holding them in memory (plain reads, not a memory map: pages do not pile up in
    the driver's resident set)."""

    def __init__(self, path: Path):
        self.path, self.n, self.d = path, 0, 0
        self._out: BinaryIO | None = open(path, "wb")  # noqa: SIM115 (closed by close())

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if not len(rows):
            return
        self.d = rows.shape[1]
        assert self._out is not None
        self._out.write(rows.tobytes())
        self.n += len(rows)

    def close(self) -> EmbeddingSpill:
        if self._out is not None:
            self._out.close()
            self._out = None
        return self

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.n)
        count = max(stop - start, 0)
        data = np.fromfile(self.path, np.float32, count * self.d, offset=start * self.d * 4)
        return data.reshape(count, self.d)


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
