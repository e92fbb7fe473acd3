"""Fixtures of the deployment tests: a private two-node loopback Ray cluster (tests/jobs/ray_cluster.py)."""

from __future__ import annotations

import pytest

from tests.jobs.ray_cluster import LoopbackCluster


@pytest.fixture
def two_nodes():
    """A head and a second node with one CPU each: two 1-CPU workers fit only while both nodes live. Stopped
    (every process it started) whatever the test does."""
    cluster = LoopbackCluster()
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_node(num_cpus=1)
        cluster.wait_for_cpus(2)
        yield cluster
    finally:
        cluster.stop()
