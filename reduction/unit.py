"""One unit of a sweep (a (depth, seed) run) and one chain of units (the depths of a seed), as
every executor runs them (reduction.execute): train, measure against the UFM
(:func:`reduction.compare.measure_run`), write the row last.

A diverging unit is recorded with ``status="diverged"`` (final: it is deterministic); any other
failure with ``status="failed"`` and retried by the next sweep (unless its worker process died
MAX_WORKER_DEATHS times). A checkpoint that cannot be read is moved aside and the unit restarts
from scratch; a finished run that a continuation needs and that lost its checkpoint is moved
aside and trained again (THEORY §10).
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from deepcollapse.files import write_json
from deepnet import (
    CorruptCheckpointError,
    CorruptSourceError,
    RunConfig,
    RunResult,
    TrainingDivergedError,
    check_threads,
    train,
)
from reduction.compare import measure_run
from reduction.layout import (
    BUDGET,
    ROW,
    RUNS,
    WORKER_DEATHS,
    clear_running,
    mark_running,
    parse_unit,
    quarantine,
    read_row,
    run_dir_of,
    write_row,
)
from reduction.metrics import collapse_metrics
from reduction.plan import Sweep
from reduction.registry import Row

if TYPE_CHECKING:
    from deepnet.data import Dataset

#: a unit whose worker process died this many times (killed by a signal, e.g. out of memory) is
#: recorded as failed for good instead of being retried on every restart
MAX_WORKER_DEATHS = 2

#: what trains a unit: ``deepnet.train``'s signature (tests inject failing trainers)
Trainer = Callable[..., RunResult]

log = logging.getLogger("deepcollapse")


def collapse_hook(data: Dataset) -> Callable[..., dict[str, float]]:
    """An eval hook for deepnet.train: NC1 and NC3 on the training and the test features at
    every evaluation point, kept in the run's history (collapse over training)."""

    def hook(epoch: int, model: Any, ev: dict[str, Any]) -> dict[str, float]:
        W = model.classifier.weight.detach()
        b = model.classifier.bias
        b = None if b is None else b.detach()
        K = data.num_classes
        out: dict[str, float] = {}
        train_m = collapse_metrics(ev["features"], data.y_train, W, b, num_classes=K)
        out.update(nc1_train=float(train_m["nc1"]), nc3_train=float(train_m["nc3"]))
        if data.x_test is not None and len(data.x_test) and len(np.unique(data.y_test)) == K:
            dev = W.device
            dtype = torch.long if data.kind == "text" else W.dtype
            with torch.no_grad():
                was = model.training
                model.eval()
                h = model.features(
                    torch.as_tensor(np.asarray(data.x_test), device=dev, dtype=dtype)
                )
                model.train(was)
            test_m = collapse_metrics(h, data.y_test, W, b, num_classes=K)
            out.update(nc1_test=float(test_m["nc1"]), nc3_test=float(test_m["nc3"]))
        return out

    return hook


def is_final(row: Mapping[str, Any]) -> bool:
    """Whether a finished unit stays as it is: ok and diverged rows (deterministic), and failed
    units whose worker process died MAX_WORKER_DEATHS times; other failures are retried."""
    if row.get("status") != "failed":
        return True
    return int(row.get("worker_deaths") or 0) >= MAX_WORKER_DEATHS


def config_row(sweep: Sweep, config: RunConfig) -> dict[str, Any]:
    """The row's columns that describe the run's settings."""
    return {
        "preset": sweep.name,
        "arch": config.arch,
        "norm": config.norm,
        "dataset": config.dataset,
        "depth": config.depth,
        "seed": config.seed,
        "data_seed": config.subset_seed,
        "width": config.width,
        "loss": config.loss,
        "lam": config.lam,
        "lam_schedule": config.lam_schedule,
        "lam_eff": config.effective_lam,
        "optimizer": config.optimizer,
        "lr": config.lr,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "init": config.init,
    }


class DataCache:
    """A sweep's datasets by subset seed, each loaded once (``given``: one dataset for every
    unit; ``preloaded``: the first seed's, already loaded by the sweep's data check)."""

    def __init__(
        self, sweep: Sweep, given: Dataset | None = None, preloaded: Dataset | None = None
    ) -> None:
        self.sweep, self.given = sweep, given
        self.cache: dict[int, Dataset] = {}
        if preloaded is not None:
            self.cache[sweep.subset_seed(sweep.seeds[0])] = preloaded

    def get(self, seed: int) -> Dataset:
        if self.given is not None:
            return self.given
        key = self.sweep.subset_seed(seed)
        if key not in self.cache:
            self.cache[key] = self.sweep.load_data(seed)
        return self.cache[key]


def run_unit(
    sweep: Sweep,
    depth: int,
    seed: int,
    out_dir: Path,
    data: Dataset,
    progress: bool = False,
    trainer: Trainer = train,
    init_from: str | None = None,
) -> tuple[Row, bool]:
    """Train and measure one (depth, seed) unit of ``sweep`` in ``out_dir`` unless it is
    finished. Returns (row, trained).

    A row that cannot be written comes back with ``unsaved=True`` (the driver reports it). The
    one exception that leaves: :class:`deepnet.CorruptSourceError` (the chain redoes its
    source).
    """
    run_dir = run_dir_of(out_dir, depth, seed)
    old = read_row(run_dir)
    if old is not None and is_final(old):
        return old, False
    config = sweep.config(depth, seed, None if init_from is None else str(init_from))
    row: dict[str, Any] = {
        **config_row(sweep, config),
        "n_train": len(data.y_train),
        "num_classes": data.num_classes,
        "fingerprint": sweep.identity.fingerprint,
    }
    hook = collapse_hook(data)
    try:
        mark_running(run_dir)  # how the driver tells which unit a dead worker was running
        check_threads(config.num_threads)
        try:
            result = trainer(
                config, data=data, run_dir=run_dir, resume=True, progress=progress, eval_hook=hook
            )
        except CorruptCheckpointError:
            quarantine(run_dir / "checkpoint.pt")
            result = trainer(
                config, data=data, run_dir=run_dir, resume=True, progress=progress, eval_hook=hook
            )
        measured, layers = measure_run(result, data.num_classes, data)
        if layers is not None:
            write_json(run_dir / "profile.json", layers)
        row.update(measured)
        row["status"] = "ok"
    except CorruptSourceError:
        clear_running(run_dir)
        raise
    except TrainingDivergedError as err:
        row.update(status="diverged", error=str(err))
    except Exception as err:  # isolation: one bad unit must not stop the sweep
        row.update(status="failed", error=f"{type(err).__name__}: {err}")
        row["traceback"] = traceback.format_exc(limit=5)
    row["run_dir"] = str(run_dir.relative_to(out_dir))
    row["config"] = config.to_dict()
    try:
        write_row(run_dir, cast(Row, row))  # last: its presence marks the unit finished
    except OSError as err:  # an unwritable folder, a full disk: this unit's error, in memory
        cause = f"row.json cannot be written ({type(err).__name__}: {err})"
        row["error"] = f"{row['error']}; {cause}" if row.get("error") else cause
        row.update(status="failed", unsaved=True)
    clear_running(run_dir)
    return cast(Row, row), True


def record_worker_death(out: Path, folder: str, cause: str, sweep: Sweep) -> Row:
    """Record that the worker process training the unit in ``out/folder`` died (``cause``): a
    failed row, and the count of such deaths in the unit's folder (worker_deaths.json), so
    that a unit that kills its worker (e.g. out of memory) is not retried forever. ``folder``
    may be a 2×-budget rerun's (``budget2x/...``)."""
    run_dir = out / folder
    base = out / BUDGET if folder.startswith(f"{BUDGET}/") else out
    if base != out:
        sweep = sweep.budget
    depth, seed = parse_unit(run_dir.name)
    deaths_file = run_dir / WORKER_DEATHS
    try:
        deaths = json.loads(deaths_file.read_text())
        count = int(deaths["count"]) + 1
        causes = list(deaths["causes"])
    except (OSError, ValueError, KeyError, TypeError):
        count, causes = 1, []
    try:
        config = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    except (OSError, ValueError, TypeError):
        config = sweep.config(depth, seed)
    if count >= MAX_WORKER_DEATHS:
        note = f"it killed its worker {count} times: not retried (delete its row.json to retry)"
    else:
        note = "retried once"
    row: dict[str, Any] = {
        **config_row(sweep, config),
        "status": "failed",
        "error": f"worker process died while training this unit: {cause}; {note}",
        "worker_deaths": count,
        "fingerprint": sweep.identity.fingerprint,
        "run_dir": str(run_dir.relative_to(base)),
        "config": config.to_dict(),
    }
    try:
        write_json(deaths_file, {"count": count, "causes": [*causes, cause]})
        write_row(run_dir, cast(Row, row))
    except OSError as err:
        row.update(unsaved=True, error=f"{row['error']}; row.json cannot be written ({err})")
    clear_running(run_dir)
    return cast(Row, row)


def discard_source(err: CorruptSourceError, out: Path) -> None:
    """A finished run that a continuation needs has a missing or unreadable checkpoint: move
    its checkpoint and row aside (kept, renamed), so that the chain redoes it from the last good
    run before it. Only runs of this sweep folder are touched."""
    source = err.source.resolve()
    runs = (out / RUNS).resolve()
    if source.parent != runs or not (source / ROW).exists():
        raise ValueError(str(err)) from None
    for name in ("checkpoint.pt", ROW):
        if (source / name).exists():
            quarantine(source / name)
    log.warning("notice: %s; moved aside, that run is trained again", err)


def source_of(row: Mapping[str, Any], depth: int) -> str | None:
    """What the next unit of a chain continues from after this one: the finished run's folder,
    relative to the unit's own folder, so a sweep folder can move (or travel to a Ray worker)
    and its configs still point at the right runs. None when it is no source: not finished, or
    the depth-0 baseline, which is never one: for a CLS transformer its feature cannot see the
    input, so its optimum (W = 0, J = log K) padded with near-zero blocks is a saddle point that
    continuation would never leave; and for L-RN1 on MNIST-1D a chain from it was measured to
    settle at depth 13 at J = 0.111 against 0.068 from a fresh depth 2 (its second block
    cancels the residual stream, THEORY §9). The shallowest depth with blocks starts afresh."""
    if row.get("status") == "ok" and depth > 0:
        return f"../{Path(row['run_dir']).name}"
    return None


#: one unit's outcome in a chain: (depth, trained, the row when it could not be written)
ChainStep = tuple[int, bool, Row | None]


def run_chain(
    sweep: Sweep,
    seed: int,
    out: Path,
    data: Dataset,
    progress: bool,
    trainer: Trainer,
) -> Iterator[ChainStep]:
    """Run the depths of ``sweep`` for one seed in increasing order; with continuation each
    starts from the deepest finished shallower unit of the chain. Yields a :data:`ChainStep`
    per unit.

    When the finished run a unit would continue from has lost its checkpoint (missing or
    unreadable), that run is moved aside and the chain starts over: finished units are skipped,
    the damaged one is trained again from the last good run before it, and the chain goes on.
    """
    for _ in range(len(sweep.depths) + 1):
        try:
            yield from _chain_pass(sweep, seed, out, data, progress, trainer)
            return
        except CorruptSourceError as err:
            discard_source(err, out)
    raise ValueError(f"{out}: the runs of seed {seed} keep losing their checkpoints")


def _chain_pass(
    sweep: Sweep, seed: int, out: Path, data: Dataset, progress: bool, trainer: Trainer
) -> Iterator[ChainStep]:
    source: str | None = None
    for depth in sweep.depths:
        row, did = run_unit(
            sweep, depth, seed, out, data, progress, trainer,
            source if sweep.continuation else None,
        )  # fmt: skip
        source = source_of(row, depth) or source
        yield depth, did, row if row.get("unsaved") else None
