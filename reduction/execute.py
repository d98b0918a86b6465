"""Where a sweep's jobs run: in this process, with the seeds of a depth batched into one model,
on a local process pool, or on a Ray cluster.

A job is a continuation chain (the depths of one seed, in increasing order: each starts from the
one before) or a single unit, or a 2×-budget rerun. Whatever runs it, each run folder has one
writer, and the driver rebuilds results.csv from the finished run folders.

- ``serial``: in this process (any trainer, e.g. a test's).
- ``batched``: in this process, the fresh units of one depth, all seeds at once, as one batched
  model (:func:`deepnet.train_batched`; first-order optimizers only); units with a checkpoint
  (interrupted) resume one by one, and a depth where a seed diverged is redone seed by seed.
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepcollapse.files import atomic_write
from deepnet import CorruptSourceError, TrainingDivergedError, train
from reduction.budget import budget_unit
from reduction.layout import ROW, read_row, run_dir_of, running_pid, unit_folder
from reduction.plan import Sweep
from reduction.registry import Row
from reduction.unit import (
    DataCache,
    Trainer,
    collapse_hook,
    discard_source,
    is_final,
    record_worker_death,
    run_chain,
    run_unit,
    source_of,
)

if TYPE_CHECKING:
    from deepnet import RunResult
    from deepnet.data import Dataset

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
            return [unit_folder(d, self.seed), unit_folder(d, self.seed, budget=True)]
        # a chain also reads the finished shallower runs its first unit may continue from
        return [unit_folder(d, self.seed) for d in self.depths]


def sweep_jobs(sweep: Sweep) -> list[Job]:
    """The jobs of a sweep's units: one chain per seed (continuation), else one job per unit,
    deepest first so that the slowest start early."""
    if sweep.continuation:
        return [Job("chain", s, sweep.depths) for s in sweep.seeds]
    return [Job("chain", s, (d,)) for d in sorted(sweep.depths, reverse=True) for s in sweep.seeds]


def budget_jobs(sweep: Sweep) -> list[Job]:
    """The 2×-budget reruns (first seed), to run once the 1× units they extend are finished."""
    return [Job("budget", sweep.seeds[0], (d,)) for d in sweep.budget_depths()]


@dataclass
class Context:
    """Everything a worker needs to run a job (picklable)."""

    sweep: Sweep
    out: Path
    data: Dataset | None = None
    trainer: Trainer | None = None
    progress: bool = False
    preloaded: Dataset | None = None  # the first seed's data, already loaded (in process only)


def default_workers() -> int:
    """The number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: one unit's outcome in a job: (depth, seed, trained, the row when it could not be written)
Outcome = tuple[int, int, bool, Row | None]
#: called with a finished job and its outcomes; returns the jobs it makes ready
OnDone = Callable[[Job, list[Outcome]], Sequence[Job]]


def run_job(job: Job, ctx: Context, after_unit: Callable[[], None] | None = None) -> list[Outcome]:
    """Run ``job`` in this process; returns one :data:`Outcome` per unit. ``after_unit`` is
    called as each unit finishes."""
    trainer = ctx.trainer or train
    data = DataCache(ctx.sweep, ctx.data, ctx.preloaded)
    if job.kind == "budget":
        (depth,) = job.depths
        try:
            did = budget_unit(
                ctx.sweep, depth, job.seed, ctx.out, data, ctx.progress, trainer
            )
        except CorruptSourceError as err:  # the 1x run it starts from lost its checkpoint
            discard_source(err, ctx.out)  # redone by the next sweep; this check is "missing"
            did = False
        return [(depth, job.seed, did, None)]
    chain = ctx.sweep.with_depths(job.depths)
    out: list[Outcome] = []
    for depth, did, unsaved in run_chain(
        chain, job.seed, ctx.out, data.get(job.seed), ctx.progress, trainer
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
        self.lost_rows: list[Row] = []

    def run(
        self, jobs: Sequence[Job], ctx: Context, on_done: OnDone, poll: Callable[[], None]
    ) -> None:
        raise NotImplementedError

    def check_data(self, sweep: Sweep) -> Dataset | None:
        """Load the sweep's data where the units will load it (ValueError, one line, when it
        cannot be); returns it when it was loaded in this process."""
        return sweep.check_data()

    def take_lost_rows(self) -> list[Row]:
        rows, self.lost_rows = self.lost_rows, []
        return rows

    def close(self) -> None:
        """Release what the executor holds (a Ray connection it opened)."""


class SerialExecutor(Executor):
    serial = True

    def run(
        self, jobs: Sequence[Job], ctx: Context, on_done: OnDone, poll: Callable[[], None]
    ) -> None:
        queue = list(jobs)
        while queue:
            job = queue.pop(0)
            result = run_job(job, ctx, after_unit=poll)
            poll()
            queue.extend(on_done(job, result))


class BatchedExecutor(SerialExecutor):
    """Depth after depth, train every seed's fresh unit at once (:func:`deepnet.train_batched`)
    and measure each like any unit; units with a checkpoint (interrupted) resume one by one,
    and when a seed diverges the depth is redone seed by seed to isolate it. Then each job is
    reported done, and the jobs that makes ready (the 2×-budget reruns) run serially."""

    def run(
        self, jobs: Sequence[Job], ctx: Context, on_done: OnDone, poll: Callable[[], None]
    ) -> None:
        datasets = DataCache(ctx.sweep, ctx.data, ctx.preloaded)
        by_unit: dict[tuple[int, int], Outcome] = {}
        for _ in range(len(ctx.sweep.depths) + 1):
            try:
                for outcome in _batched_pass(ctx.sweep, ctx.out, datasets, poll):
                    by_unit[outcome[:2]] = outcome
                break
            except CorruptSourceError as err:
                discard_source(err, ctx.out)
        else:
            raise ValueError(f"{ctx.out}: the runs keep losing their checkpoints; check the disk")
        ready: list[Job] = []
        for job in jobs:
            done = [by_unit[(d, job.seed)] for d in job.depths if (d, job.seed) in by_unit]
            ready.extend(on_done(job, done))
        super().run(ready, ctx, on_done, poll)


def _batched_pass(
    sweep: Sweep, out: Path, datasets: DataCache, after: Callable[[], None]
) -> list[Outcome]:
    """One pass of :class:`BatchedExecutor` over the depths; a finished source whose checkpoint
    is unreadable raises CorruptSourceError (moved aside and redone, as in a chain)."""
    from deepnet import train_batched

    outcomes: list[Outcome] = []
    source: dict[int, str | None] = {s: None for s in sweep.seeds}
    for depth in sweep.depths:
        fresh, configs = [], []
        for seed in sweep.seeds:
            folder = run_dir_of(out, depth, seed)
            row = read_row(folder)
            if (row is None or not is_final(row)) and not (folder / "checkpoint.pt").exists():
                fresh.append(seed)
                configs.append(sweep.config(depth, seed, source[seed]))
        results: dict[int, RunResult] = {}
        if fresh:
            data = datasets.get(fresh[0])
            try:
                done = train_batched(
                    configs,
                    data,
                    run_dirs=[run_dir_of(out, depth, s) for s in fresh],
                    eval_hook=collapse_hook(data),
                )
                results = dict(zip(fresh, done))
            except TrainingDivergedError:
                results = {}  # one seed diverged: run them one by one to isolate it
        for seed in sweep.seeds:
            pre = results.get(seed)

            def trainer(config: Any, pre: RunResult | None = pre, **kw: Any) -> RunResult:
                return pre if pre is not None else train(config, **kw)

            row, did = run_unit(
                sweep, depth, seed, out, datasets.get(seed), False, trainer, source[seed]
            )
            outcomes.append((depth, seed, did, row if row.get("unsaved") else None))
            source[seed] = source_of(row, depth) or source[seed]
            after()
    return outcomes


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

    def run(
        self, jobs: Sequence[Job], ctx: Context, on_done: OnDone, poll: Callable[[], None]
    ) -> None:
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

        from reduction.layout import RUNNING

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
            row = record_worker_death(ctx.out, folder, cause, ctx.sweep)
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
    # row.json last: its presence marks a unit finished
    for rel in sorted(files, key=lambda r: r.endswith(ROW)):
        data = files[rel]

        def write(fh: Any, data: bytes = data) -> None:
            fh.write(data)

        atomic_write(root / rel, write)


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


def _data_error(sweep: Sweep) -> str | None:
    """On a Ray worker: why the sweep's data cannot be loaded there (None when it can)."""
    try:
        sweep.check_data()
    except ValueError as err:
        return str(err)
    return None


def _unwritten_rows(files: dict[str, bytes], err: OSError) -> list[Row]:
    """The rows a Ray job brought back that the driver could not write: failed, with why."""
    rows = []
    for rel, data in files.items():
        if rel.endswith(f"/{ROW}"):
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

    def check_data(self, sweep: Sweep) -> Dataset | None:
        """Load the data on a worker (where the units will: the driver may not hold it)."""
        check = self.ray.remote(num_cpus=1, num_gpus=0)(_data_error)
        error = self.ray.get(check.remote(sweep))
        if error:
            raise ValueError(error)
        return None

    def run(
        self, jobs: Sequence[Job], ctx: Context, on_done: OnDone, poll: Callable[[], None]
    ) -> None:
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
        return [unit_folder(d, job.seed) for d in range(0, min(job.depths))]


def make_executor(
    backend: str,
    workers: int | None,
    address: str | None = None,
    gpus: float | None = None,
    batched: bool = False,
) -> Executor:
    """The executor of ``backend`` with ``workers`` (``batched``: the seeds of a depth as one
    model, in this process)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if batched:
        if backend != "local" or address is not None:
            raise ValueError("batched seeds train in this process: use --backend local")
        return BatchedExecutor()
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    if backend == "ray":
        return RayExecutor(address, workers, gpus)
    if address is not None:
        raise ValueError("--address applies to --backend ray only")
    n = default_workers() if workers is None else workers
    return SerialExecutor() if n == 1 else PoolExecutor(n)
