"""`adfactory dev scale-bench`: a synthetic day through validate and through a null-pipeline night."""

import pyarrow.parquet as pq

from factory.tools.benchmarks.scale_bench import scale_bench, synthetic_day
from tests.conftest import with_run


def test_the_synthetic_day_is_deterministic_with_some_bad_rows(tmp_path):
    a = pq.read_table(synthetic_day(tmp_path / "a.parquet", 3000))
    assert a.equals(pq.read_table(synthetic_day(tmp_path / "b.parquet", 3000)))
    assert 0 < a.num_rows - len(set(a.column("sku_id").to_pylist())) < 30  # ~0.2 % duplicates


def test_validate_and_null_night_report_time_cpu_and_rss(cfg, tmp_path):
    v = scale_bench(cfg, "validate", 500, tmp_path)
    assert v["images"] > 500 and 0 < v["rejected_rows"] < 20 and v["peak_rss_mb"] > 0 and v["wall_s"] > 0
    n = scale_bench(with_run(cfg, executor="local", batch_size=8), "null-night", 40, tmp_path, str(tmp_path / "o"))
    assert n["images"] >= 40 and n["driver_ms_per_image"] > 0 and n["output"] == str(tmp_path / "o")
