"""The column registry is the one source of what a sweep row holds: docs/COLUMNS.md is generated
from it, the typed Row agrees with it, and every key a real row holds is registered (and every
registered column is held by a row, or is one that only some runs have)."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from reduction.registry import COLUMNS, METRICS, Row, columns_markdown

ROOT = Path(__file__).resolve().parents[1]
#: columns a finished run of the tiny sweep (L-RN1, CE, digits) does not hold, and why
CONDITIONAL = {
    "error": "failed or diverged runs",
    "traceback": "failed runs",
    "worker_deaths": "runs whose worker process died",
    "unsaved": "rows whose folder could not be written",
    "n_groups": "next-token data (the generalised UFM)",
    "gufm_nc1": "next-token data",
    "gufm_collapsed": "next-token data",
    "procrustes_groups": "next-token data",
    "gram_distance_groups": "next-token data",
}
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict}


@pytest.mark.unit
def test_columns_md_is_generated_from_the_registry():
    assert (ROOT / "docs" / "COLUMNS.md").read_text() == columns_markdown(), (
        "docs/COLUMNS.md is stale: python -m reduction.registry > docs/COLUMNS.md"
    )


@pytest.mark.unit
def test_the_typed_row_is_the_registry():
    hints = typing.get_type_hints(Row)
    assert set(hints) == set(COLUMNS)
    for name, column in COLUMNS.items():
        hint = hints[name]
        assert (typing.get_origin(hint) or hint) is _TYPES[column.type], (name, hint)
    assert set(METRICS) <= set(COLUMNS) and all(COLUMNS[m] is METRICS[m] for m in METRICS)
    assert set(CONDITIONAL) <= set(COLUMNS)


@pytest.mark.integration
def test_every_key_of_a_sweep_row_is_registered_and_vice_versa(tiny_sweep):
    """The rows the sweep wrote and the report completed (certificate columns included)."""
    import json

    keys = set()
    for row in tiny_sweep.rows:
        keys |= set(row)
        keys |= set(json.loads((tiny_sweep.out_dir / row["run_dir"] / "row.json").read_text()))
    assert keys <= set(COLUMNS), sorted(keys - set(COLUMNS))
    assert set(COLUMNS) - keys == set(CONDITIONAL), sorted(set(COLUMNS) - keys)
    header = (tiny_sweep.out_dir / "results.csv").read_text().splitlines()[0].split(",")
    assert set(header) == {k for k in keys if COLUMNS[k].in_csv}
