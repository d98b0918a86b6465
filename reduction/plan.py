"""The plan of a depth sweep (THEORY §10): one resolved :class:`Sweep` (a preset with its depths,
seeds and overrides) that says what every unit's :class:`deepnet.RunConfig` is, and its identity.

The identity of a sweep (:class:`SweepIdentity`) is the fingerprint of the settings its units
share (:func:`deepnet.fingerprint_fields`): every row and run folder carries it, and a sweep
refuses to add runs to a folder whose runs were made with other settings (reduction.folder).
With ``init="continuation"`` the depths of one seed form a chain: depth L starts from the
finished next-shallower run of the same seed, padded with near-identity blocks.

Torch-free at import (the report reads a plan from sweep.json); deepnet is imported when a
config is made.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from reduction.presets import Preset, get_preset

if TYPE_CHECKING:
    from deepnet import RunConfig
    from deepnet.data import Dataset

__all__ = [
    "BUDGET_FREE",
    "UNIT_FIELDS",
    "Sweep",
    "SweepIdentity",
    "config_disagreement",
    "make_run_config",
    "preset_from_spec",
]

#: the 2× reruns' budgets differ per unit (twice what each 1× run used): not in their fingerprint
BUDGET_FREE = ("epochs",)
#: RunConfig fields a sweep sets per unit (not allowed as overrides)
UNIT_FIELDS = ("depth", "seed", "init_from")
#: the suffix of the 2×-budget reruns' preset name
BUDGET_SUFFIX = "-budget2x"


@dataclass(frozen=True)
class SweepIdentity:
    """The settings a sweep's runs share, and their fingerprint (:attr:`Sweep.identity`)."""

    fingerprint: str
    fields: dict[str, Any]
    per_seed: bool  # each seed draws its own data subset
    continuation: bool  # init="continuation": the depths of a seed form a chain
    #: further fields that may differ between the units (the 2× reruns' budgets do)
    free: tuple[str, ...] = ()

    def fields_of(self, config: RunConfig) -> dict[str, Any]:
        from deepnet import fingerprint_fields

        fields = fingerprint_fields(config, per_seed=self.per_seed, continuation=self.continuation)
        return {k: v for k, v in fields.items() if k not in self.free}

    def fingerprint_of(self, config: RunConfig) -> str:
        """The fingerprint of one unit's config, seen as a unit of a sweep like this one."""
        from deepnet import fingerprint_of

        return fingerprint_of(self.fields_of(config))

    def diff(self, config: RunConfig, *, unfinished: bool = False) -> str:
        """'' when ``config`` is a unit of this sweep, else the fields that differ (one line).
        ``unfinished``: a schedule-free run stopped short of this sweep's budget is one of its
        units (resuming it with the larger budget continues it, as deepnet.train allows)."""
        from deepnet import fingerprint_diff

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


def make_run_config(
    preset: Preset,
    depth: int,
    seed: int,
    overrides: Mapping[str, Any],
    init_from: str | None = None,
) -> RunConfig:
    """The :class:`deepnet.RunConfig` of one (depth, seed) unit of ``preset`` with
    ``overrides`` (see :meth:`Sweep.config`)."""
    from deepnet import RunConfig

    fields = {**preset.config, **overrides, "depth": int(depth), "seed": int(seed)}
    data_seed = fields.get("data_seed", 0)
    fields["data_seed"] = int(seed) if data_seed == "per_seed" else data_seed
    if fields.get("init") == "continuation":
        if init_from is None or depth == 0:
            fields["init"] = "default"
        else:
            fields["init_from"] = init_from
    return RunConfig(**fields)


@dataclass(frozen=True)
class Sweep:
    """A resolved sweep: ``preset`` (its depths and seeds deduplicated, sorted and checked),
    ``overrides`` (RunConfig fields changed for every unit, and ``data_seed``: an int or
    ``"per_seed"``) and the fields its units may differ in beyond depth and seed (``free``: the
    2× reruns' budgets)."""

    preset: Preset
    overrides: dict[str, Any] = field(default_factory=dict)
    free: tuple[str, ...] = ()

    @classmethod
    def resolve(
        cls,
        preset: str | Preset,
        depths: Iterable[int] | None = None,
        seeds: Iterable[int] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Sweep:
        """The sweep of ``preset`` (a name or a :class:`Preset`) with its depths or seeds
        overridden (ValueError for an empty or negative list, or depths beyond
        :data:`deepnet.MAX_DEPTH`)."""
        from deepnet import MAX_DEPTH

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
                f"depths must be ≤ {MAX_DEPTH:,} (a guard against typos: deeper networks do not "
                f"fit in memory), got {d[-1]:,}"
            )
        if s[0] < 0:
            raise ValueError(f"seeds must be ≥ 0, got {list(s)}")
        return cls(replace(preset, depths=d, seeds=s), dict(overrides or {}))

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Sweep:
        """The sweep a sweep.json records (:meth:`spec`)."""
        return cls(preset_from_spec(spec["preset"]), dict(spec.get("overrides") or {}))

    def spec(self) -> dict[str, Any]:
        """What sweep.json records: the preset, the overrides and the fingerprint."""
        return {
            "preset": asdict(self.preset),
            "overrides": self.overrides,
            "fingerprint": self.identity.fingerprint,
        }

    # ------------------------------------------------------------------------------ the units

    @property
    def name(self) -> str:
        return self.preset.name

    @property
    def depths(self) -> tuple[int, ...]:
        return self.preset.depths

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.preset.seeds

    @property
    def settings(self) -> dict[str, Any]:
        """The preset's config with the overrides applied."""
        return {**self.preset.config, **self.overrides}

    @property
    def continuation(self) -> bool:
        return self.settings.get("init") == "continuation"

    @property
    def per_seed(self) -> bool:
        return self.settings.get("data_seed", 0) == "per_seed"

    def config(self, depth: int, seed: int, init_from: str | None = None) -> RunConfig:
        """The :class:`deepnet.RunConfig` of the unit (depth, seed). ``data_seed``: an int (every
        seed trains on that subset; default 0) or ``"per_seed"`` (each seed draws its own).
        Continuation units get ``init_from`` (the shallower run's folder); the shallowest unit of
        a chain has nothing to continue from and starts from the default init."""
        return make_run_config(self.preset, depth, seed, self.overrides, init_from)

    def with_depths(self, depths: tuple[int, ...]) -> Sweep:
        """This sweep restricted to ``depths`` (one job's chain)."""
        return replace(self, preset=replace(self.preset, depths=depths))

    def with_overrides(self, overrides: Mapping[str, Any]) -> Sweep:
        return replace(self, overrides=dict(overrides))

    @functools.cached_property
    def identity(self) -> SweepIdentity:
        """The fingerprint of the sweep: that of its units' resolved RunConfig minus the
        per-unit and resume-free fields (:func:`deepnet.fingerprint_fields`) and ``free``.
        Every unit of the sweep has this fingerprint."""
        from deepnet import fingerprint_of

        ident = SweepIdentity("", {}, self.per_seed, self.continuation, tuple(self.free))
        config = self.config(max(self.depths), self.seeds[0], init_from="<shallower run>")
        fields = ident.fields_of(config)
        return replace(ident, fingerprint=fingerprint_of(fields), fields=fields)

    @functools.cached_property
    def budget(self) -> Sweep:
        """The sweep of the 2×-budget reruns (under OUT/budget2x): run to the end whatever the
        criteria say, each unit's budget its own (reduction.budget)."""
        return Sweep(
            replace(self.preset, name=self.preset.name + BUDGET_SUFFIX),
            {**self.overrides, "until_converged": False},
            BUDGET_FREE,
        )

    def budget_depths(self) -> list[int]:
        """The depths rerun with twice the budget: the shallowest with blocks and the deepest
        (the depth-0 baseline is a small smooth problem and is not rerun)."""
        with_blocks = [d for d in self.depths if d > 0] or list(self.depths)
        return sorted({min(with_blocks), max(with_blocks)})

    # ---------------------------------------------------------------------------- checking

    def validate(self, *, local: bool = True) -> None:
        """Check every unit's settings before anything is written (ValueError, one line).
        ``local``: the units run on this machine, so their thread count must fit its cores."""
        from deepnet import RunConfig, check_threads

        names = set(RunConfig.__dataclass_fields__)
        unknown = set(self.overrides) - names
        if unknown:
            raise ValueError(
                f"unknown RunConfig field(s) in overrides: {sorted(unknown)}; expected names "
                f"from deepnet.RunConfig: {sorted(names)}"
            )
        fixed = sorted(set(self.overrides) & set(UNIT_FIELDS))
        if fixed:
            raise ValueError(f"{fixed} are set by the sweep per unit; use --depths/--seeds instead")
        data_seed = self.settings.get("data_seed", 0)
        if data_seed != "per_seed" and not (isinstance(data_seed, int) and data_seed >= 0):
            raise ValueError(f"data_seed must be an integer ≥ 0 or 'per_seed', got {data_seed!r}")
        for depth in self.depths:
            for seed in self.seeds:
                cfg = self.config(depth, seed, init_from="<shallower run>")
                if cfg.ln_affine:
                    from reduction.compare import ufm_problem_for

                    ufm_problem_for(cfg, _no_labels(), 1)  # raises the clear error
        if local:
            check_threads(cfg.num_threads)

    def load_data(self, seed: int | None = None) -> Dataset:
        """The dataset of the units of ``seed`` (default: the first seed); with a shared
        ``data_seed`` every unit trains on the same samples."""
        from deepnet import load_run_data

        s = self.seeds[0] if seed is None else seed
        return load_run_data(self.config(self.depths[0], s))

    def check_data(self) -> Dataset:
        """Load the first seed's data: an unknown dataset, too many samples per class, an
        unknown data option or a missing ``data_root`` is one ValueError before the sweep
        writes anything."""
        try:
            return self.load_data()
        except (ValueError, OSError, KeyError, TypeError) as err:
            plain = isinstance(err, ValueError | OSError)
            text = str(err) if plain else f"{type(err).__name__}: {err}"
            raise ValueError(f"the sweep's data cannot be loaded: {text}") from None

    def subset_seed(self, seed: int) -> int:
        """The data subset the units of ``seed`` train on."""
        return self.config(self.depths[0], seed).subset_seed


def _no_labels() -> Any:
    import numpy as np

    return np.zeros(1, dtype=np.int64)


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


def config_disagreement(
    a: Mapping[str, Any], b: Mapping[str, Any], names: tuple[str, str]
) -> str:
    """The first field two configs differ in (beyond those a resumption may change), in words."""
    from deepnet import RESUME_FREE

    keys = [k for k in sorted(set(a) | set(b)) if k not in RESUME_FREE and a.get(k) != b.get(k)]
    if not keys:
        return ""
    k = keys[0]
    more = f", and {len(keys) - 1} more field(s)" if len(keys) > 1 else ""
    return f"{k}: {a.get(k)!r} in {names[0]}, {b.get(k)!r} in {names[1]}{more}"
