"""CLIP preprocessing as batched torch ops (`quality.preprocess = "torch"`, the default) against open_clip's own PIL
transform ("pil"): the CLIP input, the scores, and a whole night's reasons and PNG bytes."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from factory.errors import ConfigError, ModelError
from factory.job.night_plan import local_worker
from factory.quality import clip_scores
from factory.quality.clip_model import load_clip
from factory.quality.clip_preprocess import ClipTransform, preprocess_pixels
from factory.tools.benchmarks.sim_device import pseudo_image
from tests.conftest import DATE, SAMPLE_SCHEMA, make_cfg, read_manifests, sample_rows, with_run, write_skus
from tests.generation.test_worker import batch, tasks_for

# max |torch - PIL| of a resized value in grey levels (float resample vs PIL's 22-bit fixed point, two rounded passes)
GREY_LEVELS = 2
# share of CLIP input values that may differ at all. Measured: <= 0.1 % at 512² -> 32; 0.05-0.4 % at 512² -> 224; up
# to 1.1 % when the demo's 64-192 px images are upscaled to 224
DIFFERING = 0.02
SCORE_TOL = 3e-4  # |torch - PIL| of a cosine or IQA probability (measured on the demo night: <= 1e-4)


@pytest.fixture(scope="module")
def images(tiny_models, tmp_path_factory):
    """Tiny-pipeline images of every test bucket (64², 96², 128², 192x128) and 512² noise-like ones."""
    tmp = tmp_path_factory.mktemp("pre")
    worker = local_worker(make_cfg(tiny_models, tmp), str(tmp / "out"))
    made = [im for b in ("small", "medium", "large", "poster") for im in worker.generate(batch(tasks_for(3, b)))]
    return made + [Image.fromarray(pseudo_image(s, 512, 512)) for s in range(3)]


def _clip(cfg, mode):
    return load_clip(cfg.model, "cpu", mode)


def _vit_l14_transform():
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return open_clip.image_transform(224, is_train=False, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD)


@pytest.mark.parametrize("kernel", ["uint8", "float"])  # the CPU's kernel, and the one CUDA tensors get
@pytest.mark.parametrize("which", ["tiny", "vit-l-14"])
def test_torch_input_matches_open_clip_s_pil_transform(which, kernel, images, cfg):
    pil = _clip(cfg, "pil").preprocess if which == "tiny" else _vit_l14_transform()
    t = ClipTransform.of(pil)
    assert t.interpolation == "bicubic" and t.crop == ((32, 32) if which == "tiny" else (224, 224))
    std = torch.tensor(t.std).view(3, 1, 1)
    differing, total = 0, 0
    for im in images:
        ref = pil(im)
        got = preprocess_pixels(torch.from_numpy(np.array(im))[None], t, kernel)[0]
        assert got.shape == ref.shape
        levels = ((got - ref) * std * 255).abs()  # back to grey levels
        assert levels.max() <= GREY_LEVELS + 1e-3, im.size
        differing += int((levels > 1e-3).sum())
        total += levels.numel()
    assert differing / total <= DIFFERING


def test_scores_match_the_pil_transform_within_tolerance(images, cfg):
    torch_clip, pil_clip = _clip(cfg, "torch"), _clip(cfg, "pil")
    assert torch_clip.transform is not None and pil_clip.transform is None
    same_size = [im for im in images if im.size == (512, 512)]
    device_tensor = torch.from_numpy(np.stack([np.asarray(im) for im in same_size]))
    a = clip_scores.encode_images(torch_clip, images)  # mixed sizes: one torch group per size, reassembled in order
    b = clip_scores.encode_images(pil_clip, images)
    c = clip_scores.encode_images(torch_clip, same_size, device_tensor)  # the worker's tensor, as given
    texts = clip_scores.encode_texts(torch_clip, ["a product photo"] * len(images))
    assert np.allclose(clip_scores.alignment(a, texts), clip_scores.alignment(b, texts), rtol=0, atol=SCORE_TOL)
    assert torch.equal(c, clip_scores.encode_images(torch_clip, same_size))  # same input whether tensor or PIL


def test_a_night_keeps_its_pngs_and_reasons_with_either_preprocessing(local_night, tiny_models, tmp_path):
    from factory.job.run import run

    torch_cfg, _ = local_night
    assert torch_cfg.quality.preprocess == "torch"  # the default
    cfg = with_run(make_cfg(tiny_models, tmp_path), executor="local", workers=1, batch_size=4)
    cfg = dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, preprocess="pil"))
    write_skus(Path(cfg.paths.skus) / f"{DATE}.parquet", sample_rows(), SAMPLE_SCHEMA)
    run(cfg, DATE)
    old, new = Path(cfg.paths.output), Path(torch_cfg.paths.output)
    pngs = sorted(p.relative_to(old) for p in old.rglob("images/**/*.png"))
    assert pngs and pngs == sorted(p.relative_to(new) for p in new.rglob("images/**/*.png"))
    assert all((old / p).read_bytes() == (new / p).read_bytes() for p in pngs)  # the pixels do not change
    before, after = read_manifests(old), read_manifests(new)
    for kind in before:
        rows = [
            sorted(tables[kind], key=lambda r: (r["sku_id"] or "", r.get("variant") or 0)) for tables in (before, after)
        ]
        assert len(rows[0]) == len(rows[1])
        for x, y in zip(*rows):
            assert (x.get("reasons"), x.get("reason")) == (y.get("reasons"), y.get("reason"))
            for score in ("clip_score", "iqa_mean", "unsafe_score", "laplacian_var", "saturation_mean"):
                if x.get(score) is not None:
                    assert y[score] == pytest.approx(x[score], abs=SCORE_TOL), score


def test_an_unsupported_transform_names_the_fix(cfg):
    from torchvision import transforms as T

    with pytest.raises(ModelError, match="quality.preprocess = 'pil'"):
        ClipTransform.of(T.Compose([T.Resize((224, 200)), T.CenterCrop(224), T.ToTensor()]))
    bad = dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, preprocess="numpy"))
    with pytest.raises(ConfigError, match="quality.preprocess"):
        bad.validate()
    per_category = dataclasses.replace(
        cfg, quality=dataclasses.replace(cfg.quality, categories={"toys": {"preprocess": "pil"}})
    )
    with pytest.raises(ConfigError, match="preprocess is global"):
        per_category.validate()
