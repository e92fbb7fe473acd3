"""The gate's batched torch pixel metrics equal the numpy reference (`pixel_metrics`) and give the same reasons."""

import numpy as np
import pytest
from PIL import Image

from factory.config import QualityConfig
from factory.job.night_plan import local_worker
from factory.quality import pixels
from factory.tools.benchmarks.sim_device import pseudo_image
from tests.generation.test_worker import batch, tasks_for

TOLERANCE = 1e-12  # relative; measured: <= 4e-16 (the counts and sums are exact, only the last division rounds)


def edge_cases():
    rng = np.random.default_rng(7)
    return [
        Image.fromarray(rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)),  # odd sizes, full-range noise
        Image.new("RGB", (20, 20), (250, 3, 3)),  # uniform, saturated, bright
        Image.new("RGB", (16, 16), (0, 0, 0)),  # black: max == min == 0
        Image.new("RGB", (2, 5), (9, 200, 40)),  # too small for a Laplacian
        Image.fromarray(np.tile(np.array([[0, 255], [255, 0]], dtype=np.uint8), (32, 32))).convert("RGB"),
        Image.fromarray(pseudo_image(5, 512, 512)),
    ]


@pytest.fixture(scope="module")
def demo_images(tiny_models, tmp_path_factory):
    from tests.conftest import make_cfg

    tmp = tmp_path_factory.mktemp("px")
    worker = local_worker(make_cfg(tiny_models, tmp), str(tmp / "out"))
    return [im for bucket in ("small", "medium", "large") for im in worker.generate(batch(tasks_for(4, bucket)))]


def test_batched_metrics_equal_the_numpy_reference_and_give_the_same_reasons(demo_images):
    images = demo_images + edge_cases()
    got = pixels.pixel_metrics_batch(images)  # mixed sizes in one call: grouped by size
    q = QualityConfig()
    for im, g in zip(images, got):
        ref = pixels.pixel_metrics(im)
        assert set(g) == set(ref)
        for k, v in ref.items():
            assert g[k] == pytest.approx(v, rel=TOLERANCE, abs=1e-300), k
        for blur in (q.blur_laplacian_var, 1672.0):  # factory.toml's and data/demo.toml's
            t = pixels.PixelThresholds(q.blank_std, q.overexposed_frac, q.underexposed_frac, blur, q.saturation_mean)
            assert pixels.pixel_reasons(g, t) == pixels.pixel_reasons(ref, t)


def test_luma_and_saturation_are_pil_s_bit_for_bit():
    import torch

    rgb = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    m = pixels.rgb_metrics(torch.from_numpy(rgb[None]))[0]
    hsv_s = np.asarray(im.convert("HSV"), dtype=np.int64)[..., 1]
    gray = np.asarray(im.convert("L"), dtype=np.int64)
    assert m["saturation_mean"] == hsv_s.sum() / (hsv_s.size * 255)  # an exact sum of PIL's saturation bytes
    assert m["overexposed_frac"] == (gray >= 250).sum() / gray.size
    assert m["pixel_std"] == pytest.approx(gray.std() / 255, rel=1e-14)
    given = pixels.rgb_metrics(torch.from_numpy(rgb[None]), torch.from_numpy(gray[None].astype(np.uint8)))[0]
    assert given == m  # the tensor path's own luma is PIL's
