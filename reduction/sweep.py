"""The depth sweep: train one architecture over depths × seeds and measure each run (THEORY §10).

Layout of a sweep folder ``OUT``::

    OUT/sweep.json            the preset and overrides that define the sweep
    OUT/runs/L{depth}-s{seed}/config.json, metrics.json, checkpoint.pt, features.npz   (deepnet)
    OUT/runs/L{depth}-s{seed}/row.json   the finished unit: config + objective split + metrics
    OUT/budget2x/runs/...     the 2×-budget reruns of the extreme depths
    OUT/results.csv, summary.csv, rates.csv, summary.json, figure.png/.pdf   (see aggregate.py)

A unit is finished exactly when its ``row.json`` exists (written atomically, last). A sweep that
is killed and restarted skips finished units; an interrupted unit resumes from its checkpoint.
With ``init="continuation"`` the depths of one seed form a chain: depth L starts from the
finished next-shallower run of the same seed, padded with near-identity blocks, so
J_L(run) starts at J_{L'}(run) up to the near-identity padding and L-BFGS only descends; the
monotone certificate (aggregate.py) checks J_L(run) ≤ J_{L'}(run) (THEORY §10).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ufm
from deepnet import (
    CorruptCheckpointError,
    RunConfig,
    RunResult,
    TrainingDivergedError,
    load_run_data,
    train,
)
from deepnet.data import Dataset
from deepnet.io import write_json
from reduction.distance import distance_to_optimum, group_distance
from reduction.metrics import collapse_metrics
from reduction.presets import Preset, get_preset
from reduction.results import SweepResult, read_row  # torch-free (report reads them)

#: the 2×-budget rerun passes when J moves by at most this fraction (of J_2x) and the rerun
#: is itself converged by its own criteria (THEORY §9)
BUDGET_TOL = 0.01

#: RunConfig fields a sweep sets per unit (not allowed as overrides)
_UNIT_FIELDS = ("depth", "seed", "init_from")


# --------------------------------------------------------------------------------------------
# configuration of the units
# --------------------------------------------------------------------------------------------


def make_run_config(
    preset: Preset,
    depth: int,
    seed: int,
    overrides: Mapping[str, Any],
    init_from: str | None = None,
) -> RunConfig:
    """The :class:`deepnet.RunConfig` of one (depth, seed) unit of ``preset``.

    ``data_seed``: an int (every seed trains on that subset; default 0) or ``"per_seed"`` (each
    seed draws its own subset). Continuation units get ``init_from`` (the shallower run's folder);
    the shallowest unit of a chain has nothing to continue from and starts from the default init.
    """
    fields = {**preset.config, **overrides, "depth": int(depth), "seed": int(seed)}
    data_seed = fields.get("data_seed", 0)
    fields["data_seed"] = int(seed) if data_seed == "per_seed" else data_seed
    if fields.get("init") == "continuation":
        if init_from is None or depth == 0:
            fields["init"] = "default"
        else:
            fields["init_from"] = init_from
    return RunConfig(**fields)


def ufm_problem_for(
    config: RunConfig, labels: np.ndarray, num_classes: int, data: Dataset | None = None
) -> ufm.Problem:
    """The LayerNorm UFM a trained network of ``config`` reduces to (THEORY §3).

    Same loss, classes and per-class counts as the training set, width d, radius √d (the LN
    sphere), λ_W = the run's effective λ; the classifier bias is free (undecayed) when present.
    Data whose identical inputs carry several labels (next-token data: ``info`` holds the
    (G, K) ``group_label_counts`` of the distinct contexts) give the generalised UFM of
    THEORY §11, one feature per context.
    With ``ln_affine`` the features leave the sphere and the undecayed LN scale lets the
    classifier penalty shrink without limit (J has no minimiser): no UFM applies (ValueError).
    """
    if config.ln_affine:
        raise ValueError(
            "the UFM comparison needs parameter-free LayerNorm (ln_affine=False): an affine LN "
            "moves the features off the sphere and its undecayed scale lets (λ/2)‖W‖² shrink "
            "without limit, so J_L has no minimiser to compare"
        )
    info = getattr(data, "info", None) or {}
    if info.get("group_label_counts") is not None:
        return ufm.Problem.from_label_counts(
            np.asarray(info["group_label_counts"]),
            config.width,
            config.effective_lam,
            config.loss,
            bias="free" if config.bias else "none",
        )
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    per_class: int | list[int] = (
        int(counts[0]) if np.all(counts == counts[0]) else [int(c) for c in counts]
    )
    return ufm.Problem(
        loss=config.loss,
        num_classes=num_classes,
        samples_per_class=per_class,
        width=config.width,
        lam_W=config.effective_lam,
        bias="free" if config.bias else "none",
        features="layernorm",
    )


_SOLUTIONS: dict[str, Any] = {}


def solve_cached(problem: ufm.Problem) -> Any:
    """ufm.solve, once per distinct problem in this process (every depth of a constant-λ sweep
    shares one; the generalised UFM of a next-token sweep takes seconds to solve)."""
    groups = [list(map(int, g)) for g in (problem.groups or ())]
    key = json.dumps([problem.to_dict(), groups], sort_keys=True, default=str)
    if key not in _SOLUTIONS:
        _SOLUTIONS[key] = ufm.solve(problem)
    return _SOLUTIONS[key]


def measure_run(
    result: RunResult, num_classes: int, data: Dataset | None = None, run_dir: Path | None = None
) -> dict[str, Any]:
    """Collapse metrics, distance to the UFM optimum and stationarity of one run, flat. With
    ``data`` and the in-memory model, also the per-layer profile (saved to profile.json)."""
    cfg = result.config
    metrics = collapse_metrics(
        result.features, result.labels, result.W, result.b, num_classes=num_classes
    )
    problem = ufm_problem_for(cfg, result.labels, num_classes, data)
    solution = solve_cached(problem)
    dist = distance_to_optimum(
        result.features, result.labels, result.W, result.b, problem, solution=solution
    )
    ufm_value = float(dist["optimum_value"])
    st = result.stationarity
    row: dict[str, Any] = {
        "objective": result.objective,
        "fit": result.fit,
        "classifier_penalty": result.classifier_penalty,
        "body_penalty": result.body_penalty,
        "embedding_penalty": result.embedding_penalty,
        "train_acc": result.train_acc,
        "test_acc": result.test_acc,
        "ufm_value": ufm_value,
        "ufm_geometry": dist["optimum_geometry"],
        # J_L − UFM*: the theory says ≥ body penalty ≥ 0 and → 0 with depth
        "objective_gap": result.objective - ufm_value,
        # relative to UFM*: with λ/L the optimum itself shrinks with depth, so compare these
        "objective_rel_gap": (result.objective - ufm_value) / ufm_value if ufm_value else math.nan,
        # gap in units of the effective λ (THEORY §10: the λ/L presets)
        "objective_gap_per_lam": (result.objective - ufm_value) / cfg.effective_lam
        if cfg.effective_lam
        else math.nan,
        # (fit + (λ/2)‖W‖²) − UFM*, recomputed in float64 from the features: ≥ 0 (THEORY §3)
        "classifier_gap": float(dist["gap"]),
        "classifier_rel_gap": float(dist["rel_gap"]),
        "w_norm_ratio": float(dist["w_norm_ratio"]),
        "procrustes_means": float(dist["procrustes_means"]),
        "procrustes_W": float(dist["procrustes_W"]),
        "procrustes_joint": float(dist["procrustes_joint"]),
        "sphere_violation": float(dist["feasibility_violation"]),
    }
    for key in ("nc2_ufm", "nc2_means_ufm", "nc3_ufm"):
        if key in dist:
            row[key] = float(dist[key])
    if problem.groups:  # the generalised UFM: how far from its (non-collapsed) geometry
        groups = np.asarray(data.info["group_ids"])  # type: ignore[union-attr]
        row.update(group_distance(result.features, groups, solution))
        geometry = ufm.gufm_geometry(solution)
        row.update(
            n_groups=len(problem.groups),
            gufm_nc1=float(geometry.nc1),
            gufm_collapsed=bool(geometry.collapsed),
        )
    row.update({k: float(v) for k, v in metrics.items()})
    model = getattr(result, "model", None)
    if data is not None and model is not None:
        from reduction.profile import layer_profile

        dev = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        x = torch.as_tensor(
            np.asarray(data.x_train), device=dev, dtype=torch.long if data.kind == "text" else dtype
        )
        y = torch.as_tensor(np.asarray(data.y_train), device=dev)
        layers, path = layer_profile(
            model, x, y, num_classes, cfg.effective_lam, cfg.arch, cfg.norm
        )
        row.update(path)
        if run_dir is not None:
            write_json(run_dir / "profile.json", layers)
    row.update(
        {
            "grad_norm": float(st["grad_norm"]),
            "rel_change": float(st["rel_change"]),
            "converged": bool(st["converged"]),
            "stalled": bool(st.get("stalled", False)),
            "not_converged_because": "; ".join(st.get("reasons", [])),
            "epochs_done": int(result.epochs_done),
            "wall_time_s": float(result.wall_time_s),
            "device": str(result.device),
        }
    )
    return row


# --------------------------------------------------------------------------------------------
# one unit
# --------------------------------------------------------------------------------------------


def collapse_hook(data: Dataset) -> Callable[..., dict[str, float]]:
    """An eval hook for deepnet.train: NC1 and NC3 on the training and the test features at
    every evaluation point, kept in the run's history (collapse over training)."""

    def hook(epoch: int, model: Any, ev: dict[str, Any]) -> dict[str, float]:
        W = model.classifier.weight.detach()
        b = model.classifier.bias
        b = None if b is None else b.detach()
        K = data.num_classes
        out = {}
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


def run_dir_of(out_dir: Path, depth: int, seed: int) -> Path:
    return out_dir / "runs" / f"L{depth}-s{seed}"


def _base_row(preset: Preset, config: RunConfig, data: Dataset) -> dict[str, Any]:
    return {
        "preset": preset.name,
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
        "n_train": len(data.y_train),
        "num_classes": data.num_classes,
    }


def _quarantine(path: Path) -> Path:
    """Move a corrupt file aside (kept, renamed) so its unit can restart from scratch."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    return target


def run_unit(
    preset: Preset,
    depth: int,
    seed: int,
    out_dir: Path,
    data: Dataset,
    overrides: Mapping[str, Any],
    progress: bool = False,
    trainer: Callable[..., RunResult] = train,
    init_from: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Train and measure one (depth, seed) unit unless it is finished. Returns (row, trained).

    A diverging unit is recorded with ``status="diverged"`` (final: it is deterministic); any
    other failure with ``status="failed"`` and retried the next time the sweep runs. A checkpoint
    that cannot be read is moved aside and the unit restarts from scratch.
    """
    run_dir = run_dir_of(out_dir, depth, seed)
    row = read_row(run_dir)
    if row is not None and row.get("status") != "failed":
        return row, False
    config = make_run_config(
        preset, depth, seed, overrides, None if init_from is None else str(init_from)
    )
    row = _base_row(preset, config, data)
    hook = collapse_hook(data)
    try:
        try:
            result = trainer(
                config, data=data, run_dir=run_dir, resume=True, progress=progress, eval_hook=hook
            )
        except CorruptCheckpointError:
            _quarantine(run_dir / "checkpoint.pt")
            result = trainer(
                config, data=data, run_dir=run_dir, resume=True, progress=progress, eval_hook=hook
            )
        row.update(measure_run(result, data.num_classes, data, run_dir))
        row["status"] = "ok"
    except TrainingDivergedError as err:
        row.update(status="diverged", error=str(err))
    except Exception as err:  # isolation: one bad unit must not stop the sweep
        row.update(status="failed", error=f"{type(err).__name__}: {err}")
        row["traceback"] = traceback.format_exc(limit=5)
    row["run_dir"] = str(run_dir.relative_to(out_dir))
    row["config"] = config.to_dict()
    write_json(run_dir / "row.json", row)  # last: its presence marks the unit finished
    return row, True


# --------------------------------------------------------------------------------------------
# the sweep
# --------------------------------------------------------------------------------------------


def resolve_preset(
    preset: str | Preset,
    depths: Iterable[int] | None = None,
    seeds: Iterable[int] | None = None,
) -> Preset:
    """The preset with its depths/seeds overridden, deduplicated and sorted, validated."""
    if isinstance(preset, str):
        preset = get_preset(preset)
    d = tuple(sorted({int(x) for x in (preset.depths if depths is None else depths)}))
    s = tuple(sorted({int(x) for x in (preset.seeds if seeds is None else seeds)}))
    if not d or not s:
        raise ValueError("a sweep needs at least one depth and one seed")
    if d[0] < 0:
        raise ValueError(f"depths must be ≥ 0 (0 = the no-block baseline), got {list(d)}")
    if s[0] < 0:
        raise ValueError(f"seeds must be ≥ 0, got {list(s)}")
    return replace(preset, depths=d, seeds=s)


def validate_sweep(preset: Preset, overrides: Mapping[str, Any]) -> None:
    """Check every unit's settings before anything is written (ValueError, one line)."""
    unknown = set(overrides) - set(RunConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"unknown RunConfig field(s) in overrides: {sorted(unknown)}; expected names from "
            f"deepnet.RunConfig: {sorted(RunConfig.__dataclass_fields__)}"
        )
    fixed = sorted(set(overrides) & set(_UNIT_FIELDS))
    if fixed:
        raise ValueError(f"{fixed} are set by the sweep per unit; use --depths/--seeds instead")
    data_seed = {**preset.config, **overrides}.get("data_seed", 0)
    if data_seed != "per_seed" and not (isinstance(data_seed, int) and data_seed >= 0):
        raise ValueError(f"data_seed must be an integer ≥ 0 or 'per_seed', got {data_seed!r}")
    for depth in preset.depths:
        for seed in preset.seeds:
            cfg = make_run_config(preset, depth, seed, overrides, init_from="<shallower run>")
            if cfg.ln_affine:
                ufm_problem_for(cfg, np.zeros(1, dtype=np.int64), 1)  # raises the clear error


def load_sweep_data(
    preset: Preset, overrides: Mapping[str, Any], seed: int | None = None
) -> Dataset:
    """The dataset of the sweep's units of ``seed`` (default: the first seed); with a shared
    ``data_seed`` every unit trains on the same samples."""
    s = preset.seeds[0] if seed is None else seed
    return load_run_data(make_run_config(preset, preset.depths[0], s, overrides))


@contextlib.contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """One sweep per folder: an exclusive lock on OUT/.lock naming the holder's pid."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / ".lock"
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise ValueError(
                f"{out} is in use by another sweep (pid {holder}); wait for it or use another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


def _check_same_sweep(out: Path, spec: Mapping[str, Any]) -> None:
    """Refuse to mix two different sweeps' runs in one folder (depths/seeds may grow)."""
    path = out / "sweep.json"
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
        old_cfg = {**old["preset"]["config"], **old.get("overrides", {})}
    except (json.JSONDecodeError, KeyError, TypeError):
        return  # an unreadable spec is rewritten below
    new_cfg = json.loads(json.dumps({**spec["preset"]["config"], **spec.get("overrides", {})}))
    if old_cfg != new_cfg:
        changed = sorted(k for k in set(old_cfg) | set(new_cfg) if old_cfg.get(k) != new_cfg.get(k))
        raise ValueError(
            f"{out} holds a sweep with different run settings (changed: {changed}); "
            "use another --out folder or delete the old one"
        )


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
    trainer: Callable[..., RunResult] = train,
    workers: int | None = None,
    backend: str = "local",
    address: str | None = None,
    gpus_per_unit: float | None = None,
    batch_seeds: bool | None = None,
) -> SweepResult:
    """Run (or resume) a depth sweep and write its table, summary, rates, verdict and figure.

    Args:
        preset: a preset name (see ``python -m reduction presets``) or a :class:`Preset`.
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
            model (torch.func; first-order optimizers only). None = on when a GPU is present
            and the optimizer allows it. Runs in this process, depth after depth.
    """
    from tqdm.auto import tqdm

    from reduction.aggregate import report
    from reduction.execute import Context, Job, make_executor

    preset = resolve_preset(preset, depths, seeds)
    overrides = dict(overrides or {})
    validate_sweep(preset, overrides)
    batched = _want_batched(preset, overrides, batch_seeds)
    executor = make_executor(backend, 1 if batched else workers, address, gpus_per_unit)
    do_budget = preset.budget_check if budget_check is None else budget_check
    out = Path(out_dir) if out_dir is not None else Path("results") / preset.name
    spec = {"preset": asdict(preset), "overrides": overrides}
    with sweep_lock(out):
        _check_same_sweep(out, spec)
        write_json(out / "sweep.json", spec)
        if _continuation(preset, overrides):
            jobs = [Job("chain", s, preset.depths) for s in preset.seeds]
        else:  # independent units, deepest first so that the slowest start early
            jobs = [
                Job("chain", s, (d,))
                for d in sorted(preset.depths, reverse=True)
                for s in preset.seeds
            ]
        first_seed = preset.seeds[0]
        waiting = {j for j in jobs if j.seed == first_seed}
        budget_jobs = [Job("budget", first_seed, (d,)) for d in budget_depths(preset)]
        n_units = len(preset.depths) * len(preset.seeds) + (len(budget_jobs) if do_budget else 0)
        bar = tqdm(total=n_units, desc=f"sweep {preset.name}", unit="run", disable=not progress)
        trained = 0
        state = {"finished": -1}

        def poll() -> None:
            """Progress and results.csv from the run folders (cheap: reads row.json files)."""
            finished = sum(
                read_row(run_dir_of(out, d, s)) is not None
                for s in preset.seeds
                for d in preset.depths
            )
            if do_budget:
                finished += sum(
                    read_row(run_dir_of(out / "budget2x", d, first_seed)) is not None
                    for d in budget_depths(preset)
                )
            if finished != state["finished"]:
                state["finished"] = finished
                bar.n = finished
                bar.refresh()
                report(out, preset=preset, tables_only=True)

        def on_done(job: Job, result: list[tuple[int, int, bool]]) -> list[Job]:
            nonlocal trained
            if job.kind == "chain":
                trained += sum(did for _, _, did in result)
            waiting.discard(job)
            if do_budget and job.kind == "chain" and job.seed == first_seed and not waiting:
                return budget_jobs  # the 1x runs they extend are finished
            return []

        ctx = Context(preset, overrides, out, data, trainer, progress and executor.serial)
        if batched:
            trained += _run_batched(
                preset, out, DataCache(preset, overrides, data), overrides, poll
            )
            jobs = budget_jobs if do_budget else []  # every unit is done
        executor.run(jobs, ctx, on_done, poll)
        poll()
        bar.close()
        checks = budget_summary(preset, out, overrides) if do_budget else []
        result = report(out, preset=preset, budget_checks=checks)
    result.trained = trained
    return result


def _want_batched(preset: Preset, overrides: Mapping[str, Any], batch_seeds: bool | None) -> bool:
    """Whether to batch seeds: on request (checked: one clear error when the config cannot be
    batched), or by default on a GPU when it can."""
    import torch

    from deepnet.batched import check_batchable

    configs = [make_run_config(preset, preset.depths[-1], s, overrides) for s in preset.seeds]
    if batch_seeds is None:
        if not torch.cuda.is_available() or len(configs) < 2:
            return False
        try:
            check_batchable(configs)
        except ValueError:
            return False
        return True
    if batch_seeds:
        check_batchable(configs)  # ValueError: e.g. L-BFGS needs a line search per seed
    return bool(batch_seeds)


def _run_batched(
    preset: Preset,
    out: Path,
    datasets: DataCache,
    overrides: Mapping[str, Any],
    after: Callable[[], None],
) -> int:
    """Depth after depth, train every seed's fresh unit at once (deepnet.batched) and measure
    each like any unit; units with a checkpoint (interrupted) resume one by one."""
    from deepnet.batched import train_batched

    chain = _continuation(preset, overrides)
    trained = 0
    source: dict[int, str | None] = {s: None for s in preset.seeds}
    for depth in preset.depths:
        fresh, configs = [], []
        for seed in preset.seeds:
            folder = run_dir_of(out, depth, seed)
            row = read_row(folder)
            if row is None or row.get("status") == "failed":
                if not (folder / "checkpoint.pt").exists():
                    fresh.append(seed)
                    init = source[seed] if chain else None
                    configs.append(make_run_config(preset, depth, seed, overrides, init))
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
        for seed in preset.seeds:
            pre = results.get(seed)

            def trainer(config: RunConfig, pre: RunResult | None = pre, **kw: Any) -> RunResult:
                return pre if pre is not None else train(config, **kw)

            init = source[seed] if chain else None
            row, did = run_unit(
                preset, depth, seed, out, datasets.get(seed), overrides, False, trainer, init
            )
            trained += int(did)
            if row.get("status") == "ok" and depth > 0:  # see run_chain: depth 0 is no source
                source[seed] = f"../{Path(row['run_dir']).name}"
            after()
    return trained


class DataCache:
    """Datasets by subset seed, each loaded once."""

    def __init__(self, preset: Preset, overrides: Mapping[str, Any], data: Dataset | None):
        self.preset, self.overrides, self.given = preset, overrides, data
        self.cache: dict[int, Dataset] = {}

    def get(self, seed: int) -> Dataset:
        if self.given is not None:
            return self.given
        key = make_run_config(self.preset, self.preset.depths[0], seed, self.overrides).subset_seed
        if key not in self.cache:
            self.cache[key] = load_sweep_data(self.preset, self.overrides, seed)
        return self.cache[key]


def _continuation(preset: Preset, overrides: Mapping[str, Any]) -> bool:
    return {**preset.config, **overrides}.get("init") == "continuation"


def run_chain(
    preset: Preset,
    seed: int,
    out: Path,
    data: Dataset,
    overrides: Mapping[str, Any],
    progress: bool,
    trainer: Callable[..., RunResult],
) -> Iterator[tuple[int, bool]]:
    """Run the depths of one seed in increasing order; with continuation each starts from the
    deepest finished shallower unit of the chain. Yields (depth, trained) per unit."""
    chain = _continuation(preset, overrides)
    source: str | None = None
    for depth in preset.depths:
        row, did = run_unit(
            preset, depth, seed, out, data, overrides, progress, trainer, source if chain else None
        )
        if row.get("status") == "ok" and depth > 0:
            # relative to the unit's own folder, so a sweep folder can move (or travel to a
            # Ray worker) and its configs still point at the right runs. The depth-0 baseline is
            # never a source: for a CLS transformer its feature cannot see the input, so its
            # optimum (W = 0, J = log K) padded with near-zero blocks is a saddle point that
            # continuation would never leave; the shallowest depth with blocks starts afresh.
            source = f"../{Path(row['run_dir']).name}"
        yield depth, did


def budget_depths(preset: Preset) -> list[int]:
    """The depths rerun with twice the budget: the shallowest with blocks and the deepest (the
    depth-0 baseline is a small smooth problem and is not rerun)."""
    with_blocks = [d for d in preset.depths if d > 0] or list(preset.depths)
    return sorted({min(with_blocks), max(with_blocks)})


def _budget_overrides(preset: Preset, overrides: Mapping[str, Any]) -> dict[str, Any]:
    epochs = int({**preset.config, **overrides}.get("epochs", RunConfig().epochs))
    return {**overrides, "epochs": 2 * epochs}


def budget_unit(
    preset: Preset,
    depth: int,
    seed: int,
    out: Path,
    datasets: DataCache,
    overrides: Mapping[str, Any],
    progress: bool,
    trainer: Callable[..., RunResult],
) -> bool:
    """Train the 2×-budget rerun of (depth, seed) under OUT/budget2x (THEORY §9).

    Schedule-free runs (L-BFGS, constant lr) are continued from their finished checkpoint (a run
    with twice the budget is exactly the run continued); others are retrained from scratch from
    the same start. Returns whether anything was trained.
    """
    base = read_row(run_dir_of(out, depth, seed))
    if base is None or base.get("status") != "ok":
        return False
    base_cfg = RunConfig.from_dict(base["config"])
    sub_out = out / "budget2x"
    target = run_dir_of(sub_out, depth, seed)
    src = out / base["run_dir"]
    if base_cfg.schedule_free and not (target / "checkpoint.pt").exists():
        target.mkdir(parents=True, exist_ok=True)
        for name in ("checkpoint.pt", "config.json"):
            shutil.copy2(src / name, target / name)
    init_from = None
    if base_cfg.init_from:  # the same start as the 1x unit, seen from the 2x unit's folder
        init_from = os.path.relpath(src / base_cfg.init_from, target)
    sub = replace(preset, name=preset.name + "-budget2x")
    _, did = run_unit(
        sub,
        depth,
        seed,
        sub_out,
        datasets.get(seed),
        _budget_overrides(preset, overrides),
        progress,
        trainer,
        init_from,
    )
    return did


def budget_summary(preset: Preset, out: Path, overrides: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Compare each 2× rerun with its 1× run. The check passes when the rerun is converged by its
    own criteria and J moved by ≤ BUDGET_TOL. Sign convention everywhere:
    rel_improvement_2x = (J_1x − J_2x)/|J_2x| > 0 when the larger budget lowered J."""
    seed = preset.seeds[0]
    epochs = _budget_overrides(preset, overrides)["epochs"] // 2
    checks = []
    for depth in budget_depths(preset):
        base = read_row(run_dir_of(out, depth, seed))
        row = read_row(run_dir_of(out / "budget2x", depth, seed))
        if base is None or base.get("status") != "ok":
            continue
        if row is None or row.get("status") != "ok":
            status = "missing" if row is None else row.get("status")
            checks.append({"depth": depth, "seed": seed, "status": status, "ok": False})
            continue
        rel = (base["objective"] - row["objective"]) / abs(row["objective"])
        checks.append(
            {
                "depth": depth,
                "seed": seed,
                "status": "ok",
                "epochs": epochs,
                "objective": base["objective"],
                "objective_2x": row["objective"],
                "rel_improvement_2x": rel,
                "tolerance": BUDGET_TOL,
                "converged_2x": bool(row["converged"]),
                "grad_norm_2x": row["grad_norm"],
                "ok": bool(row["converged"] and abs(rel) <= BUDGET_TOL),
                "nc1": base["nc1"],
                "nc1_2x": row["nc1"],
                "objective_gap": base["objective_gap"],
                "objective_gap_2x": row["objective_gap"],
            }
        )
    return checks
