"""An invisible, keyed watermark in the pixels (`provenance.watermark`): it survives what metadata does not
(stripping, JPEG/WebP re-encoding, resizing, cropping, screenshots). docs/watermark.md has the design and
the measured robustness.

Method: one-level Haar DWT of the luma; a keyed spread-spectrum pattern is added to the LL band (the half-resolution
approximation, which a 0.5x resize or JPEG keeps), tiled with a period of TILE LL pixels (2 x TILE image pixels).
Each cell of the tile carries one chip (a keyed +-1): SYNC_CELLS cells carry the chip alone (a known sync pattern),
the others carry one coded bit each. The detector folds the image's LL residual (LL minus its 3x3 mean, which
removes most image content) into one tile, so every tile the image still holds adds up whatever was cropped, finds
the crop's circular shift by FFT cross-correlation with the sync pattern, then reads the bits.

Payload: a 48-bit key, HMAC(secret, producer + the ProduceID stem) (the stem is the SKU hash and the variant: the
pixel-hash part of ProduceID cannot be in the pixels it hashes), plus a CRC-16 = 64 message bits, each repeated
REPEAT times over keyed, interleaved cells (a repetition code decoded with soft combining: the sum of all its
chips' correlations). Found = the sync peak stands out (z >= Z_MIN) and the CRC checks: a clean image passes both by
chance with probability well under 1e-6.

Keying: the cell order and the chips come from HMAC-SHA256 of the secret (hashlib only, no numpy RNG, whose
streams may change between versions): without the secret one can neither read the bits nor embed a valid mark.
Deterministic: elementwise float64 numpy and integer rounding only (no BLAS, no threads), so the same image gives
the same bytes whatever the batch size, worker or executor.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from factory.errors import ConfigError

TILE = 32  # LL pixels per tile side: 64 image pixels, so the demo's 64-px images hold one whole tile
CELLS = TILE * TILE
SYNC_CELLS = 256
KEY_BITS = 48
MESSAGE_BITS = KEY_BITS + 16  # + CRC-16
REPEAT = (CELLS - SYNC_CELLS) // MESSAGE_BITS // 3  # 4 copies of each message bit, 3 cells per copy
CODED_BITS = MESSAGE_BITS * REPEAT
Z_MIN = 5.0  # sync peak threshold in standard deviations of the correlation over all TILE x TILE shifts
BOOST_TARGET, BOOST_MAX = 1.5, 4.0  # informed embedding (see _informed_boost)
ASPECT_TOLERANCE = 0.03  # a rescaled copy is tried at an original size whose aspect ratio is this close
_LUMA = (0.299, 0.587, 0.114)  # BT.601, as JPEG's YCbCr


@dataclass(frozen=True)
class Layout:
    """The keyed tile: one chip per cell; sync cells carry it alone, the others one coded bit each."""

    chips: np.ndarray  # (TILE, TILE) float64 of +-1
    sync: np.ndarray  # (TILE, TILE): the chip on sync cells, 0 elsewhere
    coded: np.ndarray  # (CELLS,) int: the coded bit of each data cell, -1 for sync cells
    fingerprint: str  # names the secret without revealing it (cache keys, reports)


def _prf(secret: bytes, label: str, n: int) -> bytes:
    """n keyed pseudo-random bytes: HMAC-SHA256 in counter mode."""
    out = b"".join(
        hmac.new(secret, f"adfactory-watermark-v1|{label}|{i}".encode(), hashlib.sha256).digest()
        for i in range(-(-n // 32))
    )
    return out[:n]


@functools.lru_cache(maxsize=8)
def layout(secret: bytes) -> Layout:
    """The tile for a secret (cached: a worker builds it once)."""
    order = np.argsort(np.frombuffer(_prf(secret, "order", 8 * CELLS), dtype=">u8"), kind="stable")
    chip_bits = np.unpackbits(np.frombuffer(_prf(secret, "chips", CELLS // 8), dtype=np.uint8))
    chips = (chip_bits.astype(np.float64) * 2 - 1).reshape(TILE, TILE)
    coded = np.full(CELLS, -1, dtype=np.int64)
    coded[order[SYNC_CELLS:]] = np.arange(CELLS - SYNC_CELLS) // 3  # 3 scattered cells per coded bit
    sync = np.where(coded.reshape(TILE, TILE) < 0, chips, 0.0)
    return Layout(chips, sync, coded, _prf(secret, "fingerprint", 4).hex())


def secret_from_env(var: str) -> bytes:
    """The secret named by `provenance.watermark_secret_env`; ConfigError (exit 2) naming the setting if unset."""
    value = os.environ.get(var, "") if var else ""
    if not value:
        raise ConfigError(
            f"the watermark secret is missing: set the environment variable {var or '(none)'} named by "
            f"provenance.watermark_secret_env (at least 16 characters)"
        )
    if len(value) < 16:
        raise ConfigError(f"provenance.watermark_secret_env: ${var} must hold at least 16 characters")
    return value.encode()


def payload_key(secret: bytes, producer: str, stem: str) -> bytes:
    """The 48-bit key of an image: HMAC(secret, producer, ProduceID stem); 6 bytes."""
    return hmac.new(secret, f"key|{producer}\0{stem}".encode(), hashlib.sha256).digest()[: KEY_BITS // 8]


def message_bits(key: bytes) -> np.ndarray:
    """The 64 message bits: the key, then its CRC-16 (CCITT)."""
    crc = binascii.crc_hqx(key, 0xFFFF).to_bytes(2, "big")
    return np.unpackbits(np.frombuffer(key + crc, dtype=np.uint8))


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * _LUMA[0] + rgb[..., 1] * _LUMA[1] + rgb[..., 2] * _LUMA[2]


def _haar_ll(y: np.ndarray) -> np.ndarray:
    """The LL band of an orthonormal one-level Haar DWT (even-trimmed)."""
    y = y[: y.shape[0] // 2 * 2, : y.shape[1] // 2 * 2]
    return (y[0::2, 0::2] + y[1::2, 0::2] + y[0::2, 1::2] + y[1::2, 1::2]) / 2


def _box(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, edges replicated (cumulative sums: exact and thread-free)."""
    p = np.pad(a, r + 1, mode="edge")
    c = p.cumsum(0).cumsum(1)
    k = 2 * r + 1
    s = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return s[: a.shape[0], : a.shape[1]] / (k * k)


def _tiled(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    reps = (-(-shape[0] // TILE), -(-shape[1] // TILE))
    return np.tile(values.reshape(TILE, TILE), reps)[: shape[0], : shape[1]]


def embed(image: Image.Image, key: bytes, secret: bytes, strength: float) -> Image.Image:
    """`image` with the mark of `key`: luma changes of about `strength` grey levels (more in textured areas, where
    they hide, less in flat ones), the same on R, G and B so colours keep their hue."""
    lay = layout(secret)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    ll = _haar_ll(_luma(rgb))
    if min(ll.shape) < TILE // 2:
        return image.convert("RGB")  # under 32 px a side: too small to carry a tile (documented)
    signs = message_bits(key).astype(np.float64) * 2 - 1
    bit_sign = np.where(lay.coded < 0, 1.0, signs[np.maximum(lay.coded, 0) % MESSAGE_BITS])
    texture = np.sqrt(np.maximum(_box(ll * ll, 2) - _box(ll, 2) ** 2, 0.0)) / 2  # local std, in grey levels
    gain = strength * np.clip(0.6 + texture / 12.0, 0.6, 1.6)
    cells = bit_sign * lay.chips.ravel()
    boost = _informed_boost(ll, gain * _tiled(cells, ll.shape), bit_sign, lay)
    delta_ll = gain * _tiled(cells * boost, ll.shape)
    # an LL-only change of 2d moves each pixel of its 2x2 block by d (inverse orthonormal Haar)
    delta = np.kron(delta_ll, np.ones((2, 2)))
    out = rgb.copy()
    out[: delta.shape[0], : delta.shape[1]] += delta[..., None]
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def _informed_boost(ll: np.ndarray, mark: np.ndarray, bit_sign: np.ndarray, lay: Layout) -> np.ndarray:
    """Per cell, the factor (1..BOOST_MAX) that lifts each coded bit the image itself works against: the detector's
    own statistic is computed on the host and on the mark, and a bit whose host term opposes it gets the extra
    amplitude to end at BOOST_TARGET times its interference-free value (informed embedding: small images have too
    few cells per bit to average the host out)."""
    r = ll - _box(ll, 1)
    mad = float(np.median(np.abs(r))) * 1.4826 + 1e-6
    host = _coded_soft(_fold_sum(np.clip(r, -3 * mad, 3 * mad)), lay)
    m = 2 * mark  # the LL change of a pixel change d is 2d
    ownw = _coded_soft(_fold_sum(m - _box(m, 1)), lay)
    sign = bit_sign[lay.coded >= 0][np.argsort(lay.coded[lay.coded >= 0], kind="stable")][::3]
    own = np.abs(ownw) + 1e-9
    k = np.clip((BOOST_TARGET * own - sign * host) / own, 1.0, BOOST_MAX)
    return np.where(lay.coded < 0, 1.0, k[np.maximum(lay.coded, 0)])


def _fold_sum(r: np.ndarray) -> np.ndarray:
    ph, pw = -(-r.shape[0] // TILE) * TILE, -(-r.shape[1] // TILE) * TILE
    full = np.zeros((ph, pw))
    full[: r.shape[0], : r.shape[1]] = r
    return full.reshape(ph // TILE, TILE, pw // TILE, TILE).sum((0, 2))


def _coded_soft(acc: np.ndarray, lay: Layout) -> np.ndarray:
    """Each coded bit's correlation: the sum of chip x folded residual over its cells (tile aligned)."""
    data = lay.coded >= 0
    return np.bincount(lay.coded[data], weights=(acc.ravel() * lay.chips.ravel())[data], minlength=CODED_BITS)


@dataclass
class Detection:
    """What the detector read from one image."""

    found: bool
    key: bytes | None  # the decoded 48-bit key when the CRC checks
    z: float  # sync peak, in standard deviations
    bit_error_rate: float  # coded bits disagreeing with the decoded (or expected) message, before combining
    message_errors: int  # message bits wrong vs `expected` (-1 when no expected key was given)
    scale: str  # "1" or "WxH" when the image was rescaled to a candidate size first

    @property
    def payload(self) -> str:
        return self.key.hex() if self.key else ""


def _fold(ll: np.ndarray) -> np.ndarray:
    """The whitened LL residual summed into one tile, averaged per cell (partial tiles count for what they hold)."""
    r = ll - _box(ll, 1)
    mad = float(np.median(np.abs(r))) * 1.4826 + 1e-6
    r = np.clip(r, -3 * mad, 3 * mad) / mad  # edges would outweigh the mark: clip to 3 robust sigmas
    return _fold_sum(r) / np.maximum(_fold_sum(np.ones_like(r)), 1.0)


def _read(ll: np.ndarray, lay: Layout, expected: bytes | None, scale: str) -> Detection:
    acc = _fold(ll)
    corr = np.fft.ifft2(np.fft.fft2(acc) * np.conj(np.fft.fft2(lay.sync))).real  # corr[s] = sum acc[x+s] sync[x]
    peak = np.unravel_index(int(np.argmax(corr)), corr.shape)
    z = float((corr[peak] - corr.mean()) / (corr.std() + 1e-12))
    coded_soft = _coded_soft(np.roll(acc, (-int(peak[0]), -int(peak[1])), axis=(0, 1)), lay)
    msg_soft = coded_soft.reshape(REPEAT, MESSAGE_BITS).sum(0)  # coded bit j copies message bit j % 64
    bits = (msg_soft > 0).astype(np.uint8)
    raw = np.packbits(bits).tobytes()
    key, crc = raw[: KEY_BITS // 8], raw[KEY_BITS // 8 :]
    crc_ok = binascii.crc_hqx(key, 0xFFFF).to_bytes(2, "big") == crc
    reference = message_bits(expected) if expected is not None else bits
    ber = float(np.mean((coded_soft > 0).astype(np.uint8) != np.tile(reference, REPEAT)))
    errors = int(np.sum(bits != reference)) if expected is not None else -1
    found = crc_ok and z >= Z_MIN
    return Detection(found, key if crc_ok else None, z, ber, errors, scale)


def _candidates(image: Image.Image, sizes: tuple[tuple[int, int], ...]) -> list[tuple[str, Image.Image]]:
    """The image as it is, then rescaled to each candidate original size of about the same aspect ratio."""
    out = [("1", image)]
    w, h = image.size
    for cw, ch in sizes:
        if (cw, ch) != (w, h) and abs(math.log((cw / ch) / (w / h))) < ASPECT_TOLERANCE:
            out.append((f"{cw}x{ch}", image.resize((cw, ch), Image.Resampling.BICUBIC)))
    return out


def detect(
    image: Image.Image, secret: bytes, expected: bytes | None = None, sizes: tuple[tuple[int, int], ...] = ()
) -> Detection:
    """Look for the mark: the image as it is and with a one-pixel shift each way (a crop may have moved the Haar
    grid), then rescaled to `sizes` (the night's bucket sizes: a screenshot or a resize changes the scale). The
    first found wins; else the strongest attempt is reported (found=False)."""
    lay = layout(secret)
    best: Detection | None = None
    for scale, candidate in _candidates(image.convert("RGB"), sizes):
        y = _luma(np.asarray(candidate, dtype=np.float64))
        for dy, dx in ((0, 0), (1, 0), (0, 1), (1, 1)):
            ll = _haar_ll(y[dy:, dx:])
            if min(ll.shape) < TILE // 2:
                continue
            d = _read(ll, lay, expected, scale)
            if d.found:
                return d
            if best is None or d.z > best.z:
                best = d
    return best or Detection(False, None, 0.0, 0.5, -1, "1")
