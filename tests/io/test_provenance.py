"""Provenance marks on real tiny-model nights: the GB 45438 XMP label, the A1111 parameters, the pixel hash,
tamper detection, determinism with marks on, the visible label, and C2PA signing with a self-made chain."""

import dataclasses
import hashlib
import json
import shutil
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from factory.config import DEFAULT_LABEL_FONT, ProvenanceConfig
from factory.errors import ConfigError
from factory.io import provenance
from factory.job.run import run
from factory.tools.builders.signing_chain import make_signing_chain
from tests.conftest import DATE, cli, make_cfg, read_manifests, small_config_file, with_run, write_skus

ROWS = [
    {"sku_id": "P1", "category": "shoes", "attrs": json.dumps({"brand": "Peak", "color": "红色"}), "variants": 2},
    {"sku_id": "P2", "category": "bags", "attrs": json.dumps({"brand": "Acme", "color": "tan"}), "variants": 1},
]


def every_mark(chain) -> ProvenanceConfig:
    """Producer code, a visible label and C2PA signing with a self-made chain: every mark on."""
    return ProvenanceConfig(
        producer="TEST-PRODUCER-001",
        visible_label="AI生成",
        visible_label_corner="top-left",
        c2pa_cert=str(chain.chain),
        c2pa_key=str(chain.key),
    )


def night(tiny_models, tmp: Path, batch_size: int, chain):
    cfg = with_run(make_cfg(tiny_models, tmp), executor="local", workers=1, batch_size=batch_size)
    cfg = dataclasses.replace(cfg, provenance=every_mark(chain))
    write_skus(Path(cfg.paths.skus) / f"{DATE}.parquet", ROWS)
    summary = run(cfg, DATE)
    m = read_manifests(summary.output, summary.date)
    rows = m["approved"] + m["review"]
    return Path(summary.output), sorted(rows, key=lambda r: (r["sku_id"], r["variant"]))  # image_path: from the root


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return make_signing_chain(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def labelled_night(tiny_models, tmp_path_factory, chain):
    return night(tiny_models, tmp_path_factory.mktemp("marks"), batch_size=3, chain=chain)


def without_c2pa(png: bytes) -> bytes:
    """The PNG minus its caBX chunk (signing inserts only that chunk; everything else is byte-for-byte kept)."""
    out, pos = [png[:8]], 8
    while pos < len(png):
        length = struct.unpack(">I", png[pos : pos + 4])[0]
        if png[pos + 4 : pos + 8] != b"caBX":
            out.append(png[pos : pos + 12 + length])
        pos += 12 + length
    return b"".join(out)


def test_every_png_carries_the_label_the_parameters_and_the_pixel_hash(labelled_night, chain):
    root, rows = labelled_night
    assert len(rows) == 3
    for r in rows:
        path = root / r["image_path"]
        report = provenance.inspect(path, chain.root.read_text())
        assert report.ok, report.problems
        assert report.c2pa["state"] == "Trusted" and report.c2pa["source_type"].endswith("/trainedAlgorithmicMedia")
        with Image.open(path) as im:
            pixels = hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()
            assert im.text["XML:com.adobe.xmp"].startswith("<?xpacket")
        label = report.label
        assert list(label) == [
            "Label", "ContentProducer", "ProduceID", "ReservedCode1", "ContentPropagator", "PropagateID",
            "ReservedCode2",
        ]  # fmt: skip
        assert label["Label"] == "1" and label["ContentProducer"] == "TEST-PRODUCER-001"
        assert label["ReservedCode1"] == pixels and label["ProduceID"] == r["produce_id"]
        assert label["ContentPropagator"] == label["PropagateID"] == label["ReservedCode2"] == ""
        assert report.digital_source_type.endswith("/trainedAlgorithmicMedia")
        fingerprint = r["model"].split("@")[1]
        assert report.parameters == (
            f"{r['prompt']}\nNegative prompt: {r['negative_prompt']}\nSteps: {r['steps']}, Sampler: LCM, "
            f"CFG scale: 1, Seed: {r['seed']}, Size: {r['width']}x{r['height']}, Model hash: {fingerprint}, "
            f"Model: tiny-sd"
        )
    assert len({r["produce_id"] for r in rows}) == 3  # unique per image


def test_visible_label_is_drawn_in_the_configured_corner_at_5_percent(tmp_path):
    plain = Image.new("RGB", (200, 120), (90, 120, 150))
    labelled = provenance.draw_visible_label(plain, "AI生成", "top-left", 0.05)
    diff = Image.frombytes("L", plain.size, bytes(a != b for a, b in zip(plain.tobytes(), labelled.tobytes()))[::3])
    left, top, right, bottom = diff.point(lambda v: 255 * v).getbbox()
    assert right < 100 and bottom < 60  # top-left quarter only
    assert bottom - top >= 0.05 * 120
    again = provenance.draw_visible_label(plain, "AI生成", "top-left", 0.05)
    assert again.tobytes() == labelled.tobytes()  # deterministic
    assert provenance.label_font_path(ProvenanceConfig()) == Path(DEFAULT_LABEL_FONT)  # Debian's, `make fonts`


def test_a_missing_label_font_is_one_sentence_and_exit_2(tiny_models, tmp_path):
    missing = tmp_path / "no-such-font.ttc"
    with pytest.raises(ConfigError, match=r"^provenance.label_font: .*no-such-font.ttc not found; install "):
        provenance.Stamper(ProvenanceConfig(visible_label="AI生成", label_font=str(missing)), "abc", "m", 1.0)
    provenance.Stamper(ProvenanceConfig(label_font=str(missing)), "abc", "m", 1.0)  # no visible label: not needed
    not_a_font = tmp_path / "font.ttc"
    not_a_font.write_bytes(b"not a font")
    with pytest.raises(ConfigError, match="is not a TTF/TTC font FreeType can open"):
        provenance.label_font_path(ProvenanceConfig(label_font=str(not_a_font)))

    # through the CLI, before any model loads: the setting (relative to the config file), the fix, no traceback
    config = small_config_file(tmp_path / "c.toml", make_cfg(tiny_models, tmp_path))
    text = config.read_text() + '[provenance]\nvisible_label = "AI生成"\nlabel_font = "fonts/none.ttc"\n'
    config.write_text(text)
    skus = write_skus(tmp_path / f"{DATE}.parquet", ROWS)
    res = cli("run", "--date", DATE, "--skus", str(skus), "--config", str(config), "--output", str(tmp_path / "o"))
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip() == (
        f"error: provenance.label_font: {tmp_path / 'fonts' / 'none.ttc'} not found; install fonts-wqy-microhei "
        "(make fonts) or point the setting at a TTF/TTC font with the label's CJK glyphs"
    )
    assert not (tmp_path / "o" / DATE / "images").exists()


def test_tampered_pixels_are_detected_and_verify_exits_1(labelled_night, tmp_path):
    root, rows = labelled_night
    original = root / rows[0]["image_path"]
    tampered = tmp_path / "tampered.png"
    with Image.open(original) as im:
        info = PngInfo()
        for key, value in im.text.items():  # keep every mark, change one pixel
            info.add_itxt(key, value)
        changed = im.convert("RGB")
        r, g, b = changed.getpixel((5, 5))
        changed.putpixel((5, 5), ((r + 1) % 256, g, b))
        changed.save(tampered, pnginfo=info)
    report = provenance.inspect(tampered)
    assert not report.ok and "pixel hash mismatch" in report.problems[0]

    ok = cli("provenance", "verify", str(original))
    assert ok.returncode == 0, ok.stderr
    assert "TEST-PRODUCER-001" in ok.stdout and "Sampler: LCM" in ok.stdout and "OK:" in ok.stdout
    bad = cli("provenance", "verify", str(original), str(tampered))
    assert bad.returncode == 1 and "pixel hash mismatch" in bad.stdout
    missing = cli("provenance", "verify", str(tmp_path / "nope.png"))
    assert missing.returncode == 2 and "nope.png: no such file" in missing.stderr


def test_same_bytes_across_batch_sizes_with_marks_on(labelled_night, tiny_models, tmp_path, chain):
    """Every byte but the C2PA signature's (a random instance id and ECDSA nonce) is the same at batch size 1."""
    root, rows = labelled_night
    other_dir, other_rows = night(tiny_models, tmp_path, batch_size=1, chain=chain)
    for a, b in zip(rows, other_rows):
        signed_a, signed_b = (root / a["image_path"]).read_bytes(), (other_dir / b["image_path"]).read_bytes()
        assert without_c2pa(signed_a) == without_c2pa(signed_b) and b"caBX" in signed_a
        assert a["produce_id"] == b["produce_id"]


def test_c2pa_signing_with_a_self_made_chain(tmp_path):
    chain = make_signing_chain(tmp_path / "ca")
    marks = ProvenanceConfig(c2pa_cert=str(chain.chain), c2pa_key=str(chain.key))
    image = Image.effect_noise((64, 48), 40).convert("RGB")
    task = SimpleNamespace(
        sku_id="C1", variant=0, prompt="p", negative_prompt="n", steps=4, seed=7, width=64, height=48,
        image_path="images/x/C1-v0.png", placement="",
    )  # fmt: skip
    stamped = provenance.Stamper(marks, "abc", "tiny-sd", 1.0).png(image, task)
    signed = tmp_path / "signed.png"
    signed.write_bytes(stamped.data)

    trusted = provenance.inspect(signed, chain.root.read_text())
    assert trusted.ok, trusted.problems
    assert trusted.c2pa["state"] == "Trusted" and trusted.c2pa["source_type"] == provenance.TRAINED_ALGORITHMIC_MEDIA
    assert trusted.label["ReservedCode1"] == stamped.pixel_hash  # the XMP label survives signing
    assert provenance.inspect(signed).c2pa["state"] == "Valid"  # signature fine; root not trusted without anchors
    cli_out = cli("provenance", "verify", "--trust-anchors", str(chain.root), str(signed))
    assert cli_out.returncode == 0 and "C2PA: Trusted" in cli_out.stdout

    # edit the parameters text after signing (chunk CRC fixed, so the PNG stays readable): the C2PA hard binding
    # covers every byte outside the manifest, so the signature no longer matches
    edited = tmp_path / "edited.png"
    edited.write_bytes(rewrite_text_chunk(stamped.data, b"Seed: 7", b"Seed: 8"))
    report = provenance.inspect(edited, chain.root.read_text())
    assert report.label["ReservedCode1"] == report.pixel_hash  # the pixels are untouched...
    assert report.c2pa["state"] == "Invalid" and not report.ok  # ...but the signed file was changed
    assert cli("provenance", "verify", str(edited)).returncode == 1


def rewrite_text_chunk(png: bytes, old: bytes, new: bytes) -> bytes:
    """Replace `old` with `new` (same length) inside a tEXt chunk and recompute that chunk's CRC."""
    assert len(old) == len(new)
    at = png.index(old)
    pos = 8
    while pos < len(png):
        length = struct.unpack(">I", png[pos : pos + 4])[0]
        if pos + 8 <= at < pos + 8 + length:
            body = png[pos + 4 : pos + 8 + length].replace(old, new)
            return png[: pos + 4] + body + struct.pack(">I", zlib.crc32(body)) + png[pos + 12 + length :]
        pos += 12 + length
    raise AssertionError("text not inside a chunk")


def test_provenance_config_is_validated(tmp_path):
    from factory.config import FactoryConfig

    def bad(**kw):
        with pytest.raises(ConfigError):
            dataclasses.replace(FactoryConfig(), provenance=ProvenanceConfig(**kw)).validate()

    bad(visible_label_corner="middle")
    bad(visible_label_size=0.04)
    bad(c2pa_cert="chain.pem")  # without a key
    bad(c2pa_alg="md5")
    bad(producer=" ")
    missing = ProvenanceConfig(c2pa_cert=str(tmp_path / "no.pem"), c2pa_key=str(tmp_path / "no.key"))
    with pytest.raises(ConfigError, match="cannot read"):
        provenance.Stamper(missing, "abc", "m", 1.0)
    first, second = make_signing_chain(tmp_path / "one"), make_signing_chain(tmp_path / "two")
    mismatched = ProvenanceConfig(c2pa_cert=str(first.chain), c2pa_key=str(second.key))
    with pytest.raises(ConfigError, match="c2pa_key"):
        provenance.C2paSigner.check(mismatched)
    shutil.rmtree(tmp_path, ignore_errors=True)
