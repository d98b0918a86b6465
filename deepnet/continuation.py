"""Continuation (THEORY §10): start a run of depth L from a finished shallower run, padded with
near-identity blocks; and the fresh copy of a finished run that a larger budget continues.

What is continued is read from the source's checkpoint, never from its config.json; a folder
whose config.json disagrees with its checkpoint (an edited folder) is refused with one line.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .config import CONTINUATION_SAME, RESUME_FREE, RunConfig
from .io import (
    CorruptCheckpointError,
    CorruptSourceError,
    depth_of_state,
    load_checkpoint,
    save_checkpoint,
)
from .layers import CollapseNet


def continue_from(config: RunConfig, model: CollapseNet, run_path: Path | None) -> None:
    """Start ``model`` (depth L) from the finished shallower run in ``config.init_from`` (a
    relative path is relative to this run's folder, or, when no run is there, to the working
    directory): its embedding, blocks and classifier are copied, blocks L'..L−1 start near the
    identity.

    What is continued is read from the source's checkpoint, never from its config.json: the depth
    from its tensors (and its stored config), the model and data fields from its stored config.
    A config.json that disagrees with the checkpoint (an edited folder), a source of another
    model or data, or tensors that do not fit this model are refused with one line; a missing or
    unreadable checkpoint raises :class:`CorruptSourceError` (a sweep then redoes that run).
    """
    src = Path(config.init_from) if config.init_from else None
    if src is not None and not src.is_absolute() and run_path is not None:
        near = Path(os.path.normpath(run_path / src))  # lexical: run_path need not exist yet
        # relative to this run's folder (how sweeps record it), else to the working directory
        src = near if (near / "metrics.json").exists() or not (src / "metrics.json").exists() \
            else src
    if src is None or not (src / "metrics.json").exists():
        raise ValueError(
            "init='continuation' needs a finished shallower run in init_from (a run folder with "
            f"metrics.json and checkpoint.pt); got {config.init_from!r}"
        )
    if not (src / "checkpoint.pt").exists():
        raise CorruptSourceError(src, f"cannot continue from {src}: it has no checkpoint.pt")
    try:
        ckpt = load_checkpoint(src / "checkpoint.pt")
        src_cfg = RunConfig.from_dict(dict(ckpt["config"]))
    except CorruptCheckpointError as err:
        raise CorruptSourceError(src, f"cannot continue from {src}: {err}") from err
    except (TypeError, ValueError) as err:  # a stored config this version cannot read
        raise CorruptSourceError(
            src, f"cannot continue from {src}: its checkpoint's config is unreadable ({err})"
        ) from err
    state = ckpt["model"]
    held = depth_of_state(state)
    if held != src_cfg.depth:
        raise CorruptSourceError(
            src,
            f"cannot continue from {src}: its checkpoint holds {held} blocks but says depth "
            f"{src_cfg.depth}",
        )
    check_config_json(src, src_cfg)
    if src_cfg.depth >= config.depth:
        raise ValueError(
            f"continuation must start from a shallower run: {src} has depth {src_cfg.depth}, "
            f"this run has depth {config.depth}"
        )
    diff = [k for k in CONTINUATION_SAME if getattr(src_cfg, k) != getattr(config, k)]
    if src_cfg.subset_seed != config.subset_seed:
        diff.append("data_seed")
    if diff:
        raise ValueError(f"{src} is a run of another model or data (fields {diff})")
    merged = model.state_dict()
    # exactly the parameters of this model up to the source's depth, with the same shapes
    expected = {k for k in merged if not (k.startswith("blocks.") and int(k.split(".")[1]) >= held)}
    unknown, missing = sorted(set(state) - expected), sorted(expected - set(state))
    if unknown or missing:
        what = (
            f"parameters this model does not have: {unknown[:3]}"
            if unknown
            else (f"none of {missing[:3]}")
        )
        raise ValueError(f"{src} holds {what}; it is not a shallower run of this model")
    bad = [k for k in state if tuple(state[k].shape) != tuple(merged[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(
            f"{src} does not fit this model: {k} has shape {tuple(state[k].shape)} there, "
            f"{tuple(merged[k].shape)} here"
        )
    merged.update({k: v.to(merged[k].dtype) for k, v in state.items()})
    model.load_state_dict(merged)
    model.pad_init(held, config.pad_scale)


def check_config_json(run_dir: Path, stored: RunConfig) -> None:
    """Refuse a run folder whose config.json disagrees with the config stored in its checkpoint
    (beyond the fields a resumption may change): the folder was edited, and neither can be
    trusted to say what the other holds. A folder without config.json is judged by its
    checkpoint alone."""
    path = run_dir / "config.json"
    if not path.exists():
        return
    try:
        written = RunConfig.from_dict(json.loads(path.read_text())).to_dict()
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not a readable run config ({err}): the folder was edited or damaged; "
            "restore config.json or delete the run"
        ) from None
    theirs = stored.to_dict()
    diff = [k for k in theirs if k not in RESUME_FREE and written.get(k) != theirs[k]]
    if diff:
        k, more = diff[0], f"; also {diff[1:]}" if diff[1:] else ""
        raise ValueError(
            f"{path} disagrees with the checkpoint beside it ({k}: {written.get(k)!r} in "
            f"config.json, {theirs[k]!r} in checkpoint.pt{more}): the folder was edited; "
            "restore config.json or delete the run"
        )


def restart_copy(src: Path, target: Path) -> None:
    """Copy the finished run in ``src`` (checkpoint.pt, config.json) into ``target`` with every
    optimizer state emptied and the loop's record reset: resumed with a larger budget, it
    continues from the same point with nothing remembered (fresh L-BFGS memory, no stall flag),
    so it must execute real iterations (the 2×-budget rerun, THEORY §9)."""
    state = load_checkpoint(Path(src) / "checkpoint.pt")
    state["optimizer"] = {name: None for name in state["optimizer"]}
    loop = dict(state.get("loop", {}))
    loop.update(stalled=False, finished=False, fresh=True, current=None)
    state["loop"] = loop
    Path(target).mkdir(parents=True, exist_ok=True)
    save_checkpoint(Path(target) / "checkpoint.pt", state)
    shutil.copy2(Path(src) / "config.json", Path(target) / "config.json")
