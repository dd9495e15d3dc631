"""`--engine ray`: a pool of worker actors on a Ray cluster, each holding the job's model (or reward).

The driver (the `infalign` process) keeps everything that touches the artifact folder: the output lock, the
ChunkStore, the manifest. Workers only compute: each loads the job once (`job.load()`, its model on its GPU),
then takes chunks one at a time; the driver writes each chunk as it comes back and sends that worker the next.
So a chunk written is never redone (the stage skips finished chunks before it asks for any), and killing the
driver loses only the chunks in flight: Ray ends a driver's actors with it, and the same command resumes.

A worker that dies (its process killed, its node lost, out of memory) fails its pending call with an actor
error: its chunk goes back to the front of the queue for another worker and a replacement worker is started.
A chunk that has lost MAX_ATTEMPTS workers in a row, or workers that keep dying while they load, end the run
with one line naming it: retrying would not help. An error the job itself raises (a bad reward, a model that
does not load) is the same error as with `--engine local`, raised at once and not retried.

Sessions: `--ray-address` (or $RAY_ADDRESS, which `ray job submit` sets) names a running cluster; without it the
command starts a local Ray for its run and shuts it down at the end. A session that is already open (a caller's
own `ray.init`) is reused and left open; inside `shared_session()` (build: the reward check and both stages) the
first engine that starts opens the session and it stays open until the shared block ends.

Tests end a worker from inside with $INFALIGN_WORKER_FAULT = "die-in-chunk:I:ARMED" (`_fault`, read by workers
started after it is set): while the file ARMED exists, the worker that computes chunk I removes it and SIGKILLs
itself after computing the chunk, before returning it. One worker dies; the chunk's retry finds no file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

from ..core.errors import InfalignError

__all__ = ["RayEngine", "ray_session", "shared_session", "import_ray", "MAX_ATTEMPTS", "WORKER_FAULT_ENV"]

log = logging.getLogger("offline_infalign")
MAX_ATTEMPTS = 3  # a chunk whose worker dies this many times in a row is an error, not an endless retry
WORKER_FAULT_ENV = "INFALIGN_WORKER_FAULT"
INSTALL = "pip install 'offline-infalign[ray]'"
_SESSION: dict[str, Any] = {}  # what ray_session opened: {"address": ..., "local": bool}
_SHARED: list[contextlib.ExitStack] = []  # open shared_session blocks, innermost last


def import_ray():
    """The `ray` module, or one line saying what to install (Ray is an optional extra)."""
    try:
        import ray
    except ImportError:
        raise InfalignError(f"--engine ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def ray_session(cfg):
    """A Ray session for the run: the cluster at `cfg.ray_address` (else $RAY_ADDRESS), or a local Ray started
    here and shut down at the end; an already initialized session is reused and left open."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except Exception as exc:  # Ray raises ConnectionError, ValueError, RuntimeError, ... for a bad address
        raise InfalignError(f"--engine ray: cannot start or reach Ray at {address!r}: {_one_line(exc)}") from None
    _SESSION.update(address=address, local=address == "local")
    try:
        yield ray
    finally:
        _SESSION.clear()
        ray.shutdown()


@contextlib.contextmanager
def shared_session():
    """Engines started inside share one Ray session, opened by the first of them (none: Ray is never started)."""
    stack = contextlib.ExitStack()
    _SHARED.append(stack)
    try:
        yield
    finally:
        _SHARED.remove(stack)
        stack.close()


class _Worker:
    """The actor: one job, loaded once, then one chunk per call."""

    def __init__(self, job):
        import ray

        # Ray sets CUDA_VISIBLE_DEVICES to the GPUs a worker reserved, but leaves it alone for a worker that
        # reserved none, which would then put its model on GPU 0 beside every other worker ("cuda if available").
        if not ray.get_gpu_ids():
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        self.job = job

    def load(self):
        return _plain_errors(self.job.load)

    def run(self, index: int, payload):
        result = _plain_errors(self.job.run, payload, None)
        _fault(index)
        return result


def _plain_errors(fn, *args):
    """The job's InfalignError with its message only: subclasses with their own constructor arguments (e.g.
    scoring.RewardCallError) do not unpickle on the driver, and the message is all the driver reports."""
    try:
        return fn(*args)
    except InfalignError as exc:
        raise InfalignError(str(exc)) from None


def _fault(index: int) -> None:
    what, _, rest = os.environ.get(WORKER_FAULT_ENV, "").partition(":")
    chunk, _, armed = rest.partition(":")
    if what != "die-in-chunk" or chunk != str(index) or not armed:
        return
    try:
        os.unlink(armed)  # atomic: one worker disarms it and dies, the retry finds nothing
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


class _Died:
    def __init__(self, exc: BaseException):
        self.reason = _one_line(exc, 200)


class RayEngine:
    """`cfg.workers` actors (or `workers`), each reserving cpus_per_worker CPUs and gpus_per_worker GPUs."""

    def __init__(self, cfg, job, workers: int | None = None):
        self.cfg, self.job = cfg, job
        self.size = int(workers or cfg.workers)
        self.ray = None
        self._stack = contextlib.ExitStack()
        self.pending: dict[Any, tuple[str, Any, int | None, int]] = {}  # ref -> (load|run, actor, index, prompts)
        self.idle: deque = deque()
        self.actors: list = []
        self.load_deaths = 0

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc) -> None:
        with self._stack:  # ends the session last, if this engine opened it
            for actor in self.actors:
                with contextlib.suppress(Exception):
                    self.ray.kill(actor, no_restart=True)
            self.actors.clear()

    # -- workers ------------------------------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Start the workers; returns the facts of the first one loaded (the others go on loading)."""
        owner = _SHARED[-1] if _SHARED and not import_ray().is_initialized() else self._stack
        self.ray = owner.enter_context(ray_session(self.cfg))
        self._check_resources()
        self._actor_class = self.ray.remote(_Worker).options(
            num_cpus=self.cfg.cpus_per_worker, num_gpus=self.cfg.gpus_per_worker, max_restarts=0,
            max_task_retries=0)  # retries are ours: a lost chunk may go to another worker
        log.info("ray: %d workers (%g CPU, %g GPU each) on %s", self.size, self.cfg.cpus_per_worker,
                 self.cfg.gpus_per_worker, _SESSION.get("address", "the open session"))
        for _ in range(self.size):
            self._spawn()
        while True:
            kind, actor, _, _, out = self._next()  # only loads are pending yet
            if isinstance(out, _Died):
                self._load_died(out)
                continue
            self.idle.append(actor)
            return out

    def _spawn(self) -> None:
        actor = self._actor_class.remote(self.job)
        self.actors.append(actor)
        self.pending[actor.load.remote()] = ("load", actor, None, 0)

    def _load_died(self, died: _Died) -> None:
        self.load_deaths += 1
        if self.load_deaths >= MAX_ATTEMPTS * self.size:
            raise InfalignError(f"--engine ray: {self.load_deaths} workers died while loading the model (the "
                                f"last: {died.reason}); check the workers' memory and --gpus-per-worker")
        log.warning("ray: a worker died while loading (%s); starting another", died.reason)
        self._spawn()

    def _check_resources(self) -> None:
        """A local Ray started here that cannot hold the workers is refused; a cluster may still grow (its
        autoscaler), so there it is a warning."""
        total = self.ray.cluster_resources()
        where = "local Ray started for this run" if _SESSION.get("local") else "Ray cluster"
        for kind, flag, per in (("CPU", "--cpus-per-worker", self.cfg.cpus_per_worker),
                                ("GPU", "--gpus-per-worker", self.cfg.gpus_per_worker)):
            have = float(total.get(kind, 0.0))
            if per <= 0 or self.size * per <= have + 1e-9:
                continue
            text = (f"--engine ray: --workers {self.size} x {flag} {per:g} needs {self.size * per:g} {kind}s; the "
                    f"{where} has {have:g}")
            if _SESSION.get("local"):
                raise InfalignError(text + ": lower --workers or " + flag)
            log.warning("%s; the workers that do not fit wait for the cluster to grow", text)

    # -- chunks -------------------------------------------------------------------------------------------------
    def _next(self):
        """Wait for one pending call: (kind, actor, index, prompts, result or _Died)."""
        ray = self.ray
        [ref], _ = ray.wait(list(self.pending), num_returns=1)
        kind, actor, index, count = self.pending.pop(ref)
        try:
            return kind, actor, index, count, ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the job raised: the same error as in one process
            cause = getattr(exc, "cause", None)
            if isinstance(cause, InfalignError):
                raise InfalignError(str(cause)) from None
            raise
        except (ray.exceptions.RayActorError, getattr(ray.exceptions, "ActorUnavailableError", ())) as exc:
            if getattr(exc, "actor_init_failed", False):  # it could not even start: every replacement would fail
                last = [line.strip() for line in str(exc).splitlines() if line.strip()][-1]
                raise InfalignError(f"--engine ray: a worker could not start ({last}); every node needs "
                                    "offline-infalign installed at the driver's version, and what the model and "
                                    "reward name importable") from None
            with contextlib.suppress(ValueError):
                self.actors.remove(actor)
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
            return kind, actor, index, count, _Died(exc)

    def _dispatch(self, queue: deque, payload: Callable[[int], Any]) -> None:
        while self.idle and queue:
            index = queue.popleft()
            data = payload(index)
            actor = self.idle.popleft()
            self.pending[actor.run.remote(index, data)] = ("run", actor, index, self.job.count(data))

    def map(self, indices, payload: Callable[[int], Any], bar=None) -> Iterator[tuple[int, Any]]:
        queue = deque(indices)
        lost: Counter = Counter()
        while queue or any(kind == "run" for kind, *_ in self.pending.values()):
            self._dispatch(queue, payload)
            kind, actor, index, count, out = self._next()
            if kind == "load":
                if isinstance(out, _Died):
                    self._load_died(out)
                else:
                    self.idle.append(actor)
                continue
            if isinstance(out, _Died):
                lost[index] += 1
                if lost[index] >= MAX_ATTEMPTS:
                    raise InfalignError(f"--engine ray: chunk {index} lost its worker {lost[index]} times (the last: "
                                        f"{out.reason}); check the workers' memory, or run that chunk with "
                                        "--engine local to see its error")
                log.warning("ray: the worker computing chunk %d died (%s); retrying the chunk on another worker",
                            index, out.reason)
                queue.appendleft(index)
                self._spawn()
                continue
            self.idle.append(actor)
            self._dispatch(queue, payload)  # the worker goes on while the driver writes this chunk
            if bar is not None:
                bar.update(count)
            yield index, out
