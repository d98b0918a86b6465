"""Where a sweep's jobs run: in this process, on a local process pool, or on a Ray cluster.

A job is a continuation chain (the depths of one seed, in increasing order: each starts from the
one before) or a single unit, or a 2×-budget rerun. Whatever runs it, each run folder has one
writer, and the driver rebuilds results.csv from the finished run folders.

- ``serial``: in this process (any trainer, e.g. a test's).
- ``local``: a ``spawn`` process pool, one single-threaded worker per core; on Linux each worker
  dies with the driver (PR_SET_PDEATHSIG), so a killed sweep leaves no orphan writing a folder
  that the resumed sweep also writes. A worker that dies (a signal, the out-of-memory killer)
  becomes a failed row of the unit it was training, with the cause; the pool is rebuilt and the
  sweep goes on; a unit that killed its worker MAX_WORKER_DEATHS times is not retried.
- ``ray``: each job is a Ray task; the run folders it needs travel to the worker as bytes and
  its results come back to the driver, which writes them, so workers need no shared disk. An
  address that does not answer as Ray (gRPC) within RAY_CONNECT_TIMEOUT_S, and a request for
  resources the cluster does not have, are one-line errors before anything is written.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pickle
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

BACKENDS = ("local", "ray")
RAY_CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Job:
    """``kind`` "chain" (``depths`` of ``seed`` in order) or "budget" (the 2× rerun of one
    depth); ``folders`` are the run folders (relative to the sweep folder) it reads and writes."""

    kind: str
    seed: int
    depths: tuple[int, ...]

    def folders(self) -> list[str]:
        if self.kind == "budget":
            (d,) = self.depths
            return [f"runs/L{d}-s{self.seed}", f"budget2x/runs/L{d}-s{self.seed}"]
        # a chain also reads the finished shallower runs its first unit may continue from
        return [f"runs/L{d}-s{self.seed}" for d in self.depths]


@dataclass
class Context:
    """Everything a worker needs to run a job (picklable)."""

    preset: Any
    overrides: dict[str, Any]
    out: Path
    data: Any = None
    trainer: Callable[..., Any] | None = None
    progress: bool = False
    extra_folders: list[str] = field(default_factory=list)
    preloaded: Any = None  # the first seed's data, already loaded (serial executor only)


def default_workers() -> int:
    """The number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: one unit's outcome in a job: (depth, seed, trained, the row when it could not be written)
Outcome = tuple[int, int, bool, dict[str, Any] | None]


def run_job(job: Job, ctx: Context, after_unit: Callable[[], None] | None = None) -> list[Outcome]:
    """Run ``job`` in this process; returns one :data:`Outcome` per unit. ``after_unit`` is
    called as each unit finishes."""
    from deepnet import train
    from deepnet.io import CorruptSourceError
    from reduction.sweep import DataCache, budget_unit, discard_source, run_chain

    trainer = ctx.trainer or train
    data = DataCache(ctx.preset, ctx.overrides, ctx.data, ctx.preloaded)
    if job.kind == "budget":
        (depth,) = job.depths
        try:
            did = budget_unit(
                ctx.preset, depth, job.seed, ctx.out, data, ctx.overrides, ctx.progress, trainer
            )
        except CorruptSourceError as err:  # the 1x run it starts from lost its checkpoint
            discard_source(err, ctx.out)  # redone by the next sweep; this check is "missing"
            did = False
        return [(depth, job.seed, did, None)]
    preset = replace(ctx.preset, depths=job.depths)
    out: list[Outcome] = []
    for depth, did, unsaved in run_chain(
        preset, job.seed, ctx.out, data.get(job.seed), ctx.overrides, ctx.progress, trainer
    ):
        out.append((depth, job.seed, did, unsaved))
        if after_unit is not None:
            after_unit()
    return out


# ------------------------------------------------------------------------------------ local


def _worker_init() -> None:
    """Single-threaded torch, and die with the driver (Linux) instead of writing on as an orphan."""
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the driver died before prctl took effect
        os._exit(1)


def _check_picklable(ctx: Context) -> None:
    try:
        pickle.dumps(ctx)
    except Exception as err:
        raise ValueError(
            f"workers > 1 need a picklable sweep (trainer, data): {err}; use workers=1"
        ) from None


class Executor:
    """Runs jobs and calls ``on_done(job, result)`` as each finishes; ``poll()`` is called about
    once a second while jobs run (progress, results.csv). Rows the executor itself records but
    could not write (a dead worker's unit in an unwritable folder) wait in ``lost_rows``."""

    serial = False

    def __init__(self) -> None:
        self.lost_rows: list[dict[str, Any]] = []

    def run(
        self,
        jobs: Sequence[Job],
        ctx: Context,
        on_done: Callable[[Job, list[Outcome]], Sequence[Job]],
        poll: Callable[[], None],
    ) -> None:
        raise NotImplementedError

    def check_data(self, preset: Any, overrides: dict[str, Any]) -> Any:
        """Load the sweep's data where the units will load it (ValueError, one line, when it
        cannot be); returns it when it was loaded in this process."""
        from reduction.sweep import check_sweep_data

        return check_sweep_data(preset, overrides)

    def take_lost_rows(self) -> list[dict[str, Any]]:
        rows, self.lost_rows = self.lost_rows, []
        return rows

    def close(self) -> None:
        """Release what the executor holds (a Ray connection it opened)."""


class SerialExecutor(Executor):
    serial = True

    def run(self, jobs, ctx, on_done, poll):  # type: ignore[override]
        queue = list(jobs)
        while queue:
            job = queue.pop(0)
            result = run_job(job, ctx, after_unit=poll)
            poll()
            queue.extend(on_done(job, result))


#: pool breaks in a row that no unit can be blamed for (workers dying outside any unit) before
#: the sweep gives up
MAX_UNEXPLAINED_BREAKS = 3


def describe_exit(code: int | None) -> str:
    """How a worker process ended, in words (``Process.exitcode``: −N = killed by signal N)."""
    if code is None:
        return "it vanished"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        oom = " (as the kernel's out-of-memory killer does)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{oom}"
    return f"it exited with status {code}"


class PoolExecutor(Executor):
    """A ``spawn`` process pool. When a worker dies, the pool breaks and every job on it fails
    with BrokenProcessPool: the unit the dead worker was training (known from the ``.running``
    marker it wrote, holding its pid) becomes a failed row with the cause, the pool is rebuilt
    and the interrupted jobs are resubmitted (finished units are skipped; the others resume)."""

    def __init__(self, workers: int) -> None:
        super().__init__()
        self.workers = workers

    def run(self, jobs, ctx, on_done, poll):  # type: ignore[override]
        _check_picklable(ctx)
        queue, unexplained = list(jobs), 0
        while queue:
            queue, procs = self._run_pool(queue, ctx, on_done, poll)
            if not queue:
                return
            if self._blame(queue, procs, ctx):
                unexplained = 0
                continue
            unexplained += 1
            if unexplained >= MAX_UNEXPLAINED_BREAKS:
                codes = sorted({describe_exit(p.exitcode) for p in procs.values()})
                raise ValueError(
                    f"worker processes keep dying outside any unit ({', '.join(codes)}); "
                    "try --workers 1 to see why"
                )

    def _run_pool(
        self, jobs: Sequence[Job], ctx: Context, on_done: Callable, poll: Callable[[], None]
    ) -> tuple[list[Job], dict[int, Any]]:
        """Run ``jobs`` (and those ``on_done`` adds) on a fresh pool until they finish or the
        pool breaks; returns the jobs it could not finish and the pool's processes by pid."""
        import multiprocessing

        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
        )
        procs: dict[int, Any] = {}  # every worker this pool started: their exit codes tell
        pending: dict[Future, Job] = {}
        interrupted: list[Job] = []

        def submit(job: Job) -> None:
            if interrupted:  # the pool is broken: the job goes to the next one
                interrupted.append(job)
                return
            try:
                pending[pool.submit(run_job, job, ctx)] = job
            except BrokenProcessPool:
                interrupted.append(job)
            procs.update(getattr(pool, "_processes", None) or {})

        def finish(fut: Future) -> None:
            job = pending.pop(fut)
            try:
                result = fut.result()
            except (BrokenProcessPool, CancelledError):
                interrupted.insert(0, job)
                return
            for nxt in on_done(job, result):
                submit(nxt)

        try:
            for job in jobs:
                submit(job)
            while pending:
                done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                procs.update(getattr(pool, "_processes", None) or {})
                poll()
                for fut in done:
                    finish(fut)
                if interrupted:
                    # the pool marks every job on it broken at once, then ends its workers:
                    # wait for that, so their exit codes are known, and collect the rest
                    pool.shutdown(wait=True, cancel_futures=True)
                    for fut in list(pending):
                        finish(fut)
                    return interrupted, procs
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                with contextlib.suppress(Exception):
                    proc.kill()
            raise
        pool.shutdown(wait=True)
        return interrupted, procs

    def _blame(self, interrupted: Sequence[Job], procs: dict[int, Any], ctx: Context) -> int:
        """Record the units whose worker died as failed rows; returns how many. The worker
        that broke the pool is the one that did not end by the SIGTERM the pool sends the
        others; when every worker ended by SIGTERM (someone else sent it), every unit that was
        running is blamed."""
        import logging

        from reduction.sweep import RUNNING, record_worker_death, running_pid

        codes = {pid: p.exitcode for pid, p in procs.items()}
        culprits = {pid for pid, c in codes.items() if c not in (None, 0, -signal.SIGTERM)}
        running = [
            (folder, pid)
            for job in interrupted
            for folder in job.folders()
            if (pid := running_pid(ctx.out / folder)) is not None and pid in codes
        ]
        blamed = [(f, pid) for f, pid in running if pid in culprits] if culprits else running
        for folder, pid in blamed:
            cause = describe_exit(codes[pid])
            row = record_worker_death(ctx.out, folder, cause, ctx.preset, ctx.overrides)
            if row.get("unsaved"):
                self.lost_rows.append(row)
            logging.getLogger("deepcollapse").warning(
                "notice: the worker training %s died (%s): recorded as failed; workers restarted",
                folder,
                cause,
            )
        for folder, _ in running:  # the others resume in the new pool, which marks them anew
            with contextlib.suppress(OSError):
                (ctx.out / folder / RUNNING).unlink(missing_ok=True)
        return len(blamed)


# -------------------------------------------------------------------------------------- ray


def _read_folders(root: Path, folders: Sequence[str]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for folder in folders:
        base = root / folder
        if base.is_dir():
            for path in sorted(base.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    files[f"{folder}/{path.name}"] = path.read_bytes()
    return files


def _write_files(root: Path, files: dict[str, bytes]) -> None:
    from deepnet.io import atomic_write

    # row.json last: its presence marks a unit finished
    for rel in sorted(files, key=lambda r: r.endswith("row.json")):
        atomic_write(root / rel, lambda fh, data=files[rel]: fh.write(data))


def ray_job(job: Job, ctx: Context, files: dict[str, bytes]) -> tuple[list, dict[str, bytes]]:
    """Run a job in a scratch folder on a Ray worker; return its result and every file of its
    run folders."""
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="deepcollapse-") as tmp:
        root = Path(tmp)
        _write_files(root, files)
        result = run_job(job, replace(ctx, out=root))
        return result, _read_folders(root, job.folders())


#: the HTTP/2 connection preface and an empty SETTINGS frame: a gRPC server (Ray's GCS and its
#: client server both are) answers with a SETTINGS frame of its own (frame type 4)
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _check_address(address: str) -> None:
    """Fail within RAY_CONNECT_TIMEOUT_S, with one line, when nothing answers at ``address`` or
    what answers does not speak gRPC (``ray.init`` would wait there for minutes)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"Ray address must look like HOST:PORT or ray://HOST:PORT, got {address!r}"
        )
    deadline = time.monotonic() + RAY_CONNECT_TIMEOUT_S
    try:
        with socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S) as sock:
            sock.sendall(_H2_PREFACE)
            reply = b""
            while len(reply) < 9:  # one frame header: length (3), type (1), flags, stream id
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(9 - len(reply))
                if not chunk:
                    break
                reply += chunk
    except TimeoutError:
        reply = b""
    except OSError as err:
        raise ValueError(
            f"no Ray cluster answers at {address} within {RAY_CONNECT_TIMEOUT_S:g} s ({err})"
        ) from None
    if len(reply) < 9 or reply[3] != 4:
        raise ValueError(
            f"{address} accepts connections but does not answer as a Ray cluster (no gRPC reply "
            f"within {RAY_CONNECT_TIMEOUT_S:g} s); check the address and port (e.g. "
            "ray://HEAD:10001 or HEAD:6379)"
        )


def _data_error(preset: Any, overrides: dict[str, Any]) -> str | None:
    """On a Ray worker: why the sweep's data cannot be loaded there (None when it can)."""
    from reduction.sweep import check_sweep_data

    try:
        check_sweep_data(preset, overrides)
    except ValueError as err:
        return str(err)
    return None


def _unwritten_rows(files: dict[str, bytes], err: OSError) -> list[dict[str, Any]]:
    """The rows a Ray job brought back that the driver could not write: failed, with why."""
    rows = []
    for rel, data in files.items():
        if rel.endswith("/row.json"):
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                row = json.loads(data)
                row["error"] = f"the run folder cannot be written ({type(err).__name__}: {err})"
                row.update(status="failed", unsaved=True)
                rows.append(row)
    return rows


class RayExecutor(Executor):
    """Jobs as Ray tasks, each with ``gpus`` GPUs (fractions allowed) and one CPU."""

    def __init__(self, address: str | None, workers: int | None, gpus: float | None) -> None:
        super().__init__()
        try:
            import ray
        except ImportError:
            raise ValueError("--backend ray needs Ray: pip install 'deepcollapse[ray]'") from None
        if gpus is not None and not gpus >= 0:
            raise ValueError(f"gpus per unit must be ≥ 0, got {gpus}")
        if address is not None:
            _check_address(address)
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"address": address} if address else {"num_cpus": workers}
            ray.init(**kw, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
            self.started = True
        try:
            have = ray.cluster_resources()
            if gpus is None:
                gpus = 0.25 if have.get("GPU", 0) > 0 else 0.0
            lacking = [
                f"{need:g} {name} per unit, the cluster has {have.get(name, 0):g}"
                for name, need in (("CPU", 1.0), ("GPU", gpus))
                if need > have.get(name, 0)
            ]
            if lacking:
                raise ValueError(
                    f"the Ray cluster lacks what this sweep asks for ({'; '.join(lacking)}): "
                    "units would never be scheduled; use --gpus-per-unit 0 or a cluster with them"
                )
        except BaseException:
            self.close()
            raise
        self.gpus = gpus

    def close(self) -> None:
        if self.started:
            self.started = False
            self.ray.shutdown()

    def check_data(self, preset: Any, overrides: dict[str, Any]) -> Any:
        """Load the data on a worker (where the units will: the driver may not hold it)."""
        check = self.ray.remote(num_cpus=1, num_gpus=0)(_data_error)
        error = self.ray.get(check.remote(preset, overrides))
        if error:
            raise ValueError(error)
        return None

    def run(self, jobs, ctx, on_done, poll):  # type: ignore[override]
        ray = self.ray
        remote = ray.remote(num_cpus=1, num_gpus=self.gpus)(ray_job)
        ctx_ref = ray.put(replace(ctx, progress=False))
        pending: dict[Any, Job] = {}

        def submit(job: Job) -> None:
            files = _read_folders(ctx.out, job.folders() + self._sources(job))
            pending[remote.remote(job, ctx_ref, files)] = job

        try:
            for job in jobs:
                submit(job)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                poll()
                for ref in done:
                    job = pending.pop(ref)
                    result, files = ray.get(ref)
                    try:
                        _write_files(ctx.out, files)
                    except OSError as err:  # the driver's folder: this job's units' error
                        self.lost_rows.extend(_unwritten_rows(files, err))
                    for nxt in on_done(job, result):
                        submit(nxt)
        finally:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)

    @staticmethod
    def _sources(job: Job) -> list[str]:
        """The finished shallower runs a chain may continue from (its own folders hold the rest)."""
        if job.kind != "chain":
            return []
        return [f"runs/L{d}-s{job.seed}" for d in range(0, min(job.depths))]


def make_executor(
    backend: str, workers: int | None, address: str | None = None, gpus: float | None = None
) -> Executor:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    if backend == "ray":
        return RayExecutor(address, workers, gpus)
    if address is not None:
        raise ValueError("--address applies to --backend ray only")
    n = default_workers() if workers is None else workers
    return SerialExecutor() if n == 1 else PoolExecutor(n)
