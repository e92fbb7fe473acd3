"""Real Prometheus servers for the tests: Debian's `prometheus-pushgateway` and `prometheus` on loopback.

Free ports chosen and passed explicitly, data in a private directory, Prometheus scraping the Pushgateway every
second (honor_labels, as a Pushgateway scrape must). `make prometheus` installs both where root apt is usable.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.s3_server import _die_with_parent, _free_ports

BINARIES = ("prometheus-pushgateway", "prometheus")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


@dataclass
class PromStack:
    workdir: Path
    gateway_port: int = 0
    prom_port: int = 0

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    def start(self, timeout: float = 60) -> None:
        self.gateway_port, self.prom_port = _free_ports(2)
        self.procs: list[subprocess.Popen] = []
        gw_args = ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{self.gateway_port}"]
        gw_args.append(f"--persistence.file={self.workdir / 'pushgateway.data'}")  # Debian's default: /var/lib
        self._spawn(gw_args, "pushgateway.log")
        config = self.workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: pushgateway\n    honor_labels: true\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{self.gateway_port}']\n"
        )
        self._spawn(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.prom_port}",
            ],
            "prometheus.log",
        )
        self._wait(f"{self.gateway}/-/ready", timeout)
        self._wait(f"{self.prometheus}/-/ready", timeout)

    def _spawn(self, args: list[str], log_name: str) -> None:
        with open(self.workdir / log_name, "ab") as log:
            proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent
            )
        self.procs.append(proc)

    def _wait(self, url: str, timeout: float) -> None:
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                break
            try:
                _get(url)
                return
            except OSError as exc:
                last = str(exc)
                time.sleep(0.3)
        logs = "".join(p.read_text(errors="replace")[-1500:] for p in sorted(self.workdir.glob("*.log")))
        raise RuntimeError(f"{url} did not become ready ({last}); logs:\n{logs}")

    def query(self, promql: str) -> list[dict]:
        """Instant-query results: [{"metric": {labels}, "value": [ts, "v"]}, ...]."""
        body = json.loads(_get(f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, promql: str, check, timeout: float = 30) -> list[dict]:
        """Poll the query until `check(results)` holds (Prometheus scrapes the gateway every second)."""
        deadline = time.monotonic() + timeout
        results: list[dict] = []
        while time.monotonic() < deadline:
            results = self.query(promql)
            if check(results):
                return results
            time.sleep(0.5)
        raise AssertionError(f"{promql}: still {results} after {timeout}s")

    def stop(self) -> None:
        for p in getattr(self, "procs", []):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
