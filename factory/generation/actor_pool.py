"""The Ray executor's dispatch loop: planned batches onto a pool of Worker actors, `depth` in flight on each, and what
the night does when an actor is lost.

A batch's outcome, as `ray.get` reports it:

- it raised inside the worker (`RayTaskError`): an environmental failure stops the night (factory.io.faults), any
  other error is a poison SKU, isolated by bisection (bisection.on_failure);
- the actor died and Ray's own restarts are used up (`ActorDiedError`; Ray restarted the process `run.max_restarts`
  times and re-ran its batches): the batch kept killing its worker, so it is bisected like a poison batch;
- the actor cannot be reached (`ActorUnavailableError`): its process is restarting, or its node is gone. Nothing
  says the batch was at fault: it goes back to the front of the queue whole, for the live actors.

A node's death surfaces as `ActorUnavailableError` once Ray's retries are spent, while Ray keeps trying to restart
the actor elsewhere; with no room anywhere, that restart (and any new actor) is never placed, and calls sent to an
actor that had not started yet wait for it with no error (a hung night). So an actor that has not started never
holds a batch: every actor is asked its node once (`__ray_call__`) and takes batches only
after that answer. As a second guard, every POLL_S the loop reads which nodes are alive (`ray.nodes()`), and an
actor whose node is dead is lost too (one Ray restarted on another node on its own still counts as on the dead
one: it is replaced, at the cost of one model load).

A lost actor is dropped: `ray.kill(no_restart=True)`, so a restart Ray would place later can neither take the
cluster's resources nor hold batches, and its other batches in flight go back to the queue whole (a batch that
loses a second actor is bisected: it may be what kills them). A replacement is started, one at a time, once the
cluster has a free slot for one (CPUs, a GPU: a node back or added) and while the night's budget of replacements
(`run.max_restarts` x workers) lasts; like every actor it takes batches only once it has started, so one that
cannot be placed never holds a batch. With batches left and no live actor and none starting (or one not started
within START_TIMEOUT_S), the night fails with one sentence: the rows delivered so far are in the resume parts and
their images in the store, so the rerun resumes and adopts them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from factory.errors import EnvironmentFault, FactoryError
from factory.generation.bisection import OnResult, next_batch, on_failure
from factory.inputs.bucketing import Batch
from factory.io.faults import environment_fault

if TYPE_CHECKING:
    from factory.generation.worker import BatchResult

log = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0  # an actor's placement + model load; a real GPU worker loads in well under this
POLL_S = 5.0  # how often the loop looks at the nodes, and at room for a replacement, while batches are in flight


class ActorPool:
    """Feeds batches to actors, `depth` at a time each; failed batches are bisected or re-queued, lost actors
    dropped and replaced while the cluster has room."""

    def __init__(
        self,
        actors: list[Any],
        new_actor: Callable[[], Any],
        batches: Iterable[Batch],
        on_result: OnResult,
        depth: int = 1,
        replacements: int = 0,
        has_room: Callable[[], bool] = lambda: True,
    ):
        self.new_actor, self.on_result, self.depth = new_actor, on_result, depth
        self.actors: list[Any] = []  # live: started, their node known
        self.replacements, self.has_room = replacements, has_room  # the night's budget; a free slot for one more
        self.queue: deque[Batch] = deque()  # split halves and re-queued batches, ahead of the rest
        self.pending = iter(batches)
        self.inflight: dict[Any, tuple[Any, Batch]] = {}
        self.starting: dict[Any, tuple[Any, float]] = {}  # an actor's node-id ref -> (actor, started at)
        self.node_of: dict[Any, str] = {}
        for actor in actors:
            self._start(actor)
        self.next_check = time.monotonic() + POLL_S
        self.dropped: set[Any] = set()
        self.requeued: Counter[str] = Counter()  # batch id -> times it went back whole after losing its actor
        self.lost = 0
        self.wanted = 0  # lost actors not replaced yet (no room in the cluster so far)
        self.fault: EnvironmentFault | None = None  # set: no new batches; the night fails once in-flight ones end

    def submit(self, actor: Any) -> None:
        batch = next_batch(self.queue, self.pending) if self.fault is None else None
        if batch is not None:
            self.inflight[actor.process.remote(batch)] = (actor, batch)

    def drain(self) -> None:
        import ray

        self._fill()
        while self.inflight or (self.starting and self._has_work()):
            ready, _ = ray.wait([*self.inflight, *self.starting], num_returns=1, timeout=POLL_S)
            for ref in ready:
                if ref in self.starting:
                    self._started(ref)
                else:
                    actor, batch = self.inflight.pop(ref)
                    result = self._collect(ref, actor, batch)
                    if result is not None:
                        self._deliver(result)
            self._check_nodes()
            self._check_starting()
            self._replace()
            self._fill()
        if self.fault is not None:
            raise self.fault
        if self._has_work():  # nothing in flight, nothing starting, batches left: no actor is left to take them
            raise FactoryError(
                f"every Ray worker was lost ({self.lost} lost; no room in the cluster for a replacement, or "
                "run.max_restarts replacements used up); the night stopped: rerun when the cluster has its nodes "
                "back (finished images are kept)"
            )

    def _has_work(self) -> bool:
        """Batches left to dispatch (peeking at the plan builds one batch early into the queue; nothing is lost)."""
        if self.fault is not None:
            return False
        if not self.queue:
            batch = next(self.pending, None)
            if batch is None:
                return False
            self.queue.append(batch)
        return True

    def _fill(self) -> None:
        """Every live actor `depth` batches deep (split halves may have refilled the queue after some went idle)."""
        busy = Counter(v[0] for v in self.inflight.values())
        for actor in self.actors:
            for _ in range(self.depth - busy[actor]):
                self.submit(actor)

    def _deliver(self, result: BatchResult) -> None:
        try:
            self.on_result(result)
        except EnvironmentFault as fault:  # the driver's own write (a resume part) failed: stop the same way
            self._stop(fault)

    def _stop(self, fault: EnvironmentFault) -> None:
        if self.fault is None:
            log.error("stopping the night: %s (%d batches in flight finish first)", fault, len(self.inflight))
            self.fault = fault

    def _collect(self, ref: Any, actor: Any, batch: Batch) -> BatchResult | None:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the batch raised inside the worker
            fault = environment_fault(exc)
            if fault is not None:
                self._stop(fault)
                return None
            return on_failure(batch, ray_error_line(exc), self.queue)
        except ray.exceptions.RayActorError as exc:
            if is_init_failure(exc):
                raise FactoryError(f"a Ray worker could not start: {ray_error_line(exc)}") from exc
            reason = ray_error_line(exc)
            if actor not in self.dropped:  # else dropped for another batch's failure: this one did nothing wrong
                self._drop(actor, reason)
                if not isinstance(exc, ray.exceptions.ActorUnavailableError):  # it kept killing its worker
                    return on_failure(batch, f"worker died: {reason}", self.queue)
            return self._requeue(batch, reason)

    def _requeue(self, batch: Batch, reason: str) -> BatchResult | None:
        """The batch's actor went away: the batch goes back whole, to the front, for the live actors; a batch that
        loses a second actor is bisected (it may be what kills them)."""
        self.requeued[batch.batch_id] += 1
        if self.requeued[batch.batch_id] > 1:
            return on_failure(batch, f"worker lost twice: {reason}", self.queue)
        self.queue.appendleft(batch)
        return None

    def _check_nodes(self) -> None:
        """Drop the actors whose node is dead (a restart Ray cannot place would hold their batches forever)."""
        import ray

        if time.monotonic() < self.next_check:
            return
        self.next_check = time.monotonic() + POLL_S
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        for actor in list(self.actors):
            if self.node_of[actor] not in alive:
                self._drop(actor, f"its node {self.node_of[actor][:12]} is gone")

    def _drop(self, actor: Any, reason: str) -> None:
        import ray

        self.lost += 1
        self.dropped.add(actor)
        self.actors.remove(actor)
        ray.kill(actor, no_restart=True)
        mine = [ref for ref, (owner, _) in self.inflight.items() if owner is actor]
        log.warning("worker lost (%s); its %d batch(es) in flight go back to the queue", reason, len(mine))
        for ref in mine:
            result = self._requeue(self.inflight.pop(ref)[1], reason)
            if result is not None:
                self._deliver(result)
        self.wanted += 1

    def _replace(self) -> None:
        """One replacement at a time, as soon as the cluster has room for it (a node back, a node added)."""
        if self.wanted and self.replacements and not self.starting and self._has_work() and self.has_room():
            self.wanted -= 1
            self.replacements -= 1
            self._start(self.new_actor())
            log.warning("starting a replacement worker (%d replacement(s) left)", self.replacements)

    def _start(self, actor: Any) -> None:
        """An actor takes batches once it is created (models loaded) and its node is known."""
        self.starting[actor.__ray_call__.remote(_node_id)] = (actor, time.monotonic())

    def _started(self, ref: Any) -> None:
        import ray

        actor, _ = self.starting.pop(ref)
        try:
            self.node_of[actor] = ray.get(ref)
        except ray.exceptions.RayError as exc:
            if is_init_failure(exc):
                raise FactoryError(f"a Ray worker could not start: {ray_error_line(exc)}") from exc
            self.lost += 1
            self.wanted += 1
            log.warning("a worker was lost while starting: %s", ray_error_line(exc))
            return
        self.actors.append(actor)

    def _check_starting(self) -> None:
        """An actor not started in START_TIMEOUT_S (it cannot be placed) is given up once no other actor is live."""
        import ray

        for ref, (actor, t0) in list(self.starting.items()):
            if not self.actors and time.monotonic() - t0 > START_TIMEOUT_S:
                del self.starting[ref]
                self.lost += 1
                ray.kill(actor, no_restart=True)
                log.warning("a worker was not ready after %.0f s; given up", START_TIMEOUT_S)


def _node_id(_actor: Any) -> str:
    """Run on the actor (`__ray_call__`): the id of the node it lives on."""
    import ray

    return ray.get_runtime_context().get_node_id()


def ray_error_line(exc: BaseException) -> str:
    """The innermost exception line of a Ray error (Ray wraps the worker's traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(exc)):
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errs = [ln for ln in lines if "Error" in ln.split(":")[0]]
    return (errs[-1] if errs else lines[-1] if lines else type(exc).__name__)[:500]


def is_init_failure(exc: BaseException) -> bool:
    text = str(exc)
    return "__init__" in text or "creation task" in text
