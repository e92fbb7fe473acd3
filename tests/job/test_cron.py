"""What cron sees: `adfactory run` as a real subprocess, stderr a pipe (not a TTY), umask 027.

One module-scoped sequence of nights on the local executor, shared by the assertions:
1. a run killed by SIGTERM mid-run (a cron timeout, a Kubernetes eviction), with a resume-part window larger than
   the night: the only part is the one written on the way out;
2. the rerun, with `--log-format json`, which resumes and completes;
3. a rerun of the completed date (a no-op).
"""

import json
import os
import signal
import stat
import subprocess
import time

import pyarrow.parquet as pq
import pytest

from factory.errors import EXIT_TERMINATED, ConfigError
from factory.logs import JsonFormatter, check_format
from tests.conftest import (
    DATE,
    SAMPLE_SCHEMA,
    cli,
    cli_args,
    cli_env,
    make_cfg,
    small_config_file,
    write_skus,
)
from tests.job.test_reliability import assert_invariant, many_rows

ROWS = many_rows(8)
UMASK = 0o027
NOISE = ("_pytree", "torchao", "Token authentication", "\x1b[", "Traceback")


@pytest.fixture(scope="module")
def nights(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cron")
    skus = write_skus(tmp / "skus" / f"{DATE}.parquet", ROWS, SAMPLE_SCHEMA)
    config = small_config_file(tmp / "c.toml", make_cfg(tiny_models, tmp), {"part_images": 1000, "part_seconds": 3600})
    out = tmp / "out"
    args = cli_args(
        "run", "--date", DATE, "--skus", str(skus), "--output", str(out), "--config", str(config),
        "--executor", "local", "--batch-size", "2",
    )  # fmt: skip
    parts, images = out / DATE / "_parts", out / DATE / "images"
    proc = subprocess.Popen(
        args, cwd=tmp, env=cli_env(), umask=UMASK, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 240
        # batches of 2, one at a time: a third image means the first batch's rows reached the driver
        while time.time() < deadline and len(list(images.rglob("*.png"))) < 3:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            time.sleep(0.1)
        parts_before_stop = len(list(parts.glob("*.parquet")))
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        _, killed_err = proc.communicate(timeout=60)
        stop_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    after_kill = {
        "rc": proc.returncode,
        "stderr": killed_err,
        "stop_s": stop_s,
        "lock": (out / DATE / ".lock").exists(),
        "success": (out / DATE / "_SUCCESS").exists(),
        "parts_rows": sum(pq.read_metadata(f).num_rows for f in parts.glob("*.parquet")),
        "parts": (parts_before_stop, len(list(parts.glob("*.parquet")))),
    }
    rerun = cli(*args[3:], "--log-format", "json", cwd=tmp, umask=UMASK)
    again = cli(*args[3:], cwd=tmp, umask=UMASK)
    return {"out": out, "date_dir": out / DATE, "killed": after_kill, "rerun": rerun, "again": again}


def test_sigterm_releases_the_lock_keeps_parts_and_the_rerun_resumes(nights):
    k = nights["killed"]
    assert k["rc"] == EXIT_TERMINATED, k["stderr"][-2000:]
    assert k["stop_s"] < 30  # the batch in flight may finish; nothing waits for the rest of the night
    assert k["stderr"].strip().splitlines()[-1].startswith("error: stopped by SIGTERM")
    assert not k["lock"] and not k["success"] and 0 < k["parts_rows"] < len(ROWS)
    assert k["parts"] == (0, 1)  # nothing rolled yet; what had finished was written on the way out
    r = nights["rerun"]
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((nights["date_dir"] / "run.json").read_text())
    assert info["counts"]["images_resumed"] >= k["parts_rows"]
    c = info["counts"]  # images written after the last resume part are adopted (re-scored), not regenerated
    assert c["images_resumed"] + c["images_adopted"] + c["images_generated"] == len(ROWS)
    assert_invariant(nights["out"], ROWS)
    assert not (nights["date_dir"] / ".lock").exists()


def test_outputs_are_readable_as_the_umask_says(nights):
    """PNGs, part files, manifests, run.json, _SUCCESS: 0640 under umask 027 (not mkstemp's 0600); dirs 0750."""
    paths = list(nights["out"].rglob("*"))
    assert any(p.suffix == ".png" for p in paths) and (nights["date_dir"] / "_SUCCESS") in paths
    assert any(p.name == "part-0.parquet" for p in paths)  # the manifest partitions too
    wrong = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths}
    wrong = {p: m for p, m in wrong.items() if m != ("0o750" if os.path.isdir(p) else "0o640")}
    assert not wrong


def test_cron_log_is_clean_and_json_lines_parse(nights):
    killed, rerun, again = nights["killed"]["stderr"], nights["rerun"], nights["again"]
    for text in (killed, rerun.stderr, again.stderr):
        for noise in NOISE:
            assert noise not in text, (noise, text[-2000:])
    lines = rerun.stderr.strip().splitlines()
    records = [json.loads(line) for line in lines]  # every line one JSON object
    assert all(set(r) >= {"ts", "level", "logger", "msg"} for r in records)
    assert any(r["msg"].startswith("progress: ") and "(100%)" in r["msg"] for r in records)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (again.stdout + again.stderr).count("already completed") == 1


def test_log_format_is_declared_once_and_checked(monkeypatch):
    import logging

    from factory import logs

    record = logging.LogRecord("factory.job.run", logging.WARNING, "", 0, "a %s b", ("é",), None)
    assert json.loads(JsonFormatter().format(record)) | {"ts": "t"} == {
        "ts": "t",
        "level": "WARNING",
        "logger": "factory.job.run",
        "msg": "a é b",
    }
    assert check_format("json") == "json"
    monkeypatch.setattr(logs, "_format", "json")
    err = json.loads(logs.error_line("bad 'x'"))
    assert err["level"] == "ERROR" and err["logger"] == "factory.cli" and err["msg"] == "bad 'x'"
    with pytest.raises(ConfigError, match="command line --log-format: must be one of text, json, got 'xml'") as err:
        check_format("xml")
    assert err.value.exit_code == 2


@pytest.mark.slow
def test_sigterm_on_its_own_local_ray_cluster(tiny_models, tmp_path):
    """ray.init replaces the driver's SIGTERM handler (sys.exit); ours is put back, so the Ray path also exits 143
    with the lock released, and the local cluster it started is shut down."""
    skus = write_skus(tmp_path / f"{DATE}.parquet", many_rows(16), SAMPLE_SCHEMA)
    config = small_config_file(tmp_path / "c.toml", make_cfg(tiny_models, tmp_path), {"part_images": 1})
    out = tmp_path / "out"
    args = cli_args(
        "run", "--date", DATE, "--skus", str(skus), "--output", str(out), "--config", str(config),
        "--executor", "ray", "--workers", "2", "--batch-size", "2",
    )  # fmt: skip
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=cli_env({"RAY_ADDRESS": ""}), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 400
        while time.time() < deadline and not list((out / DATE / "_parts").glob("*.parquet")):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_TERMINATED, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("error: stopped by SIGTERM")
    assert not (out / DATE / ".lock").exists() and not (out / DATE / "_SUCCESS").exists()
