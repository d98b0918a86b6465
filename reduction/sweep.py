"""The depth sweep (THEORY §10) in three steps: **plan** (:class:`reduction.plan.Sweep`: the
preset, its overrides and every unit's RunConfig, checked before anything is written),
**execute** (:mod:`reduction.execute`: the units, on one of the executors, each unit trained
and measured by :mod:`reduction.unit`; the 2×-budget reruns by :mod:`reduction.budget`), and
**report** (:func:`reduction.aggregate.report`: tables, certificates, rates, verdict, figures,
rebuilt from the run folders). The folder layout is :mod:`reduction.layout`'s; what a folder
holds is checked by :mod:`reduction.folder`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepcollapse.files import write_json
from deepnet import check_batchable, train
from reduction.aggregate import report
from reduction.budget import budget_summary
from reduction.execute import Context, Job, Outcome, budget_jobs, make_executor, sweep_jobs
from reduction.folder import check_folder, sweep_lock
from reduction.layout import SPEC, budget_out, quarantine, read_row, run_dir_of
from reduction.plan import Sweep, make_run_config
from reduction.presets import Preset
from reduction.registry import Row
from reduction.results import SweepResult
from reduction.unit import Trainer

if TYPE_CHECKING:
    from deepnet.data import Dataset

#: ``make_run_config`` is also read from here by scripts (scripts/ln_eps_study.py)
__all__ = ["make_run_config", "run_sweep"]

log = logging.getLogger("deepcollapse")


def run_sweep(
    preset: str | Preset,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    depths: Iterable[int] | None = None,
    seeds: Iterable[int] | None = None,
    overrides: Mapping[str, Any] | None = None,
    budget_check: bool | None = None,
    progress: bool = True,
    data: Dataset | None = None,
    trainer: Trainer = train,
    workers: int | None = None,
    backend: str = "local",
    address: str | None = None,
    gpus_per_unit: float | None = None,
    batch_seeds: bool | None = None,
) -> SweepResult:
    """Run (or resume) a depth sweep and write its table, summary, rates, verdict and figure.

    Args:
        preset: a preset name (see ``deepcollapse presets``) or a :class:`Preset`.
        out_dir: the sweep folder (default ``results/<preset>``); reusing it resumes the sweep.
        depths, seeds: override the preset's depths or seeds (0 = the no-block baseline).
        overrides: RunConfig fields to change for every run (e.g. ``{"epochs": 200}``), and
            ``data_seed`` (int, or ``"per_seed"``).
        budget_check: rerun the extreme depths of the first seed with twice the budget.
        progress: show a progress bar over runs (and, with one worker, a per-run bar inside).
        data: an already loaded dataset to use instead of loading the preset's.
        trainer: the training function (tests inject a failing one to check resumption).
        workers: processes running units side by side, each single-threaded (None = one per
            core). Continuation chains (the depths of one seed) run in order; seeds in parallel.
            Workers are started with ``spawn``: a script that calls run_sweep with workers > 1
            must do so under ``if __name__ == "__main__":`` (as for any multiprocessing).
        backend: "local" (this machine) or "ray" (a Ray cluster at ``address``, or a local
            ``ray.init()`` without one), with ``gpus_per_unit`` GPUs per unit (fractions allowed;
            None = 0.25 when the cluster has GPUs, else 0).
        batch_seeds: train the fresh units of one depth, all seeds at once, as one batched
            model (torch.func; batchable optimizers only), in this process, depth after depth.
            None = on when a GPU is present, the backend is local and the optimizer allows it.

    Everything that can be checked before training is checked before anything is written (the
    settings, the data, the backend, the folder's runs): a refused sweep leaves the folder as
    it found it (README, "Reliability").
    """
    from tqdm.auto import tqdm

    # ---- plan
    sweep = Sweep.resolve(preset, depths, seeds, overrides)
    sweep.validate(local=backend != "ray")
    batched = _want_batched(sweep, batch_seeds, backend)
    executor = make_executor(backend, workers, address, gpus_per_unit, batched=batched)
    try:
        preloaded = None if data is not None else executor.check_data(sweep)
        if not executor.serial:
            preloaded = None  # workers load their own; the driver need not hold it meanwhile
        do_budget = sweep.preset.budget_check if budget_check is None else budget_check
        out = Path(out_dir) if out_dir is not None else Path("results") / sweep.name
        with sweep_lock(out):
            if check_folder(out, sweep) == "garbage":
                kept = quarantine(out / SPEC)
                log.warning(
                    "notice: %s was unreadable (kept as %s); its run folders agree with this "
                    "sweep, so it is written anew",
                    out / SPEC,
                    kept.name,
                )
            write_json(out / SPEC, sweep.spec())

            # ---- execute
            jobs = sweep_jobs(sweep)
            first_seed = sweep.seeds[0]
            waiting = {j for j in jobs if j.seed == first_seed}
            reruns = budget_jobs(sweep)
            n_units = len(sweep.depths) * len(sweep.seeds) + (len(reruns) if do_budget else 0)
            bar = tqdm(total=n_units, desc=f"sweep {sweep.name}", unit="run", disable=not progress)
            trained = 0
            state = {"finished": -1}
            unsaved: dict[str, Row] = {}  # rows whose folder could not be written

            def keep_unsaved(rows: Iterable[Row]) -> None:
                for row in rows:
                    unsaved[row["run_dir"]] = row

            def poll() -> None:
                """Progress and results.csv from the run folders (cheap: reads row.json files)."""
                keep_unsaved(executor.take_lost_rows())
                finished = sum(
                    read_row(run_dir_of(out, d, s)) is not None
                    for s in sweep.seeds
                    for d in sweep.depths
                )
                if do_budget:
                    finished += sum(
                        read_row(run_dir_of(budget_out(out), d, first_seed)) is not None
                        for d in sweep.budget_depths()
                    )
                finished += len(unsaved)
                if finished != state["finished"]:
                    state["finished"] = finished
                    bar.n = finished
                    bar.refresh()
                    report(out, sweep=sweep, tables_only=True, extra_rows=list(unsaved.values()))

            def on_done(job: Job, result: list[Outcome]) -> list[Job]:
                nonlocal trained
                if job.kind == "chain":
                    trained += sum(did for _, _, did, _ in result)
                    keep_unsaved(row for *_, row in result if row is not None)
                waiting.discard(job)
                if do_budget and job.kind == "chain" and job.seed == first_seed and not waiting:
                    return reruns  # the 1x runs they extend are finished
                return []

            ctx = Context(sweep, out, data, trainer, progress and executor.serial)
            if executor.serial and preloaded is not None:
                ctx.preloaded = preloaded  # in this process only: never pickled to a worker
            executor.run(jobs, ctx, on_done, poll)
            poll()
            bar.close()

            # ---- report
            checks = budget_summary(sweep, out) if do_budget else []
            result = report(
                out, sweep=sweep, budget_checks=checks, extra_rows=list(unsaved.values())
            )
    finally:
        executor.close()
    result.trained = trained
    return result


def _want_batched(sweep: Sweep, batch_seeds: bool | None, backend: str) -> bool:
    """Whether to batch seeds: on request (checked: one clear error when the config cannot be
    batched), or by default on a GPU when the backend is local and the config can be."""
    configs = [sweep.config(sweep.depths[-1], s) for s in sweep.seeds]
    if batch_seeds is None:
        import torch

        if backend != "local" or not torch.cuda.is_available() or len(configs) < 2:
            return False
        try:
            check_batchable(configs)
        except ValueError:
            return False
        return True
    if batch_seeds:
        check_batchable(configs)  # ValueError: e.g. L-BFGS needs a line search per seed
    return bool(batch_seeds)
