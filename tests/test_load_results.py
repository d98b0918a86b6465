"""load_results: list columns as lists, the per-layer profiles and the training histories as
long-form frames, and a column dictionary that names every column a sweep writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from reduction import load_results, read_rows

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


def test_rates_list_columns_come_back_as_lists(tiny_sweep_dir):
    rates = load_results(tiny_sweep_dir, "rates")
    for col in ("seed_slopes", "local_slopes", "curvature_ci"):
        assert all(isinstance(v, list) for v in rates[col]), col
    csv_text = (tiny_sweep_dir / "rates.csv").read_text()
    assert "[" in csv_text  # they are JSON text in the file


def test_layers_is_one_row_per_depth_seed_layer(tiny_sweep_dir):
    layers = load_results(tiny_sweep_dir, "layers")
    rows = read_rows(tiny_sweep_dir)
    # every run of depth L contributes layers 0..L
    assert len(layers) == sum(r["depth"] + 1 for r in rows)
    for r in rows:
        profile = json.loads((tiny_sweep_dir / r["run_dir"] / "profile.json").read_text())
        got = layers[(layers.depth == r["depth"]) & (layers.seed == r["seed"])]
        assert list(got.layer) == list(range(r["depth"] + 1))
        assert list(got.nc1) == pytest.approx([p["nc1"] for p in profile], rel=1e-15)
    assert {"rel_layer", "nc3", "converged"} <= set(layers.columns)


def test_history_is_long_form_with_splits(tiny_sweep_dir):
    hist = load_results(tiny_sweep_dir, "history")
    assert {"depth", "seed", "epoch", "metric", "split", "value", "optimizer"} <= set(hist.columns)
    assert set(hist.optimizer) == {"lbfgs"}
    run = read_rows(tiny_sweep_dir)[-1]
    raw = json.loads((tiny_sweep_dir / run["run_dir"] / "metrics.json").read_text())["history"]
    mine = hist[(hist.depth == run["depth"]) & (hist.seed == run["seed"])]
    for h in raw:
        at = mine[mine.epoch == h["epoch"]]
        nc1 = at[(at.metric == "nc1")].set_index("split").value
        assert nc1["train"] == h["nc1_train"] and nc1["test"] == h["nc1_test"]
        assert at[at.metric == "objective"].value.item() == h["objective"]
    # the wide view plot_history takes
    wide = mine.pivot_table(index=["epoch", "split"], columns="metric", values="value")
    assert {"nc1", "nc3"} <= set(wide.columns)


def test_bad_table_and_missing_sweep(tmp_path, tiny_sweep_dir):
    with pytest.raises(ValueError, match="layers"):
        load_results(tiny_sweep_dir, "nope")
    with pytest.raises(FileNotFoundError, match="run or report the sweep first"):
        load_results(tmp_path, "history")


def test_every_results_column_is_in_the_column_dictionary(tiny_sweep_dir):
    """docs/COLUMNS.md names every column of results.csv (and no column twice)."""
    text = (ROOT / "docs" / "COLUMNS.md").read_text()
    documented = re.findall(r"^\| `([A-Za-z0-9_]+)` \|", text, flags=re.M)
    assert len(documented) == len(set(documented))
    columns = set(load_results(tiny_sweep_dir).columns)
    missing = sorted(columns - set(documented))
    assert not missing, f"columns without an entry in docs/COLUMNS.md: {missing}"
