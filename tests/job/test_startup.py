"""Start-up accounting of run.json (`startup`): process age and the composition of its stages."""

import time

from factory.job.run import _startup, process_age_s


def test_process_age_is_this_process_age():
    age = process_age_s()
    assert age is not None and 0 < age < time.monotonic() + 1


def test_startup_adds_the_process_age_to_the_time_until_the_worker_was_ready():
    started = time.perf_counter()
    executor = {"executor": "local", "ready_at": started + 2.0, "worker_startup": {"model_load_s": 1.5}}
    s = _startup(3.0, started, executor)
    assert s == {"process_to_run_s": 3.0, "model_load_s": 1.5, "run_to_worker_ready_s": 2.0, "startup_s": 5.0}
    assert executor == {"executor": "local"}  # run.json's executor entry keeps only what describes the executor
    assert "startup_s" not in _startup(3.0, started, {"executor": "ray"})  # ray workers report no ready time
