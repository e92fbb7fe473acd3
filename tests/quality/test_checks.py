"""Quality checks on controlled synthetic images, defect localisation, masks, and the CLIP helpers (tiny open_clip)."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from factory.config import IQA_PAIRS, UNSAFE_CONCEPTS, ModelConfig, QualityConfig
from factory.quality import clip_scores, defects, pixels
from factory.quality import reasons as codes
from factory.quality.clip_model import load_clip
from factory.quality.clip_scores import ClipThresholds, TextFeatureCache
from factory.quality.pixels import PixelThresholds
from factory.quality.reasons import (
    BLANK,
    BLURRY,
    LOW_CLIP_SCORE,
    LOW_QUALITY,
    OVEREXPOSED,
    OVERSATURATED,
    UNDEREXPOSED,
    UNSAFE,
)

SIZE = 128
IQA = [(p[0], p[1]) for p in IQA_PAIRS]  # (positive, negative)


def blocks(size: int = SIZE, block: int = 8, seed: int = 0, fill: tuple[int, int, int] | None = None, frac=0.0):
    """A sharp random-blocks pattern with muted colours; optionally `frac` of the blocks set to `fill`."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(30, 226, size=(size // block, size // block, 3)).astype(np.float64)
    cells = (0.5 * cells + 0.5 * cells.mean(axis=-1, keepdims=True)).astype(np.uint8)  # halfway to gray
    if fill is not None:
        cells[rng.random(cells.shape[:2]) < frac] = fill
    return Image.fromarray(np.kron(cells, np.ones((block, block, 1), dtype=np.uint8)))


def saturated(image: Image.Image) -> Image.Image:
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 1] = 240
    hsv[..., 2] = np.maximum(hsv[..., 2], 100)
    return Image.fromarray(hsv, "HSV").convert("RGB")


def reasons(image: Image.Image) -> list[str]:
    return pixels.pixel_reasons(pixels.pixel_metrics(image), PixelThresholds.of(QualityConfig()))


def test_metrics_keys_and_ranges():
    m = pixels.pixel_metrics(blocks())
    assert set(m) == {"pixel_std", "overexposed_frac", "underexposed_frac", "laplacian_var", "saturation_mean"}
    assert all(isinstance(v, float) for v in m.values())
    assert 0 < m["pixel_std"] < 1 and 0 <= m["saturation_mean"] <= 1 and m["laplacian_var"] > 0
    white = pixels.pixel_metrics(Image.new("RGB", (16, 16), "white"))
    assert white["overexposed_frac"] == 1.0 and white["pixel_std"] == 0.0 and white["laplacian_var"] == 0.0


@pytest.mark.parametrize(
    "name, make, expected",
    [
        ("sharp", lambda: blocks(), []),
        ("uniform", lambda: Image.new("RGB", (SIZE, SIZE), (120, 130, 140)), [BLANK]),
        ("uniform white", lambda: Image.new("RGB", (SIZE, SIZE), "white"), [BLANK]),  # blank is exclusive
        ("blurred", lambda: blocks().filter(ImageFilter.GaussianBlur(3)), [BLURRY]),
        ("slightly blurred", lambda: blocks().filter(ImageFilter.GaussianBlur(1)), [BLURRY]),
        ("clipped white", lambda: blocks(fill=(255, 255, 255), frac=0.95), [OVEREXPOSED]),
        ("crushed black", lambda: blocks(fill=(0, 0, 0), frac=0.95), [UNDEREXPOSED]),
        ("saturated", lambda: saturated(blocks()), [OVERSATURATED]),
    ],
)
def test_pixel_reasons_on_controlled_images(name, make, expected):
    assert reasons(make()) == expected, (name, pixels.pixel_metrics(make()))


def test_thresholds_are_configurable():
    image = blocks().filter(ImageFilter.GaussianBlur(1))
    assert reasons(image) == [BLURRY]
    lenient = dataclasses.replace(PixelThresholds.of(QualityConfig()), blur_laplacian_var=10.0)
    assert pixels.pixel_reasons(pixels.pixel_metrics(image), lenient) == []


def test_reason_helpers():
    assert codes.sort_reasons([UNSAFE, BLURRY, BLANK, BLURRY]) == [BLANK, BLURRY, UNSAFE]
    assert codes.is_repairable([BLURRY, LOW_QUALITY]) and codes.is_repairable([OVEREXPOSED])
    assert not codes.is_repairable([]) and not codes.is_repairable([BLURRY, LOW_CLIP_SCORE])
    assert not codes.is_repairable([UNSAFE]) and not codes.is_repairable([BLANK])
    assert codes.REPAIRABLE < set(codes.REASON_ORDER)
    assert codes.REPAIRABLE.isdisjoint({BLANK, OVERSATURATED, LOW_CLIP_SCORE, UNSAFE})  # global: go to review
    t = ClipThresholds(clip_cos=0.2, iqa_mean=0.4, unsafe_cos=0.3)
    assert clip_scores.clip_reasons(0.1, 0.1, 0.5, t) == [LOW_CLIP_SCORE, LOW_QUALITY, UNSAFE]
    assert clip_scores.clip_reasons(0.3, 0.5, 0.1, t) == [] and clip_scores.clip_reasons(None, None, None, t) == []


def test_tile_map_finds_blurred_quadrant():
    sharp = np.asarray(blocks())
    blurred = np.asarray(blocks().filter(ImageFilter.GaussianBlur(3)))
    arr = sharp.copy()
    arr[64:, :64] = blurred[64:, :64]  # bottom-left quadrant
    image = Image.fromarray(arr)
    badness = defects.tile_quality_map(image, 32)
    assert badness.shape == (4, 4)
    assert badness[:2, :].max() == 0 and badness[:, 2:].max() == 0  # sharp tiles score 0
    x0, y0, x1, y1 = defects.worst_region(image, 32)
    assert 0 <= x0 and x1 <= 64 and 64 <= y0 and y1 <= 128 and (x1 - x0, y1 - y0) == (32, 32)
    # top_k tiles: only tiles that are bad at all join the box (here the 2 bad tiles of the quadrant's bottom row).
    assert defects.worst_region(image, 32, top_k=5) == (0, 96, 64, 128)
    assert defects.worst_region(blocks(), 32, top_k=3) == (0, 0, 32, 32)  # all clean: the first tile


def test_tile_map_exposure_and_flat_background():
    arr = np.asarray(blocks()).copy()
    arr[:32, 96:] = 255  # a clipped tile, top-right
    arr[96:, :32] = 128  # a flat (textureless) tile: not "blurry"
    image = Image.fromarray(arr)
    badness = defects.tile_quality_map(image, 32)
    assert badness[3, 0] == 0 and badness[0, 3] == pytest.approx(1.0)
    assert defects.worst_region(image, 32) == (96, 0, 128, 32)
    assert defects.tile_quality_map(image, 32, exposure_weight=0.0).max() == 0
    # Sizes that are not a multiple of the tile give smaller edge tiles.
    assert defects.tile_quality_map(blocks(size=96).crop((0, 0, 90, 70)), 32).shape == (3, 3)


def test_build_mask():
    mask, changed = defects.build_mask((128, 128), (32, 40, 64, 72), dilate=4, blur=4)
    a = np.asarray(mask)
    assert mask.mode == "L" and mask.size == (128, 128)
    assert (a[40:72, 32:64] == 255).all()  # the box itself is fully repainted
    assert a[0:20, :].max() == 0 and a[:, 90:].max() == 0  # far from the box
    assert changed == (32 - 16, 40 - 16, 64 + 16, 72 + 16)
    nonzero = mask.getbbox()
    assert nonzero[0] >= changed[0] and nonzero[1] >= changed[1] and nonzero[2] <= changed[2]
    assert nonzero[3] <= changed[3]
    edge = a[56, 63:84]  # feathered: decreasing from 255 to 0 going right from the box edge
    assert edge[0] == 255 and edge[-1] == 0 and 0 < edge[6] < 255
    assert (np.diff(edge.astype(int)) <= 0).all()
    # Clipped at the image border; blur=0 gives a hard dilated box.
    m2, c2 = defects.build_mask((64, 64), (0, 0, 16, 16), dilate=2, blur=0)
    assert c2 == (0, 0, 18, 18) and m2.getbbox() == (0, 0, 18, 18) and set(np.unique(np.asarray(m2))) == {0, 255}
    with pytest.raises(ValueError):
        defects.build_mask((64, 64), (10, 10, 10, 20))


def test_pair_slugs():
    assert clip_scores.pair_slugs(IQA) == ["sharp", "clean", "natural", "well_exposed"]
    assert clip_scores.pair_slugs([("a photo", "x"), ("sharp", "y"), ("sharp!", "z")]) == ["pair0", "sharp", "sharp_2"]


@pytest.fixture(scope="module")
def clip(tiny_models):
    cfg = ModelConfig(
        clip_pretrained=str(tiny_models["clip"] / "open_clip_model.safetensors"),
        clip_config_dir=str(tiny_models["clip"]),
    )
    return load_clip(cfg, "cpu")


def test_clip_scores_share_one_image_forward(clip, monkeypatch):
    calls = []
    original = clip.model.encode_image

    def counting(pixels, *args, **kwargs):
        calls.append(pixels.shape[0])
        return original(pixels, *args, **kwargs)

    monkeypatch.setattr(clip.model, "encode_image", counting)
    images = [blocks(seed=i) for i in range(5)]
    feats = clip_scores.encode_images(clip, images)
    assert calls == [5]
    assert feats.shape == (5, 32) and feats.dtype == torch.float32
    assert torch.allclose(feats.norm(dim=-1), torch.ones(5), atol=1e-5)

    prompts = [f"product photo {i}" for i in range(5)]
    cos = clip_scores.alignment(feats, clip_scores.encode_texts(clip, prompts))
    assert len(cos) == 5 and all(-1.0 <= c <= 1.0 for c in cos)
    assert clip_scores.clip_score_100(0.3) == pytest.approx(30.0) and clip_scores.clip_score_100(-0.2) == 0.0

    cache = TextFeatureCache(clip)
    names = clip_scores.pair_slugs(IQA)
    iqa = clip_scores.iqa_scores(feats, cache.pairs(IQA), names)
    assert len(iqa) == 5
    for row in iqa:
        assert list(row) == ["iqa_sharp", "iqa_clean", "iqa_natural", "iqa_well_exposed", "iqa_mean"]
        assert all(0.0 <= v <= 1.0 for v in row.values())
        assert row["iqa_mean"] == pytest.approx(sum(list(row.values())[:-1]) / 4)

    safety = clip_scores.safety_scores(feats, cache.get(UNSAFE_CONCEPTS))
    assert len(safety) == 5 and all(-1.0 <= s <= 1.0 for s in safety)
    assert calls == [5]  # every score came from the one image forward


def test_iqa_is_softmax_of_pair_similarities():
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    pairs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # positive = axis 0, negative = axis 1
    rows = clip_scores.iqa_scores(image, pairs, ["sharp"], logit_scale=2.0)
    expected = torch.softmax(torch.tensor([2.0, 0.0]), dim=0)[0].item()
    assert rows[0]["iqa_sharp"] == pytest.approx(expected) and rows[1]["iqa_sharp"] == pytest.approx(1 - expected)
    assert clip_scores.safety_scores(image, torch.tensor([[0.6, 0.8], [1.0, 0.0]])) == pytest.approx([1.0, 0.8])
    with pytest.raises(ValueError):
        clip_scores.iqa_scores(image, pairs, ["a", "b"])


def test_text_cache_encodes_constant_texts_once(clip, monkeypatch):
    encoded = []
    original = clip.model.encode_text

    def counting(tokens, *args, **kwargs):
        encoded.append(tokens.shape[0])
        return original(tokens, *args, **kwargs)

    monkeypatch.setattr(clip.model, "encode_text", counting)
    cache = TextFeatureCache(clip, max_entries=16)
    first = cache.pairs(IQA)
    assert first.shape == (4, 2, 32) and encoded == [8]
    assert torch.equal(cache.pairs(IQA), first) and encoded == [8]  # batch 2: no text forward
    both = cache.get(["a sharp photo", "new text", "new text"])
    assert both.shape == (3, 32) and encoded == [8, 1]
    assert torch.allclose(both[0], first[0, 0]) and torch.equal(both[1], both[2])
    assert torch.allclose(cache.get(["new text"])[0], clip_scores.encode_texts(clip, ["new text"])[0], atol=1e-6)
    cache.get([f"prompt {i}" for i in range(20)])
    assert len(cache) == 16  # bounded


def test_defect_mask_follows_the_reason():
    arr = np.asarray(blocks()).copy()
    arr[:32, 96:] = 255  # clipped tile, top-right
    arr[64:, :64] = np.asarray(blocks().filter(ImageFilter.GaussianBlur(3)))[64:, :64]  # blurred, bottom-left
    image = Image.fromarray(arr)
    assert defects.defect_mask(image, [OVEREXPOSED], tile=32).box == (96, 0, 128, 32)
    blurry = defects.defect_mask(image, [BLURRY], tile=32)
    assert blurry.box == (0, 96, 32, 128) and blurry.changed == (0, 96 - 16, 32 + 16, 128)
    assert np.asarray(blurry.mask)[100, 10] == 255 and np.asarray(blurry.mask)[10, 100] == 0
