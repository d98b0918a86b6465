"""Where a sweep's jobs run: in this process, on a local process pool, or on a Ray cluster.

A job is a continuation chain (the depths of one seed, in increasing order: each starts from the
one before) or a single unit, or a 2×-budget rerun. Whatever runs it, each run folder has one
writer, and the driver rebuilds results.csv from the finished run folders.

- ``serial``: in this process (any trainer, e.g. a test's).
- ``local``: a ``spawn`` process pool, one single-threaded worker per core; on Linux each worker
  dies with the driver (PR_SET_PDEATHSIG), so a killed sweep leaves no orphan writing a folder
  that the resumed sweep also writes.
- ``ray``: each job is a Ray task; the run folders it needs travel to the worker as bytes and
  its results come back to the driver, which writes them, so workers need no shared disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import socket
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
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


def default_workers() -> int:
    """The number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def run_job(
    job: Job, ctx: Context, after_unit: Callable[[], None] | None = None
) -> list[tuple[int, int, bool]]:
    """Run ``job`` in this process; returns (depth, seed, trained) per unit. ``after_unit`` is
    called as each unit finishes."""
    from deepnet import train
    from reduction.sweep import DataCache, budget_unit, run_chain

    trainer = ctx.trainer or train
    data = DataCache(ctx.preset, ctx.overrides, ctx.data)
    if job.kind == "budget":
        (depth,) = job.depths
        did = budget_unit(
            ctx.preset, depth, job.seed, ctx.out, data, ctx.overrides, ctx.progress, trainer
        )
        return [(depth, job.seed, did)]
    preset = replace(ctx.preset, depths=job.depths)
    out = []
    for depth, did in run_chain(
        preset, job.seed, ctx.out, data.get(job.seed), ctx.overrides, ctx.progress, trainer
    ):
        out.append((depth, job.seed, did))
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
    once a second while jobs run (progress, results.csv)."""

    serial = False

    def run(
        self,
        jobs: Sequence[Job],
        ctx: Context,
        on_done: Callable[[Job, list[tuple[int, int, bool]]], Sequence[Job]],
        poll: Callable[[], None],
    ) -> None:
        raise NotImplementedError


class SerialExecutor(Executor):
    serial = True

    def run(self, jobs, ctx, on_done, poll):  # type: ignore[override]
        queue = list(jobs)
        while queue:
            job = queue.pop(0)
            result = run_job(job, ctx, after_unit=poll)
            poll()
            queue.extend(on_done(job, result))


class PoolExecutor(Executor):
    def __init__(self, workers: int) -> None:
        self.workers = workers

    def run(self, jobs, ctx, on_done, poll):  # type: ignore[override]
        import multiprocessing

        _check_picklable(ctx)
        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
        )
        pending: dict[Future, Job] = {}
        try:
            for job in jobs:
                pending[pool.submit(run_job, job, ctx)] = job
            while pending:
                done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                poll()
                for fut in done:
                    job = pending.pop(fut)
                    for nxt in on_done(job, fut.result()):
                        pending[pool.submit(run_job, nxt, ctx)] = nxt
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                with contextlib.suppress(Exception):
                    proc.kill()
            raise
        pool.shutdown(wait=True)


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


def _check_address(address: str) -> None:
    """Fail within a timeout, with one line, when nothing answers at ``address``."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"Ray address must look like HOST:PORT or ray://HOST:PORT, got {address!r}"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise ValueError(
            f"no Ray cluster answers at {address} within {RAY_CONNECT_TIMEOUT_S:g} s ({err})"
        ) from None


class RayExecutor(Executor):
    """Jobs as Ray tasks, each with ``gpus`` GPUs (fractions allowed) and one CPU."""

    def __init__(self, address: str | None, workers: int | None, gpus: float | None) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("--backend ray needs Ray: pip install 'deepcollapse[ray]'") from None
        if address is not None:
            _check_address(address)
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"address": address} if address else {"num_cpus": workers}
            ray.init(**kw, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
            self.started = True
        if gpus is None:
            gpus = 0.25 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        if gpus < 0:
            raise ValueError(f"gpus per unit must be ≥ 0, got {gpus}")
        self.gpus = gpus

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
                    _write_files(ctx.out, files)
                    for nxt in on_done(job, result):
                        submit(nxt)
        finally:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            if self.started:
                ray.shutdown()

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
