"""The Ray cluster a night runs on: join `run.ray_address` / $RAY_ADDRESS, or start a private local one.

Joining never hangs: `ray.init` on an address nobody answers blocks in Ray's C++ client for many minutes (retrying
30 s GCS timeouts) while the driver holds the date's lock. So the address is probed first (TCP connect, then an
HTTP/2 preface a gRPC server such as Ray's GCS answers at once), and `ray.init` itself runs under a deadline.
Starting a local cluster passes `address="local"`: with no address, `ray.init` would join whatever cluster
`<ray temp dir>/ray_current_cluster` names, a file an earlier `ray start` leaves behind (then refusing our
`num_cpus`). The local cluster has one CPU per core, and a pool that does not fit is refused before anything runs.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from factory.config import FactoryConfig
from factory.errors import ConfigError, FactoryError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0  # TCP connect + first gRPC bytes
INIT_TIMEOUT_S = 40.0  # ray.init after a successful probe; probe + init stay under a minute
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def address_of(cfg: FactoryConfig) -> tuple[str, str]:
    """The cluster to join ("" = start a local one) and where that came from, for messages."""
    if cfg.run.ray_address:
        return cfg.run.ray_address, "--ray-address / run.ray_address"
    return os.environ.get("RAY_ADDRESS", "").strip(), "RAY_ADDRESS"


def local_cpus() -> int:
    return os.cpu_count() or 1


def check_capacity(cfg: FactoryConfig) -> None:
    """Refuse, before the night starts, a pool a local cluster cannot hold (its actors would wait forever)."""
    if cfg.run.executor != "ray" or address_of(cfg)[0]:
        return  # a joined cluster's CPUs are checked once it is joined (RayExecutor)
    import ray

    if ray.is_initialized():
        return  # this process joined one already (a notebook, the tests' session cluster)
    need, have = cfg.run.workers * cfg.run.cpus_per_worker, local_cpus()
    if need > have:
        raise ConfigError(
            f"run.workers ({cfg.run.workers}) x run.cpus_per_worker ({cfg.run.cpus_per_worker}) needs {need} CPUs "
            f"but the local Ray cluster has {have} (one per core); lower --workers, or join a larger cluster "
            "with RAY_ADDRESS"
        )


def connect(cfg: FactoryConfig) -> bool:
    """Join or start the cluster (no-op if this process already has one). Returns True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address, source = address_of(cfg)
    forward = logging.getLogger("factory").isEnabledFor(logging.DEBUG)  # worker output in the log: --verbose
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": forward}
    if address:
        probe(_resolve_auto(address, source), source)
        _join_with_deadline(address, source, **kwargs)
    else:
        check_capacity(cfg)
        _start_local(num_cpus=local_cpus(), include_dashboard=False, **kwargs)
    return not address


def probe(address: str, source: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail in seconds, with one sentence, when nothing that speaks gRPC answers at `address`."""
    host, port = _host_port(address, source)
    what = f"the Ray cluster at {address} (from {source})"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise FactoryError(f"cannot reach {what}: {exc.strerror or exc}; start it, or unset {source}") from None
    with sock:
        try:
            sock.sendall(_H2_PREFACE)
            reply = sock.recv(9)
        except OSError:
            reply = b""
    if len(reply) < 4 or reply[3] != 0x04:  # a gRPC server answers the preface with a SETTINGS frame
        raise FactoryError(f"{what} does not answer as a Ray cluster (no gRPC reply in {timeout:g} s)")


def _resolve_auto(address: str, source: str) -> str:
    """ "auto" asks Ray for the cluster this machine last started (`ray_current_cluster`); others are as given."""
    if address != "auto":
        return address
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError) as exc:
        raise FactoryError(f"{source}=auto: {str(exc).splitlines()[0]}") from None
    if not found:
        raise FactoryError(f"{source}=auto: no Ray cluster was started on this machine (ray start)")
    return found


def _host_port(address: str, source: str) -> tuple[str, int]:
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{source}: {address!r} is not a Ray address (host:port, or ray://host:port)")
    return host.strip("[]"), int(port)


def _start_local(**kwargs: Any) -> None:
    """`ray.init` of a new local cluster (in the main thread: Ray installs its shutdown hooks there).

    ray.init replaces the process's SIGTERM handler (with sys.exit); the driver's own (factory/cli/options.py) is put
    back, so SIGTERM still ends the night like a crash that releases the lock (and shuts this cluster down)."""
    import ray

    from factory import logs

    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address="local", **kwargs)
    finally:
        logs.adopt("ray")
        if threading.current_thread() is threading.main_thread() and sigterm not in (None, signal.SIG_DFL):
            signal.signal(signal.SIGTERM, sigterm)


def _join_with_deadline(address: str, source: str, timeout: float = INIT_TIMEOUT_S, **kwargs: Any) -> None:
    """`ray.init` on an existing cluster in a helper thread, so one that stops answering mid-handshake cannot
    hold the night (the main thread gives up after `timeout`; the daemon thread dies with the process)."""
    import ray

    from factory import logs

    errors: list[BaseException] = []

    def init() -> None:
        try:
            ray.init(address=address, **kwargs)
        except BaseException as exc:  # reported by the waiting thread
            errors.append(exc)

    logging.getLogger("ray._private.worker").addFilter(_not_main_thread_note)
    thread = threading.Thread(target=init, name="ray-init", daemon=True)
    t0 = time.monotonic()
    thread.start()
    thread.join(timeout)
    logs.adopt("ray")
    if thread.is_alive():
        raise FactoryError(
            f"could not connect to the Ray cluster at {address} (from {source}) within {time.monotonic() - t0:.0f} s"
        )
    if errors:
        exc = errors[0]
        raise FactoryError(f"could not join the Ray cluster at {address} (from {source}): {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def _not_main_thread_note(record: logging.LogRecord) -> bool:
    """Drop Ray's note that it set no SIGTERM handler from a helper thread: that is the point of the thread."""
    return "SIGTERM handler is not set" not in record.getMessage()
