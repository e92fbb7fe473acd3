"""`adfactory calibrate` refuses bad arguments and days with nothing to sample: exit 2, nothing written."""

import math
from pathlib import Path

import pyarrow as pa
import pytest

from factory.errors import InputError
from factory.tools.ops.calibrate import calibrate
from tests.conftest import DATE, cli, demo_config_file, with_run, write_skus

SCHEMA = pa.schema([("sku_id", pa.string()), ("category", pa.string()), ("product", pa.string())])


def _nothing_written(cfg) -> bool:
    return not Path(cfg.paths.output).exists()


@pytest.mark.parametrize(
    "sample, percentile, flag",
    [
        (0, 5.0, "--sample"),
        (-3, 5.0, "--sample"),
        (8, 0.0, "--percentile"),
        (8, 50.0, "--percentile"),
        (8, 75.0, "--percentile"),
        (8, -1.0, "--percentile"),
        (8, math.nan, "--percentile"),
    ],
)
def test_out_of_range_arguments_are_bad_input(cfg, day_file, sample, percentile, flag):
    with pytest.raises(InputError, match=flag) as info:
        calibrate(with_run(cfg, executor="local"), DATE, sample=sample, percentile=percentile)
    assert info.value.exit_code == 2 and _nothing_written(cfg)


@pytest.mark.parametrize(
    "rows",
    [[], [{"sku_id": "A", "category": "garden", "product": "rake"}, {"sku_id": None, "category": "toys"}]],
    ids=["zero rows", "every row rejected"],
)
def test_a_day_with_nothing_to_sample_is_bad_input(cfg, rows):
    path = write_skus(Path(cfg.paths.skus) / f"{DATE}.parquet", rows, SCHEMA)
    with pytest.raises(InputError, match="no valid rows to calibrate on") as info:
        calibrate(with_run(cfg, executor="local"), DATE)
    assert info.value.exit_code == 2 and str(path) in str(info.value) and _nothing_written(cfg)


def test_output_root_that_is_a_file(cfg, day_file, tmp_path):
    blocker = tmp_path / "out-file"
    blocker.write_text("keep me")
    bad = cfg.__class__(
        **{**cfg.__dict__, "paths": cfg.paths.__class__(cfg.paths.skus, str(blocker), cfg.paths.templates)}
    )
    with pytest.raises(InputError, match="not a directory"):
        calibrate(with_run(bad, executor="local"), DATE, sample=2)
    assert blocker.read_text() == "keep me"


def test_cli_percentile_out_of_range_exits_2(cfg, day_file, tmp_path):
    config = demo_config_file(tmp_path / "c.toml", cfg)
    out = tmp_path / "out"
    res = cli(
        "calibrate",
        "--config",
        str(config),
        "--date",
        DATE,
        "--skus",
        str(day_file),
        "--output",
        str(out),
        "--percentile",
        "60",
    )
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: --percentile must be above 0 and below 50 (a share of the sample in %), got 60.0"
    ]
    assert not out.exists()
