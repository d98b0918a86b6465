"""Next-token transformers against the generalised UFM (THEORY §11): the reduced problem is
built from the data's contexts, its optimum lower-bounds every run, and the distances of the
context features to its (non-collapsed) geometry are reported."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import ufm
from deepnet import RunConfig
from deepnet.data import load_nexttoken
from reduction.compare import ufm_problem_for
from reduction.presets import get_preset
from reduction.registry import COLUMNS
from reduction.sweep import run_sweep

pytestmark = pytest.mark.integration

TEXTS = ["abab abcab", "abc aab abab", "babcab abb", "cabab aab"] * 3


@pytest.fixture(scope="module")
def corpus():
    torch.set_num_threads(1)
    return load_nexttoken(texts=TEXTS, context=2, vocab_size=4, test_fraction=0.0)


def test_problem_is_the_generalised_ufm_of_the_contexts(corpus):
    info = corpus.info
    assert info["conflicting_groups"] > 0  # identical contexts with different continuations
    cfg = RunConfig(arch="t11", dataset="x", width=8, n_per_class=None, test_per_class=None)
    problem = ufm_problem_for(cfg, corpus.y_train, corpus.num_classes, corpus)
    counts = np.asarray(info["group_label_counts"])
    assert len(problem.groups) == counts.shape[0] == info["n_groups"]
    np.testing.assert_array_equal(problem.counts, counts.sum(axis=0))
    # the same counts built independently from the samples
    ref, group_of = ufm.context_counts(corpus.x_train, corpus.y_train, corpus.num_classes)
    assert sorted(map(tuple, ref.tolist())) == sorted(map(tuple, counts.tolist()))
    assert len(set(group_of.tolist())) == counts.shape[0]


def test_nexttoken_sweep_respects_the_lower_bound(tmp_path, corpus):
    preset = get_preset("cpu-t11-nexttoken-wordnet")
    preset = replace(
        preset,
        config={**preset.config, "width": 8, "epochs": 40, "eval_every": 10, "dataset": "x"},
        depths=(0, 1, 2),
        seeds=(0,),
    )
    res = run_sweep(preset, tmp_path, data=corpus, workers=1, progress=False, budget_check=False)
    assert [r["status"] for r in res.rows] == ["ok"] * 3
    for r in res.rows:
        # fit + (λ/2)‖W‖² ≥ GUFM*: asserted inside every run (a violation fails the unit)
        assert r["classifier_gap"] >= -1e-9 and r["objective_gap"] >= r["body_penalty"] - 1e-9
        assert r["n_groups"] == corpus.info["n_groups"]
        assert 0 <= r["procrustes_groups"] <= 2 and 0 <= r["gram_distance_groups"] <= 2
        assert r["gufm_collapsed"] is False  # conflicting contexts: the optimum is not collapsed
        assert set(r) <= set(COLUMNS)  # the context columns are registered too
    assert len({r["ufm_value"] for r in res.rows}) == 1  # one problem, solved once
