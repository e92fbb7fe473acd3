"""The repair profiler: every stage of a repair and of a generation, per bucket, from a real worker."""

import dataclasses

import pytest

from factory.tools.benchmarks.profile_repair import run


def test_profile_covers_every_stage_and_counts_one_encode_per_repair(cfg):
    rows = run(cfg, batch=2, repairs=2, rounds=1)["buckets"]
    assert list(rows) == [b.name for b in cfg.planner.buckets]
    row = rows["small"]
    for stage in ("mask", "text_encoder", "vae_encode", "unet", "vae_decode", "rescore", "gen_unet", "gen_vae_decode"):
        assert row[stage] > 0, stage
    assert row["vae_encode_calls"] == 2  # the masked image's encode is skipped (repair.RepairShortcuts)
    assert row["repair_per_image"] > row["unet"] and row["repair_over_generate"] > 0


def test_profile_refuses_repair_off(cfg):
    off = dataclasses.replace(cfg, repair=dataclasses.replace(cfg.repair, mode="off"))
    with pytest.raises(ValueError, match="repair on"):
        run(off)
