"""Prometheus metrics of a night: the textfile-collector file, and a Pushgateway push read back through a real
Prometheus' HTTP query API after it scraped the gateway."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from factory.config import FactoryConfig, load_config
from factory.errors import ConfigError, InputError
from factory.job.run import run
from factory.ops.metrics import REJECT_REASONS
from tests.conftest import DATE, REPO
from tests.ops.conftest import null_night

OTHER_DATE = "2026-11-22"  # no SKU file: the night fails at step 1


def textfile_samples(path: Path) -> dict[tuple[str, tuple], float]:
    text = path.read_text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def by_labels(results: list[dict], *keys: str) -> dict[tuple, float]:
    return {tuple(r["metric"][k] for k in keys): float(r["value"][1]) for r in results}


def _cfg(cfg: FactoryConfig, prom_stack, tmp_path: Path, instance: str) -> FactoryConfig:
    metrics = {"textfile": str(tmp_path / "node" / "adfactory.prom"), "pushgateway": prom_stack.gateway}
    return null_night(cfg, metrics={**metrics, "instance": instance})


def test_a_night_pushes_its_metrics_and_prometheus_scrapes_them(prom_stack, cfg, day_file, tmp_path):
    c = _cfg(cfg, prom_stack, tmp_path, "night-values")
    s = run(c, DATE)
    q = '{instance="night-values"}'
    images = prom_stack.wait_for(f"adfactory_images_total{q}", lambda r: len(r) == 3 * (len(s.outcomes) - 1))
    expected = {(o, cat): row[o] for cat, row in s.outcomes.items() if cat != "all" for o in ("first_pass", "review")}
    got = by_labels(images, "outcome", "category")
    assert {k: got[k] for k in expected} == expected
    assert sum(got.values()) == s.counts["approved_images"] + s.counts["review_images"]
    assert s.counts["rejected_rows"] == 4  # the sample file's four bad rows, by reason:
    rejected = by_labels(prom_stack.query(f"adfactory_rejected_rows_total{q}"), "reason")
    assert {r: v for (r,), v in rejected.items() if v} == s.reasons["rejected"]
    assert {(r,) for r in REJECT_REASONS} <= set(rejected)  # zeros written too: a reason that stops reads 0
    assert by_labels(prom_stack.query(f"adfactory_run_status{q}"), "job") == {("adfactory",): 1.0}
    stages = by_labels(prom_stack.query(f"adfactory_stage_seconds{q}"), "stage")
    assert {"read", "plan", "execute", "generate", "score", "write_manifests"} <= {k[0] for k in stages}
    [ips] = prom_stack.query(f"adfactory_images_per_second{q}")
    assert float(ips["value"][1]) == pytest.approx(s.images_per_s)

    # the textfile holds the same samples, and a success sets both timestamps to the same instant
    f = textfile_samples(Path(c.metrics.textfile))
    assert f[("adfactory_run_status", ())] == 1
    assert f[("adfactory_last_success_timestamp_seconds", ())] == f[("adfactory_last_run_timestamp_seconds", ())]
    assert (
        f[("adfactory_images_total", (("category", "shoes"), ("outcome", "first_pass")))] == got["first_pass", "shoes"]
    )
    assert not list(Path(c.metrics.textfile).parent.glob(".*.tmp"))  # written atomically, nothing left behind


def test_a_failed_night_never_overwrites_the_last_success(prom_stack, cfg, day_file, tmp_path):
    c = _cfg(cfg, prom_stack, tmp_path, "night-fails")
    q = '{instance="night-fails"}'
    run(c, DATE)
    ok = prom_stack.wait_for(f"adfactory_last_success_timestamp_seconds{q}", lambda r: len(r) == 1)
    last_success = float(ok[0]["value"][1])
    before = textfile_samples(Path(c.metrics.textfile))

    with pytest.raises(InputError):
        run(c, OTHER_DATE)  # the date's SKU file is missing

    prom_stack.wait_for(f"adfactory_run_status{q}", lambda r: len(r) == 1 and r[0]["value"][1] == "0")
    assert float(prom_stack.query(f"adfactory_last_success_timestamp_seconds{q}")[0]["value"][1]) == last_success
    last_run = float(prom_stack.query(f"adfactory_last_run_timestamp_seconds{q}")[0]["value"][1])
    assert last_run > last_success
    assert prom_stack.query(f"adfactory_images_total{q}")  # the last success's counts stay (pushadd)

    after = textfile_samples(Path(c.metrics.textfile))
    assert after[("adfactory_run_status", ())] == 0
    assert after[("adfactory_last_success_timestamp_seconds", ())] == last_success
    assert after[("adfactory_last_run_timestamp_seconds", ())] == last_run
    carried = {k: v for k, v in before.items() if k[0] == "adfactory_images_total"}
    assert carried and all(after[k] == v for k, v in carried.items())


def test_an_unreachable_pushgateway_does_not_fail_the_night(cfg, day_file, tmp_path, caplog):
    c = null_night(cfg, metrics={"pushgateway": "http://127.0.0.1:9", "timeout_s": 2.0})  # discard port: refused
    s = run(c, DATE)
    assert s.counts["approved_images"] + s.counts["review_images"] == s.counts["images_planned"]
    assert "metrics: pushgateway" in caplog.text


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[metrics]\ntextfile = "adfactory.txt"\n', "metrics.textfile must end in .prom"),
        ('[metrics]\npushgateway = "localhost:9091"\n', "metrics.pushgateway must be an http(s)://host:port URL"),
        ("[metrics]\ntimeout_s = 0\n", "metrics.timeout_s must be greater than 0"),
        ('[metrics]\njob = " "\n', "metrics.job must name"),
    ],
)
def test_bad_metrics_config_is_one_sentence_naming_the_key(tmp_path, toml, message):
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match="^" + re.escape(f"{f}: {message}")):
        load_config(f)


def test_metrics_are_off_by_default(tmp_path):
    m = FactoryConfig().metrics
    assert (m.textfile, m.pushgateway) == ("", "")
    rel = tmp_path / "c.toml"
    rel.write_text('[metrics]\ntextfile = "node/adfactory.prom"\n')
    assert load_config(rel).metrics.textfile == str(tmp_path / "node" / "adfactory.prom")  # relative to the file


@pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool (Debian prometheus): run `make prometheus`")
def test_the_docs_alert_rules_are_valid_prometheus_rules(tmp_path):
    page = (REPO / "docs" / "monitoring.md").read_text()
    rules = re.search(r"```yaml\n(.*?)```", page, re.S).group(1)
    (tmp_path / "rules.yml").write_text(rules)
    out = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 3 rules found" in out.stdout
