"""The invisible watermark (factory/io/watermark.py): keyed embedding and detection, the config it needs, a tiny
night with it on (same bytes across batch sizes, verify and detect from the CLI, matching to the manifests), and
nothing changed for a user who leaves it off."""

import dataclasses
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from factory.config import Bucket, FactoryConfig, ProvenanceConfig
from factory.errors import ConfigError
from factory.io import provenance, watermark
from factory.job.run import run
from factory.tools.benchmarks.watermark_bench import photo_like
from tests.conftest import DATE, cli, make_cfg, read_manifests, with_run, write_skus

SECRET_ENV = "ADFACTORY_TEST_WM_SECRET"
SECRET = "test-secret-0123456789"
ROWS = [
    {"sku_id": "W1", "category": "shoes", "attrs": json.dumps({"brand": "Peak", "color": "red"}), "variants": 2},
    {"sku_id": "W2", "category": "bags", "attrs": json.dumps({"brand": "Acme", "color": "tan"}), "variants": 1},
]
TASK = SimpleNamespace(
    sku_id="S1", variant=0, prompt="p", negative_prompt="n", steps=4, seed=7, width=256, height=256,
    image_path="images/x/S1-v0.png", placement="",
)  # fmt: skip


def marked(seed: int = 1, size: int = 256, secret: bytes = SECRET.encode()) -> tuple[Image.Image, bytes]:
    key = watermark.payload_key(secret, "adfactory", f"stem-{seed}")
    return watermark.embed(photo_like(seed, size), key, secret, 2.0), key


def test_roundtrip_keyed_and_deterministic():
    image, key = marked()
    d = watermark.detect(image, SECRET.encode(), key)
    assert d.found and d.key == key and d.message_errors == 0 and d.bit_error_rate < 0.02
    assert marked()[0].tobytes() == image.tobytes()  # same input, same pixels
    assert not watermark.detect(image, b"another-secret-0123456").found  # keyed: another secret reads nothing
    assert not watermark.detect(photo_like(1, 256), SECRET.encode()).found  # the unmarked original
    other, other_key = marked(seed=2)
    assert watermark.detect(other, SECRET.encode(), other_key).key != key  # payloads differ per image


def test_survives_stripping_jpeg_and_a_crop():
    image, key = marked(seed=3)
    buf = io.BytesIO()
    image.crop((13, 10, 243, 240)).save(buf, "JPEG", quality=75)  # a 10 % crop at odd offsets, then JPEG 75
    d = watermark.detect(Image.open(buf), SECRET.encode())
    assert d.found and d.key == key


def test_payload_is_keyed_on_producer_and_the_produce_id_stem():
    s = SECRET.encode()
    stem = provenance.produce_id_stem("S1", 0)
    assert provenance.stem_of(provenance.produce_id("S1", 0, "ab" * 32)) == stem
    assert watermark.payload_key(s, "a", stem) != watermark.payload_key(s, "b", stem)
    assert watermark.payload_key(s, "a", stem) != watermark.payload_key(b"x" * 16, "a", stem)
    assert len(watermark.payload_key(s, "a", stem)) * 8 == watermark.KEY_BITS


def test_off_by_default_changes_no_pixel(monkeypatch):
    monkeypatch.setenv("ADFACTORY_WATERMARK_SECRET", SECRET)  # a secret in the environment is not enough
    image = photo_like(4, 256)
    stamped = provenance.Stamper(ProvenanceConfig(), "abc", "tiny-sd", 1.0).png(image, TASK)
    assert stamped.pixel_hash == provenance.pixel_sha256(image)
    on = ProvenanceConfig(watermark=True, watermark_secret_env="ADFACTORY_WATERMARK_SECRET")
    marked_png = provenance.Stamper(on, "abc", "tiny-sd", 1.0).png(image, TASK)
    assert marked_png.pixel_hash != stamped.pixel_hash  # the hash describes the watermarked pixels
    assert watermark.detect(Image.open(io.BytesIO(marked_png.data)), SECRET.encode()).found


def test_missing_secret_and_bad_settings_are_config_errors(monkeypatch, tiny_models, tmp_path):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    on = ProvenanceConfig(watermark=True, watermark_secret_env=SECRET_ENV)
    with pytest.raises(ConfigError, match=f"{SECRET_ENV}.*provenance.watermark_secret_env"):
        provenance.Stamper(on, "abc", "m", 1.0)
    cfg = dataclasses.replace(with_run(make_cfg(tiny_models, tmp_path), executor="local", workers=1), provenance=on)
    write_skus(Path(cfg.paths.skus) / f"{DATE}.parquet", ROWS)
    with pytest.raises(ConfigError, match="provenance.watermark_secret_env"):
        run(cfg, DATE)
    assert not (Path(cfg.paths.output) / DATE / "images").exists()  # stopped before any image
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(ConfigError, match="at least 16"):
        provenance.Stamper(on, "abc", "m", 1.0)
    for bad in (
        ProvenanceConfig(watermark_strength=0.5),
        ProvenanceConfig(watermark_strength=9.0),
        ProvenanceConfig(watermark=True, watermark_secret_env="NOT-A-NAME"),
    ):
        with pytest.raises(ConfigError, match="provenance.watermark"):
            dataclasses.replace(FactoryConfig(), provenance=bad).validate()


# 128 px and up: the watermark's documented floor (a 64 px noise-like image holds one tile and is not reliable)
BUCKETS = (("small", 128, 128), ("medium", 128, 128), ("large", 128, 128), ("poster", 192, 128))


def wm_night(tiny_models, tmp: Path, batch_size: int):
    cfg = with_run(make_cfg(tiny_models, tmp), executor="local", workers=1, batch_size=batch_size)
    cfg = dataclasses.replace(
        cfg,
        provenance=ProvenanceConfig(watermark=True, watermark_secret_env=SECRET_ENV),
        planner=dataclasses.replace(cfg.planner, buckets=[Bucket(n, w, h, 2) for n, w, h in BUCKETS]),
    )
    write_skus(Path(cfg.paths.skus) / f"{DATE}.parquet", ROWS)
    summary = run(cfg, DATE)
    m = read_manifests(summary.output, summary.date)
    rows = sorted(m["approved"] + m["review"], key=lambda r: (r["sku_id"], r["variant"]))
    return Path(summary.output), rows


@pytest.fixture(scope="module")
def secret_env():
    mp = pytest.MonkeyPatch()
    mp.setenv(SECRET_ENV, SECRET)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def marked_night(tiny_models, tmp_path_factory, secret_env):
    return wm_night(tiny_models, tmp_path_factory.mktemp("wm"), batch_size=3)


def test_night_same_bytes_across_batch_sizes(marked_night, tiny_models, tmp_path, secret_env):
    root, rows = marked_night
    other_root, other_rows = wm_night(tiny_models, tmp_path, batch_size=1)
    assert len(rows) == 3
    for a, b in zip(rows, other_rows):
        assert (root / a["image_path"]).read_bytes() == (other_root / b["image_path"]).read_bytes()


def demo_config(tmp_path: Path) -> Path:
    """A config naming the test's secret variable and the tests' bucket sizes (what detect rescales to)."""
    conf = tmp_path / "wm.toml"
    buckets = "".join(
        f"[[planner.buckets]]\nname = '{n}'\nwidth = {w}\nheight = {h}\nsteps = 2\n" for n, w, h in BUCKETS
    )
    conf.write_text(f"[provenance]\nwatermark = true\nwatermark_secret_env = '{SECRET_ENV}'\n{buckets}")
    return conf


def test_verify_and_detect_from_the_cli_match_the_manifests(marked_night, tmp_path, secret_env):
    root, rows = marked_night
    conf = demo_config(tmp_path)
    env = {SECRET_ENV: SECRET}
    big = rows[0]
    path = root / big["image_path"]
    paths = [str(root / r["image_path"]) for r in rows]
    ok = cli("provenance", "verify", "--config", str(conf), "--output", str(root), *paths, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr  # watermark required (config on) and found in every image
    assert ok.stdout.count("watermark: found") == len(rows)
    assert all(f"produce_id={r['produce_id']}" in ok.stdout for r in rows)
    assert SECRET not in ok.stdout + ok.stderr
    stripped = tmp_path / "stripped.png"  # the pixels alone: every metadata mark gone
    Image.open(path).convert("RGB").save(stripped)
    found = cli("provenance", "detect", "--config", str(conf), "--output", str(root), str(stripped), env=env)
    assert found.returncode == 0, found.stdout + found.stderr
    assert f"sku_id={big['sku_id']!r}" in found.stdout and f"produce_id={big['produce_id']}" in found.stdout
    clean = tmp_path / "clean.png"
    Image.fromarray(np.full((128, 128, 3), 120, np.uint8)).save(clean)
    none = cli("provenance", "detect", "--config", str(conf), str(clean), env=env)
    assert none.returncode == 1 and "watermark: not found" in none.stdout
    no_secret = cli("provenance", "detect", "--config", str(conf), str(clean), env={SECRET_ENV: ""})
    assert no_secret.returncode == 2 and SECRET_ENV in no_secret.stderr
    required = cli("provenance", "verify", "--config", str(conf), str(path), env={SECRET_ENV: ""})
    assert required.returncode == 2 and "provenance.watermark_secret_env" in required.stderr  # on: secret needed
    off = tmp_path / "off.toml"
    off.write_text(f"[provenance]\nwatermark_secret_env = '{SECRET_ENV}'\n")
    unchecked = cli("provenance", "verify", "--config", str(off), str(path), env={SECRET_ENV: ""})
    assert unchecked.returncode == 0 and "watermark: not checked" in unchecked.stdout


def test_cache_key_changes_with_the_watermark_and_never_holds_the_secret(monkeypatch, tiny_models, tmp_path):
    from factory.generation.runtime import resolve
    from factory.job import keys

    cfg = make_cfg(tiny_models, tmp_path)
    plain = keys.model_key(cfg, resolve(cfg, "cpu")).key
    monkeypatch.setenv(SECRET_ENV, SECRET)
    on = dataclasses.replace(cfg, provenance=ProvenanceConfig(watermark=True, watermark_secret_env=SECRET_ENV))
    marked_key = keys.model_key(on, resolve(on, "cpu")).key
    assert marked_key != plain and marked_key.startswith(plain) and SECRET not in marked_key
    monkeypatch.setenv(SECRET_ENV, SECRET + "-rotated")
    assert keys.model_key(on, resolve(on, "cpu")).key != marked_key  # a new secret: earlier images not reused
