"""Fixtures of the operations tests: real Pushgateway + Prometheus servers, and a quick (null-pipeline) night."""

from __future__ import annotations

import dataclasses

import pytest

from factory.config import FactoryConfig
from factory.modes import NULL_PIPELINE
from tests.conftest import with_run
from tests.prom_servers import PromStack, missing_binaries


@pytest.fixture(scope="session")
def prom_stack(tmp_path_factory):
    """Debian's prometheus-pushgateway and prometheus on free loopback ports, Prometheus scraping every second."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: run `make prometheus` (installs them with root apt)")
    stack = PromStack(tmp_path_factory.mktemp("prometheus"))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def null_night(cfg: FactoryConfig, **sections) -> FactoryConfig:
    """The tests' config with no model (every image passes the null gate: a night in seconds) and `sections`
    (e.g. metrics={...}) replaced key by key."""
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pipeline=NULL_PIPELINE))
    cfg = with_run(cfg, executor="local", batch_size=4)
    for name, values in sections.items():
        cfg = dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **values)})
    return cfg
