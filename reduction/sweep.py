"""The depth sweep: train one architecture over depths × seeds and measure each run (THEORY §10).

Layout of a sweep folder ``OUT``::

    OUT/sweep.json            the preset and overrides that define the sweep
    OUT/runs/L{depth}-s{seed}/config.json, metrics.json, checkpoint.pt, features.npz   (deepnet)
    OUT/runs/L{depth}-s{seed}/row.json   the finished unit: config + objective split + metrics
    OUT/budget2x/runs/...     the 2×-budget reruns of the extreme depths
    OUT/results.csv, summary.csv, rates.csv, summary.json, figure.png/.pdf   (see aggregate.py)

A unit is finished exactly when its ``row.json`` exists, is complete (every key a row must
have) and is written atomically, last. A sweep that is killed and restarted skips finished units;
an interrupted unit resumes from its checkpoint.

What a folder holds is checked, not trusted (README, "Reliability"): every row and run folder
carries the fingerprint of the settings that produced it (:func:`deepnet.config.fingerprint`),
and a sweep refuses to add runs to a folder whose runs were made with other settings, whether or
not sweep.json is there; ``results.csv`` is rebuilt from matching rows only. A finished run whose
config.json disagrees with its row.json or checkpoint (an edited folder) is refused.
With ``init="continuation"`` the depths of one seed form a chain: depth L starts from the
finished next-shallower run of the same seed, padded with near-identity blocks, so
J_L(run) starts at J_{L'}(run) up to the near-identity padding and L-BFGS only descends; the
monotone certificate (aggregate.py) checks J_L(run) ≤ J_{L'}(run) (THEORY §10).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ufm
from deepnet import (
    RunConfig,
    RunResult,
    TrainingDivergedError,
    load_run_data,
    train,
)
from deepnet.config import (
    MAX_DEPTH,
    RESUME_FREE,
    fingerprint_diff,
    fingerprint_fields,
    fingerprint_of,
)
from deepnet.data import Dataset
from deepnet.io import (
    CorruptCheckpointError,
    CorruptSourceError,
    checkpoint_summary,
    depth_of_state,
    write_json,
)
from deepnet.train import check_threads
from reduction.distance import distance_to_optimum, group_distance
from reduction.metrics import collapse_metrics
from reduction.presets import Preset, get_preset
from reduction.results import (  # torch-free (report reads them)
    SweepResult,
    read_row,
)

#: the 2×-budget rerun passes when J moves by at most this fraction (of J_2x) and the rerun
#: is itself converged by its own criteria (THEORY §9)
BUDGET_TOL = 0.01

#: the 2× reruns' budgets differ per unit (twice what each 1× run used): not in their fingerprint
BUDGET_FREE = ("epochs",)
#: RunConfig fields a sweep sets per unit (not allowed as overrides)
_UNIT_FIELDS = ("depth", "seed", "init_from")
#: a unit whose worker process died this many times (killed by a signal, e.g. out of memory) is
#: recorded as failed for good instead of being retried on every restart
MAX_WORKER_DEATHS = 2

log = logging.getLogger("deepcollapse")


@dataclass(frozen=True)
class SweepIdentity:
    """The settings a sweep's runs share, and their fingerprint (:func:`sweep_identity`)."""

    fingerprint: str
    fields: dict[str, Any]
    per_seed: bool  # each seed draws its own data subset
    continuation: bool  # init="continuation": the depths of a seed form a chain
    #: further fields that may differ between the units (the 2× reruns' budgets do)
    free: tuple[str, ...] = ()

    def fields_of(self, config: RunConfig) -> dict[str, Any]:
        fields = fingerprint_fields(config, per_seed=self.per_seed, continuation=self.continuation)
        return {k: v for k, v in fields.items() if k not in self.free}

    def fingerprint_of(self, config: RunConfig) -> str:
        """The fingerprint of one unit's config, seen as a unit of a sweep like this one."""
        return fingerprint_of(self.fields_of(config))

    def diff(self, config: RunConfig, *, unfinished: bool = False) -> str:
        """'' when ``config`` is a unit of this sweep, else the fields that differ (one line).
        ``unfinished``: a schedule-free run stopped short of this sweep's budget is one of its
        units (resuming it with the larger budget continues it, as deepnet.train allows)."""
        theirs = self.fields_of(config)
        if (
            unfinished
            and config.schedule_free
            and "epochs" in theirs
            and theirs.get("epochs") != self.fields["epochs"]
        ):
            if int(theirs["epochs"]) <= int(self.fields["epochs"]):
                theirs = {**theirs, "epochs": self.fields["epochs"]}
        return fingerprint_diff(self.fields, theirs) if theirs != self.fields else ""


def _free(preset: Preset) -> tuple[str, ...]:
    """The fields a sweep's units may differ in beyond depth and seed: the budgets of the 2×
    reruns (each twice what its own 1× run used)."""
    return BUDGET_FREE if preset.name.endswith("-budget2x") else ()


def sweep_identity(
    preset: Preset, overrides: Mapping[str, Any], free: tuple[str, ...] = ()
) -> SweepIdentity:
    """The fingerprint of a sweep: that of its units' resolved RunConfig (preset + overrides)
    minus the per-unit and resume-free fields (THEORY-free bookkeeping, see
    :func:`deepnet.config.fingerprint_fields`) and ``free``. Every unit of the sweep has this
    fingerprint."""
    merged = {**preset.config, **overrides}
    ident = SweepIdentity("", {}, merged.get("data_seed", 0) == "per_seed",
                          merged.get("init") == "continuation", tuple(free))  # fmt: skip
    config = make_run_config(
        preset, max(preset.depths), preset.seeds[0], overrides, init_from="<shallower run>"
    )
    fields = ident.fields_of(config)
    return replace(ident, fingerprint=fingerprint_of(fields), fields=fields)


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
            "escape_rel": float(st.get("escape_rel", math.nan)),
            "escape_lbfgs_rel": float(st.get("escape_lbfgs_rel", math.nan)),
            "escape_adam_rel": float(st.get("escape_adam_rel", math.nan)),
            "epochs_done": int(result.epochs_done),
            "escape_steps": int(getattr(result, "escape_steps", 0)),
            "lbfgs_resets": int(getattr(result, "lbfgs_resets", 0)),
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


def _final(row: Mapping[str, Any]) -> bool:
    """Whether a finished unit stays as it is: ok and diverged rows (deterministic), and failed
    units whose worker process died MAX_WORKER_DEATHS times; other failures are retried."""
    if row.get("status") != "failed":
        return True
    return int(row.get("worker_deaths") or 0) >= MAX_WORKER_DEATHS


def _config_row(preset: Preset, config: RunConfig) -> dict[str, Any]:
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
    }


def _base_row(preset: Preset, config: RunConfig, data: Dataset) -> dict[str, Any]:
    return {
        **_config_row(preset, config),
        "n_train": len(data.y_train),
        "num_classes": data.num_classes,
    }


def _quarantine(path: Path) -> Path:
    """Move a corrupt file aside (kept, renamed) so its unit can restart from scratch."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    return target


RUNNING = ".running"  # in a unit's folder while a process trains it: {"pid": …}


def _mark_running(run_dir: Path) -> None:
    write_json(run_dir / RUNNING, {"pid": os.getpid(), "started": time.time()})


def _clear_running(run_dir: Path) -> None:
    with contextlib.suppress(OSError):
        (run_dir / RUNNING).unlink(missing_ok=True)


def running_pid(run_dir: Path) -> int | None:
    """The pid of the process that started training this unit and has not finished it."""
    try:
        return int(json.loads((run_dir / RUNNING).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
    other failure, a folder that cannot be written included, with ``status="failed"`` and
    retried the next time the sweep runs (unless its worker process died MAX_WORKER_DEATHS
    times). A checkpoint that cannot be read is moved aside and the unit restarts from scratch.
    A row that cannot be written comes back with ``unsaved=True`` (the driver reports it). The
    one exception that leaves: :class:`CorruptSourceError` (the chain redoes its source).
    """
    run_dir = run_dir_of(out_dir, depth, seed)
    row = read_row(run_dir)
    if row is not None and _final(row):
        return row, False
    config = make_run_config(
        preset, depth, seed, overrides, None if init_from is None else str(init_from)
    )
    row = _base_row(preset, config, data)
    row["fingerprint"] = sweep_identity(preset, overrides, _free(preset)).fingerprint
    hook = collapse_hook(data)
    try:
        _mark_running(run_dir)  # how the driver tells which unit a dead worker was running
        check_threads(config.num_threads)
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
    except CorruptSourceError:
        _clear_running(run_dir)
        raise
    except TrainingDivergedError as err:
        row.update(status="diverged", error=str(err))
    except Exception as err:  # isolation: one bad unit must not stop the sweep
        row.update(status="failed", error=f"{type(err).__name__}: {err}")
        row["traceback"] = traceback.format_exc(limit=5)
    row["run_dir"] = str(run_dir.relative_to(out_dir))
    row["config"] = config.to_dict()
    try:
        write_json(run_dir / "row.json", row)  # last: its presence marks the unit finished
    except OSError as err:  # an unwritable folder, a full disk: this unit's error, in memory
        cause = f"row.json cannot be written ({type(err).__name__}: {err})"
        row["error"] = f"{row['error']}; {cause}" if row.get("error") else cause
        row.update(status="failed", unsaved=True)
    _clear_running(run_dir)
    return row, True


def record_worker_death(
    out: Path, folder: str, cause: str, preset: Preset, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Record that the worker process training the unit in ``out/folder`` died (``cause``): a
    failed row, and the count of such deaths in the unit's folder (``worker_deaths.json``), so
    that a unit that kills its worker (e.g. out of memory) is not retried forever."""
    run_dir = out / folder
    base = out / "budget2x" if folder.startswith("budget2x/") else out
    if base != out:
        preset = replace(preset, name=preset.name + "-budget2x")
        overrides = {**overrides, "until_converged": False}
    depth, seed = (int(x[1:]) for x in run_dir.name.split("-"))
    deaths_file = run_dir / "worker_deaths.json"
    try:
        deaths = json.loads(deaths_file.read_text())
        count = int(deaths["count"]) + 1
        causes = list(deaths["causes"])
    except (OSError, ValueError, KeyError, TypeError):
        count, causes = 1, []
    try:
        config = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    except (OSError, ValueError, TypeError):
        config = make_run_config(preset, depth, seed, overrides)
    if count >= MAX_WORKER_DEATHS:
        note = f"it killed its worker {count} times: not retried (delete its row.json to retry)"
    else:
        note = "retried once"
    row = {
        **_config_row(preset, config),
        "status": "failed",
        "error": f"worker process died while training this unit: {cause}; {note}",
        "worker_deaths": count,
        "fingerprint": sweep_identity(preset, overrides, _free(preset)).fingerprint,
        "run_dir": str(run_dir.relative_to(base)),
        "config": config.to_dict(),
    }
    try:
        write_json(deaths_file, {"count": count, "causes": [*causes, cause]})
        write_json(run_dir / "row.json", row)
    except OSError as err:
        row.update(unsaved=True, error=f"{row['error']}; row.json cannot be written ({err})")
    _clear_running(run_dir)
    return row


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
    if d[-1] > MAX_DEPTH:
        raise ValueError(
            f"depths must be ≤ {MAX_DEPTH:,} (a guard against typos: deeper networks do not fit "
            f"in memory), got {d[-1]:,}"
        )
    if s[0] < 0:
        raise ValueError(f"seeds must be ≥ 0, got {list(s)}")
    return replace(preset, depths=d, seeds=s)


def preset_from_spec(p: Mapping[str, Any]) -> Preset:
    """The :class:`Preset` recorded in a sweep.json (``asdict`` of it, lists for tuples)."""
    return Preset(
        **{
            **p,
            "depths": tuple(p["depths"]),
            "seeds": tuple(p["seeds"]),
            "metrics": tuple(p["metrics"]),
            "verdict_metrics": tuple(p.get("verdict_metrics", Preset.verdict_metrics)),
        }
    )


def validate_sweep(preset: Preset, overrides: Mapping[str, Any], *, local: bool = True) -> None:
    """Check every unit's settings before anything is written (ValueError, one line). ``local``:
    the units run on this machine, so their thread count must fit its cores."""
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
    if local:
        check_threads(cfg.num_threads)


def load_sweep_data(
    preset: Preset, overrides: Mapping[str, Any], seed: int | None = None
) -> Dataset:
    """The dataset of the sweep's units of ``seed`` (default: the first seed); with a shared
    ``data_seed`` every unit trains on the same samples."""
    s = preset.seeds[0] if seed is None else seed
    return load_run_data(make_run_config(preset, preset.depths[0], s, overrides))


def check_sweep_data(preset: Preset, overrides: Mapping[str, Any]) -> Dataset:
    """Load the first seed's data: an unknown dataset, too many samples per class, an unknown
    data option or a missing ``data_root`` is one ValueError before the sweep writes anything."""
    try:
        return load_sweep_data(preset, overrides)
    except (ValueError, OSError, KeyError, TypeError) as err:
        text = str(err) if isinstance(err, ValueError | OSError) else f"{type(err).__name__}: {err}"
        raise ValueError(f"the sweep's data cannot be loaded: {text}") from None


@contextlib.contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """One sweep per folder: an exclusive lock on OUT/.lock naming the holder's pid. A sweep
    refused before it wrote anything leaves no folder it created behind."""
    created = not out.exists()
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
    except BaseException:
        if created and {p.name for p in out.iterdir()} == {".lock"}:
            path.unlink()
            out.rmdir()
        raise
    finally:
        fh.close()


def _read_spec_identity(out: Path) -> tuple[str, SweepIdentity | None]:
    """("absent" | "garbage" | "ok", the identity sweep.json records)."""
    path = out / "sweep.json"
    if not path.exists():
        return "absent", None
    try:
        spec = json.loads(path.read_text())
        ident = sweep_identity(preset_from_spec(spec["preset"]), dict(spec.get("overrides") or {}))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return "garbage", None  # json.JSONDecodeError is a ValueError
    return "ok", ident


def _disagreement(a: Mapping[str, Any], b: Mapping[str, Any], names: tuple[str, str]) -> str:
    """The first field two configs differ in (beyond those a resumption may change), in words."""
    keys = [k for k in sorted(set(a) | set(b)) if k not in RESUME_FREE and a.get(k) != b.get(k)]
    if not keys:
        return ""
    k = keys[0]
    more = f", and {len(keys) - 1} more field(s)" if len(keys) > 1 else ""
    return f"{k}: {a.get(k)!r} in {names[0]}, {b.get(k)!r} in {names[1]}{more}"


def _read_config(path: Path) -> RunConfig | None:
    """config.json as a RunConfig; None when absent; ValueError when it is not one."""
    if not path.exists():
        return None
    try:
        return RunConfig.from_dict(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:
        raise ValueError(f"config.json is not a readable run config ({err})") from None


def run_folder_problem(run_dir: Path, identity: SweepIdentity) -> str:
    """Why the sweep ``identity`` may not add to this run folder ('' when it may).

    A finished row must be of this sweep's settings and agree with the config.json and the
    checkpoint beside it (what each says the run is); an unfinished folder's config.json and
    checkpoint must be of this sweep's settings (a schedule-free run may be continued to a
    larger budget). An unreadable checkpoint is not a problem here: it is moved aside when the
    unit (or a continuation from it) needs it.
    """
    row = read_row(run_dir)
    try:
        written = _read_config(run_dir / "config.json")
    except ValueError as err:
        if row is not None and row["status"] == "ok":
            return f"{err}: the folder was edited or damaged; restore it or delete the run folder"
        written = None  # an unfinished unit rewrites it from its checkpoint's config
    edited = "the folder was edited; restore it or delete the run folder"
    if row is not None:
        try:
            config = RunConfig.from_dict(dict(row["config"]))
        except (ValueError, TypeError) as err:
            return f"row.json holds no run config this version can read ({err})"
        diff = identity.diff(config)
        if diff:
            return f"holds a run made with other settings ({diff})"
        if row["status"] != "ok":
            return ""
        if written is not None:
            d = _disagreement(written.to_dict(), config.to_dict(), ("config.json", "row.json"))
            if d:
                return f"config.json disagrees with row.json ({d}): {edited}"
        ckpt = run_dir / "checkpoint.pt"
        if ckpt.exists():
            try:
                summary = checkpoint_summary(ckpt)
                stored = RunConfig.from_dict(dict(summary["config"])).to_dict()
            except (CorruptCheckpointError, ValueError, TypeError):
                return ""  # unusable: moved aside and redone if a continuation needs it
            d = _disagreement(stored, config.to_dict(), ("checkpoint.pt", "row.json"))
            if d:
                return f"checkpoint.pt disagrees with row.json ({d}): {edited}"
            held = depth_of_state(summary["shapes"])
            if held != config.depth:
                return f"checkpoint.pt holds {held} blocks, row.json says depth {config.depth}"
        return ""
    configs = [] if written is None else [("config.json", written)]
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.exists():
        with contextlib.suppress(CorruptCheckpointError, ValueError, TypeError):
            configs.append(
                ("checkpoint.pt", RunConfig.from_dict(checkpoint_summary(ckpt)["config"]))
            )
    for name, config in configs:
        diff = identity.diff(config, unfinished=True)
        if diff:
            return f"{name} is of a run made with other settings ({diff})"
    return ""


def folder_problems(
    out: Path, identity: SweepIdentity, budget: SweepIdentity | None = None
) -> list[str]:
    """Every run folder under OUT (and OUT/budget2x, against ``budget``) that the sweep may not
    add to, as 'runs/L2-s0: why' (see :func:`run_folder_problem`)."""
    problems = []
    for base, ident in ((out, identity), (out / "budget2x", budget)):
        if ident is None:
            continue
        for run_dir in sorted((base / "runs").glob("L*-s*")):
            if run_dir.is_dir():
                why = run_folder_problem(run_dir, ident)
                if why:
                    problems.append(f"{run_dir.relative_to(out)}: {why}")
    return problems


def check_folder(out: Path, identity: SweepIdentity, budget: SweepIdentity | None) -> str:
    """Refuse (ValueError, one line) to add to a folder holding runs of other settings, whether
    or not its sweep.json is present and readable. Returns what sweep.json held: "absent",
    "ok" or "garbage" (unreadable, and the run folders agree: it may be written anew)."""
    state, old = _read_spec_identity(out)
    if old is not None and old.fingerprint != identity.fingerprint:
        raise ValueError(
            f"{out} holds a sweep with different run settings "
            f"({fingerprint_diff(identity.fields, old.fields)}); use another --out folder or "
            "delete the old one"
        )
    problems = folder_problems(out, identity, budget)
    if problems:
        more = f" (and {len(problems) - 1} more run folder(s))" if len(problems) > 1 else ""
        why = "sweep.json is unreadable and " if state == "garbage" else ""
        raise ValueError(
            f"{out}: {why}{problems[0]}{more}; this sweep does not mix runs of other settings "
            "into one folder: use another --out folder or delete those runs"
        )
    return state


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

    Everything that can be checked before training is checked before anything is written (the
    settings, the data, the backend, the folder's runs): a refused sweep leaves the folder as
    it found it (README, "Reliability").
    """
    from tqdm.auto import tqdm

    from reduction.aggregate import report
    from reduction.execute import Context, Job, make_executor

    preset = resolve_preset(preset, depths, seeds)
    overrides = dict(overrides or {})
    validate_sweep(preset, overrides, local=backend != "ray")
    identity = sweep_identity(preset, overrides)
    budget_identity = sweep_identity(
        replace(preset, name=preset.name + "-budget2x"),
        {**overrides, "until_converged": False},
        free=BUDGET_FREE,
    )
    batched = _want_batched(preset, overrides, batch_seeds)
    executor = make_executor(backend, 1 if batched else workers, address, gpus_per_unit)
    try:
        preloaded = None if data is not None else executor.check_data(preset, overrides)
        if not executor.serial:
            preloaded = None  # workers load their own; the driver need not hold it meanwhile
        do_budget = preset.budget_check if budget_check is None else budget_check
        out = Path(out_dir) if out_dir is not None else Path("results") / preset.name
        spec = {
            "preset": asdict(preset),
            "overrides": overrides,
            "fingerprint": identity.fingerprint,
        }
        with sweep_lock(out):
            if check_folder(out, identity, budget_identity) == "garbage":
                kept = _quarantine(out / "sweep.json")
                log.warning(
                    "notice: %s was unreadable (kept as %s); its run folders agree with this "
                    "sweep, so it is written anew",
                    out / "sweep.json",
                    kept.name,
                )
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
            n_units = len(preset.depths) * len(preset.seeds) + (
                len(budget_jobs) if do_budget else 0
            )
            bar = tqdm(total=n_units, desc=f"sweep {preset.name}", unit="run", disable=not progress)
            trained = 0
            state = {"finished": -1}
            unsaved: dict[str, dict[str, Any]] = {}  # rows whose folder could not be written

            def keep_unsaved(rows: Iterable[dict[str, Any]]) -> None:
                for row in rows:
                    unsaved[row["run_dir"]] = row

            def poll() -> None:
                """Progress and results.csv from the run folders (cheap: reads row.json files)."""
                keep_unsaved(executor.take_lost_rows())
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
                finished += len(unsaved)
                if finished != state["finished"]:
                    state["finished"] = finished
                    bar.n = finished
                    bar.refresh()
                    report(
                        out, preset=preset, tables_only=True, identity=identity,
                        extra_rows=list(unsaved.values()),
                    )  # fmt: skip

            def on_done(job: Job, result: list[tuple[int, int, bool, dict | None]]) -> list[Job]:
                nonlocal trained
                if job.kind == "chain":
                    trained += sum(did for _, _, did, _ in result)
                    keep_unsaved(row for *_, row in result if row is not None)
                waiting.discard(job)
                if do_budget and job.kind == "chain" and job.seed == first_seed and not waiting:
                    return budget_jobs  # the 1x runs they extend are finished
                return []

            ctx = Context(preset, overrides, out, data, trainer, progress and executor.serial)
            if executor.serial and preloaded is not None:
                ctx.preloaded = preloaded  # in this process only: never pickled to a worker
            if batched:
                lost: list[dict[str, Any]] = []
                trained += _run_batched(
                    preset, out, DataCache(preset, overrides, data, preloaded), overrides, poll,
                    lost,
                )  # fmt: skip
                keep_unsaved(lost)
                jobs = budget_jobs if do_budget else []  # every unit is done
            executor.run(jobs, ctx, on_done, poll)
            poll()
            bar.close()
            checks = budget_summary(preset, out, overrides) if do_budget else []
            result = report(
                out, preset=preset, budget_checks=checks, identity=identity,
                extra_rows=list(unsaved.values()),
            )  # fmt: skip
    finally:
        executor.close()
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
    unsaved: list[dict[str, Any]] | None = None,
) -> int:
    """Depth after depth, train every seed's fresh unit at once (deepnet.batched) and measure
    each like any unit; units with a checkpoint (interrupted) resume one by one. Rows that could
    not be written are appended to ``unsaved``. A finished source whose checkpoint is unreadable
    is moved aside and redone, as in :func:`run_chain`."""
    trained = 0
    for _ in range(len(preset.depths) + 1):
        try:
            return trained + _batched_pass(preset, out, datasets, overrides, after, unsaved)
        except CorruptSourceError as err:
            discard_source(err, out)
    raise ValueError(f"{out}: the runs keep losing their checkpoints; check the disk")


def _batched_pass(
    preset: Preset,
    out: Path,
    datasets: DataCache,
    overrides: Mapping[str, Any],
    after: Callable[[], None],
    unsaved: list[dict[str, Any]] | None,
) -> int:
    from deepnet.batched import train_batched

    chain = _continuation(preset, overrides)
    trained = 0
    source: dict[int, str | None] = {s: None for s in preset.seeds}
    for depth in preset.depths:
        fresh, configs = [], []
        for seed in preset.seeds:
            folder = run_dir_of(out, depth, seed)
            row = read_row(folder)
            if row is None or not _final(row):
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
            if row.get("unsaved") and unsaved is not None:
                unsaved.append(row)
            if row.get("status") == "ok" and depth > 0:  # see run_chain: depth 0 is no source
                source[seed] = f"../{Path(row['run_dir']).name}"
            after()
    return trained


class DataCache:
    """Datasets by subset seed, each loaded once (``preloaded``: one already loaded, e.g. by
    the sweep's data check, for the first seed's subset)."""

    def __init__(
        self,
        preset: Preset,
        overrides: Mapping[str, Any],
        data: Dataset | None,
        preloaded: Dataset | None = None,
    ):
        self.preset, self.overrides, self.given = preset, overrides, data
        self.cache: dict[int, Dataset] = {}
        if preloaded is not None:
            self.cache[self._key(preset.seeds[0])] = preloaded

    def _key(self, seed: int) -> int:
        return make_run_config(self.preset, self.preset.depths[0], seed, self.overrides).subset_seed

    def get(self, seed: int) -> Dataset:
        if self.given is not None:
            return self.given
        key = self._key(seed)
        if key not in self.cache:
            self.cache[key] = load_sweep_data(self.preset, self.overrides, seed)
        return self.cache[key]


def _continuation(preset: Preset, overrides: Mapping[str, Any]) -> bool:
    return {**preset.config, **overrides}.get("init") == "continuation"


def discard_source(err: CorruptSourceError, out: Path) -> None:
    """A finished run that a continuation needs has a missing or unreadable checkpoint: move
    its checkpoint and row aside (kept, renamed), so that the chain redoes it from the last good
    run before it. Only runs of this sweep folder are touched."""
    source = err.source.resolve()
    runs = (out / "runs").resolve()
    if source.parent != runs or not (source / "row.json").exists():
        raise ValueError(str(err)) from None
    for name in ("checkpoint.pt", "row.json"):
        if (source / name).exists():
            _quarantine(source / name)
    log.warning("notice: %s; moved aside, that run is trained again", err)


def run_chain(
    preset: Preset,
    seed: int,
    out: Path,
    data: Dataset,
    overrides: Mapping[str, Any],
    progress: bool,
    trainer: Callable[..., RunResult],
) -> Iterator[tuple[int, bool, dict[str, Any] | None]]:
    """Run the depths of one seed in increasing order; with continuation each starts from the
    deepest finished shallower unit of the chain. Yields (depth, trained, the row when it could
    not be written) per unit.

    When the finished run a unit would continue from has lost its checkpoint (missing or
    unreadable), that run is moved aside and the chain starts over: finished units are skipped,
    the damaged one is trained again from the last good run before it, and the chain goes on.
    """
    for _ in range(len(preset.depths) + 1):
        try:
            yield from _chain_pass(preset, seed, out, data, overrides, progress, trainer)
            return
        except CorruptSourceError as err:
            discard_source(err, out)
    raise ValueError(f"{out}: the runs of seed {seed} keep losing their checkpoints")


def _chain_pass(
    preset: Preset,
    seed: int,
    out: Path,
    data: Dataset,
    overrides: Mapping[str, Any],
    progress: bool,
    trainer: Callable[..., RunResult],
) -> Iterator[tuple[int, bool, dict[str, Any] | None]]:
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
            # continuation would never leave; and for L-RN1 on MNIST-1D a chain from it was
            # measured to settle at depth 13 at J = 0.111 against 0.068 from a fresh depth 2
            # (its second block cancels the residual stream, THEORY §9). The shallowest depth
            # with blocks starts afresh.
            source = f"../{Path(row['run_dir']).name}"
        yield depth, did, row if row.get("unsaved") else None


def budget_depths(preset: Preset) -> list[int]:
    """The depths rerun with twice the budget: the shallowest with blocks and the deepest (the
    depth-0 baseline is a small smooth problem and is not rerun)."""
    with_blocks = [d for d in preset.depths if d > 0] or list(preset.depths)
    return sorted({min(with_blocks), max(with_blocks)})


def _iterations_used(row: Mapping[str, Any]) -> int:
    """Iterations (epochs) a finished run used: its L-BFGS iterations plus adopted probe steps."""
    return int(row.get("epochs_done", 0) or 0) + int(row.get("escape_steps", 0) or 0)


def _budget_overrides(
    preset: Preset, overrides: Mapping[str, Any], base: Mapping[str, Any]
) -> dict[str, Any]:
    """The 2× rerun's settings: twice the iterations the 1× run used (at least one more chunk),
    run to the end whatever the criteria say (``until_converged=False``)."""
    cfg = RunConfig.from_dict(base["config"])
    if not cfg.schedule_free:  # a schedule over the budget: retrained with twice the epochs
        return {**overrides, "epochs": 2 * cfg.epochs}
    used = _iterations_used(base)
    extra = max(used, cfg.chunk_epochs or 1)  # an explicit chunk must fit in the cap
    return {**overrides, "epochs": used + extra, "until_converged": False}


def _fresh_copy(src: Path, target: Path) -> None:
    """Copy a finished run's checkpoint into ``target`` with empty optimiser state: the 2× rerun
    continues from the same point with nothing remembered (fresh L-BFGS memory, no stall flag),
    so it must execute real iterations."""
    from deepnet.io import load_checkpoint, save_checkpoint

    state = load_checkpoint(src / "checkpoint.pt")
    state["optimizer"] = {"first": None, "lbfgs": None}
    loop = dict(state.get("loop", {}))
    loop.update(stalled=False, finished=False, fresh=True, current=None)
    state["loop"] = loop
    target.mkdir(parents=True, exist_ok=True)
    save_checkpoint(target / "checkpoint.pt", state)
    shutil.copy2(src / "config.json", target / "config.json")


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

    Schedule-free runs (L-BFGS, constant lr) continue from their final point with fresh
    optimiser state for as many iterations again as they used (at least one chunk), to the end;
    others are retrained from scratch from the same start with twice the epochs. Returns whether
    anything was trained.
    """
    base = read_row(run_dir_of(out, depth, seed))
    if base is None or base.get("status") != "ok":
        return False
    base_cfg = RunConfig.from_dict(base["config"])
    sub_out = out / "budget2x"
    target = run_dir_of(sub_out, depth, seed)
    src = out / base["run_dir"]
    if base_cfg.schedule_free and not (target / "checkpoint.pt").exists():
        _fresh_copy(src, target)
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
        _budget_overrides(preset, overrides, base),
        progress,
        trainer,
        init_from,
    )
    return did


def budget_summary(preset: Preset, out: Path, overrides: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Compare each 2× rerun with its 1× run. The check passes when the rerun is converged by its
    own criteria and J moved by ≤ BUDGET_TOL. Sign convention everywhere:
    rel_improvement_2x = (J_1x − J_2x)/|J_2x| > 0 when the larger budget lowered J;
    ``iterations_run`` is what the rerun executed beyond the 1× run (it must be > 0)."""
    seed = preset.seeds[0]
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
        schedule_free = RunConfig.from_dict(base["config"]).schedule_free
        ran = _iterations_used(row) - (_iterations_used(base) if schedule_free else 0)
        checks.append(
            {
                "depth": depth,
                "seed": seed,
                "status": "ok",
                "iterations_1x": _iterations_used(base),
                "iterations_run": ran,
                "objective": base["objective"],
                "objective_2x": row["objective"],
                "rel_improvement_2x": rel,
                "tolerance": BUDGET_TOL,
                "converged_2x": bool(row["converged"]),
                "grad_norm_2x": row["grad_norm"],
                "escape_rel_2x": row.get("escape_rel"),
                "ok": bool(row["converged"] and abs(rel) <= BUDGET_TOL and ran > 0),
                "nc1": base["nc1"],
                "nc1_2x": row["nc1"],
                "objective_gap": base["objective_gap"],
                "objective_gap_2x": row["objective_gap"],
            }
        )
    return checks
