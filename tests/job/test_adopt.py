"""A rerun adopts the PNGs an interrupted attempt wrote (same cache key, decodes completely, pixels match their
label) and re-scores them; anything else is regenerated; the night's bytes equal a clean night's."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from PIL import Image

from factory.io.layout import MANIFEST_KINDS, partition_path, parts_dir
from factory.io.provenance import CACHE_KEY_KEY
from factory.job.night_plan import local_worker
from factory.job.run import run
from tests.conftest import DATE, SAMPLE_SCHEMA, with_run, write_skus
from tests.job.test_reliability import assert_invariant, many_rows


def digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / DATE).rglob("*.png")}


def carries_key(png: Path) -> bool:
    with Image.open(png) as im:
        return CACHE_KEY_KEY in im.text


def crash(out: Path) -> None:
    """What a night that died before writing any resume part or manifest leaves: images only."""
    shutil.rmtree(out / parts_dir(DATE))
    for f in [
        out / DATE / "_SUCCESS",
        out / DATE / "run.json",
        *(out / partition_path(k, DATE) for k in MANIFEST_KINDS),
    ]:
        f.unlink()


def test_a_rerun_adopts_matching_pngs_and_regenerates_the_rest(cfg, tmp_path):
    rows = many_rows(12)
    write_skus(Path(cfg.paths.skus) / f"{DATE}.parquet", rows, SAMPLE_SCHEMA)
    cfg = with_run(cfg, executor="local", batch_size=4)
    worker = local_worker(cfg, cfg.paths.output)
    clean = run(cfg, DATE, worker=worker)
    out = Path(clean.output)
    reference = digests(out)
    pngs = sorted((out / DATE).rglob("*.png"))
    adoptable = [p for p in pngs if carries_key(p)]  # repaired images carry no key: they are regenerated
    assert len(adoptable) >= 4 and clean.counts.get("images_adopted") == 0

    crash(out)
    truncated, swapped = adoptable[0], adoptable[1]
    truncated.write_bytes(truncated.read_bytes()[:-40])  # a write cut short (the IEND and some data missing)
    shutil.copyfile(adoptable[2], swapped)  # another task's image: its cache key does not match
    computed = worker.pixels_computed
    again = run(cfg, DATE, worker=worker)

    assert again.counts["images_adopted"] == len(adoptable) - 2
    assert again.counts["images_generated"] == len(pngs) - again.counts["images_adopted"]
    assert again.counts["images_resumed"] == 0
    assert 0 < worker.pixels_computed - computed < computed  # the pipeline ran for the regenerated images only
    assert digests(out) == reference  # adopted, regenerated and repaired images: the clean night's bytes
    assert_invariant(out, rows)
