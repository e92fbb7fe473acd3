"""A worker's image writes: each PNG stamped (factory.io.provenance) and put to the output store on a small thread
pool, so encoding and uploads overlap repair and each other instead of holding up the generation thread."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from factory.inputs.bucketing import Task
from factory.io.layout import image_key
from factory.io.provenance import Stamper
from factory.io.storage import Store

LOCAL_WRITER_THREADS = 2  # PNG encoding (zlib releases the GIL) and file writes overlap repair and each other
# An object-store PUT waits on the network (~10 ms to a nearby server), not on this CPU: a batch's images go up
# together. A batch waits for its own writes, so more threads than images per batch would never be used.
OBJECT_STORE_WRITER_THREADS = 16


def writer_threads(store: Store, configured: int = 0) -> int:
    """`storage.writer_threads`, or (0) the default for the kind of store."""
    if configured:
        return configured
    return LOCAL_WRITER_THREADS if store.kind == "local" else OBJECT_STORE_WRITER_THREADS


class ImageWriter:
    def __init__(self, store: Store, date: str, stamper: Stamper, threads: int = 0):
        self.store, self.date, self.stamper = store, date, stamper
        self.threads = writer_threads(store, threads)
        self._pool: ThreadPoolExecutor | None = None  # started on the first write
        self._start = threading.Lock()  # two batches may submit at once (a repair outside the host stage)

    def submit(self, task: Task, image: Any, generated: bool = False) -> Future:
        """Write one image in the background; the future's result is (image key, produce_id). `generated`: the
        pipeline's pixels as they are (the PNG then carries the cache key a rerun adopts it by)."""
        with self._start:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="png-writer")
        return self._pool.submit(self._write, task, image, generated)

    def _write(self, task: Task, image: Any, generated: bool = False) -> tuple[str, str]:
        """Stamp (labels, parameters, pixel hash, optional C2PA signature) and store one PNG."""
        key = image_key(self.date, task.image_path)  # relative to the output root, as the manifests record it
        stamped = self.stamper.png(image, task, generated)
        self.store.put_bytes(key, stamped.data, durability="none")
        return key, stamped.produce_id
