"""A private multi-node Ray cluster on loopback, started with the real `ray start` CLI (for tests/jobs/).

Every node is a `ray start --block` process in its own session with its own temp dir under one short private
directory (Unix socket paths must stay under 107 bytes), explicit loopback ports, token auth off. `stop()` ends
only what this object started: each node's process group (`ray start --block` tears its raylet, GCS and workers
down on SIGTERM), then any process whose command line names the private directory. Never `ray stop`: that kills
every Ray process on the machine, other users' clusters included.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def ray_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # never join someone else's cluster
    return {**env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


class LoopbackCluster:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="adf-ray-", dir="/tmp"))
        self.nodes: list[subprocess.Popen] = []
        self.gcs_port, self.dashboard_port = free_ports(2)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _node_ports(self) -> list[str]:
        while True:  # the worker port range must not hold a port given to another component (ray start refuses)
            manager, objects, agent, agent_grpc, metrics, runtime_env, low = free_ports(7)
            others = (manager, objects, agent, agent_grpc, metrics, runtime_env, self.gcs_port, self.dashboard_port)
            if not any(low <= p <= low + 200 for p in others):
                break
        return [
            f"--node-manager-port={manager}",
            f"--object-manager-port={objects}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--min-worker-port={low}",
            f"--max-worker-port={low + 200}",  # a range above an ephemeral port: rarely taken
        ]

    def start_head(self, num_cpus: int) -> None:
        (client,) = free_ports(1)
        head = [
            "--head",
            f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={client}",
        ]
        self._start("head", [*head, *self._node_ports()], num_cpus)

    def add_node(self, num_cpus: int) -> None:
        self._start(f"node{len(self.nodes)}", [f"--address=127.0.0.1:{self.gcs_port}", *self._node_ports()], num_cpus)

    def _start(self, name: str, args: list[str], num_cpus: int, timeout: float = 180) -> None:
        log = self.root / f"{name}.log"
        cmd = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--num-gpus=0"]
        cmd += [f"--temp-dir={self.root / name}", "--object-store-memory=100000000", "--disable-usage-stats", *args]
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ray_env(), start_new_session=True)
        self.nodes.append(proc)
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start {name} did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def wait_for_cpus(self, total: int, timeout: float = 120) -> None:
        """Until the GCS reports `total` CPUs (every node registered)."""
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run(
                [RAY, "status", f"--address=127.0.0.1:{self.gcs_port}"],
                capture_output=True,
                text=True,
                env=ray_env(),
                timeout=60,
            ).stdout
            if f"/{total}.0 CPU" in out:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster never reached {total} CPUs:\n{out}")
            time.sleep(1)

    def submit(self, working_dir: Path, *entrypoint: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir` and wait for the job; stdout carries the job's logs."""
        cmd = [RAY, "job", "submit", f"--address={self.dashboard}", f"--working-dir={working_dir}", "--", *entrypoint]
        return subprocess.run(cmd, capture_output=True, text=True, env=ray_env(), timeout=timeout)

    def stop(self) -> None:
        for proc in self.nodes:
            _signal_group(proc, signal.SIGTERM)
        for proc in self.nodes:
            try:
                proc.wait(timeout=10)  # `ray start --block` often outlives a longer grace; killed next
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
        for proc in self.nodes:
            _signal_group(proc, signal.SIGKILL)  # workers left in a node's group
        _kill_naming(str(self.root))
        shutil.rmtree(self.root, ignore_errors=True)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the node's own session (start_new_session): only processes it started
    except ProcessLookupError:
        pass


def _kill_naming(marker: str) -> None:
    """SIGKILL processes whose command line names `marker` (this cluster's private directory), by pid."""
    me = os.getpid()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.info["pid"] != me and any(marker in part for part in p.info["cmdline"] or ()):
                p.kill()
        except psutil.Error:
            pass
