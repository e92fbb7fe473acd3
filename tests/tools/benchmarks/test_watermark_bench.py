"""The documented floor of the watermark's robustness (docs/watermark.md): photo-like 512^2 images are
found after JPEG q75 (>= 95 %), and clean images are not (a small false-positive check; the bench runs >= 1,000)."""

from factory.io import watermark
from factory.tools.benchmarks import watermark_bench as wb

FLOOR = 0.95  # detection after JPEG q75 on photo-like 512^2 images (the docs' table: 100 % on 200 images)


def test_detection_floor_after_jpeg75_on_photo_like_512():
    images = [wb.photo_like(i, 512) for i in range(24)]
    r = wb.robustness(images, 2.0, {"JPEG q75": wb.TRANSFORMS["JPEG q75"], "crop 10 %": wb.TRANSFORMS["crop 10 %"]})
    assert r["transforms"]["JPEG q75"]["detection_rate"] >= FLOOR, r
    assert r["transforms"]["crop 10 %"]["detection_rate"] >= FLOOR, r
    assert r["transforms"]["JPEG q75"]["mean_ber"] < 0.05 and r["psnr_db"] > 38, r


def test_no_false_positive_on_clean_images():
    fp = wb.false_positives(150, 256)
    assert fp["found"] == 0, fp
    assert fp["max_sync_z"] < watermark.Z_MIN + 1, fp  # a clean image's sync stays near chance


def test_clopper_pearson_interval():
    lo, hi = wb.clopper_pearson(0, 1000)
    assert lo == 0 and abs(hi - 0.003682) < 1e-5  # exact upper bound for 0 of 1,000 (two-sided 95 %)
    lo, hi = wb.clopper_pearson(5, 10)
    assert abs(lo - 0.187086) < 1e-5 and abs(hi - 0.812914) < 1e-5
