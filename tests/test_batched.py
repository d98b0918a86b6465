"""deepnet.batched: S seeds trained as one vmapped model match S separate ``deepnet.train`` runs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from deepnet import TrainingDivergedError, load_result, train
from deepnet.batched import LBFGS_MESSAGE, train_batched

pytestmark = pytest.mark.integration

torch.set_num_threads(1)

SEEDS = (0, 3, 5)
NUMERIC = (
    "objective",
    "fit",
    "classifier_penalty",
    "body_penalty",
    "embedding_penalty",
    "train_acc",
)


def _hook(epoch, model, ev):
    # something that depends on the seed's model itself, not only on the evaluation
    return {"hook_epoch": epoch, "w_norm": float(model.classifier.weight.detach().double().norm())}


def _assert_same(batched, separate, tol: float) -> None:
    assert len(batched) == len(separate)
    for a, b in zip(batched, separate):
        assert a.config == b.config
        for key in NUMERIC:
            np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=tol, atol=tol)
        assert a.test_acc == b.test_acc
        np.testing.assert_allclose(a.features, b.features, rtol=tol, atol=tol)
        np.testing.assert_allclose(a.W, b.W, rtol=tol, atol=tol)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.decayed == b.decayed and a.num_params == b.num_params
        assert (a.epochs_done, a.completed) == (b.epochs_done, b.completed)
        # same evaluation points, same phase/lr, same numbers (and the hook's)
        assert [h["epoch"] for h in a.history] == [h["epoch"] for h in b.history]
        for ha, hb in zip(a.history, b.history):
            assert set(ha) == set(hb)
            for key, value in hb.items():
                if isinstance(value, float):
                    np.testing.assert_allclose(ha[key], value, rtol=tol, atol=tol, err_msg=key)
                else:
                    assert ha[key] == value, key
        sa, sb = a.stationarity, b.stationarity
        assert sa["converged"] == sb["converged"] and sa["window"] == sb["window"]
        np.testing.assert_allclose(sa["grad_norm"], sb["grad_norm"], rtol=1e3 * tol, atol=tol)
        if "batched_seeds" in a.provenance:
            assert a.provenance["batched_seeds"] == [r.config.seed for r in batched]


@pytest.mark.parametrize(
    "arch, kind, extra",
    [
        ("rn1", "image", dict()),
        ("rn1", "image", dict(dtype="float64")),
        ("rn1", "image", dict(batch_size=7)),  # 5 minibatches per epoch, the last one of 2
        ("rn1", "image", dict(optimizer="sgd", lr=0.05, momentum=0.9, lr_schedule="constant")),
        ("rn2", "vector", dict(optimizer="sgd", lr=0.05, dtype="float64", batch_size=8)),
        ("t11", "image", dict()),
        ("t11", "text", dict(loss="mse", batch_size=10, dtype="float64")),
    ],
)
def test_each_seed_matches_its_separate_run(arch, kind, extra, small_config, synthetic_data):
    data = synthetic_data(kind, 10)
    configs = [small_config(arch=arch, seed=s, **extra) for s in SEEDS]
    batched = train_batched(configs, data, eval_hook=_hook)
    separate = [train(c, data, progress=False, eval_hook=_hook) for c in configs]
    tol = 1e-10 if configs[0].torch_dtype_name == "float64" else 1e-5
    _assert_same(batched, separate, tol)
    # the seeds really differ (a batched run that trained one seed S times would fail here)
    assert len({round(r.objective, 6) for r in batched}) == len(SEEDS)
    # and training did something: J fell from its initial value
    for r in batched:
        assert r.history[-1]["objective"] < 0.9 * r.history[0]["objective"]


def test_run_dirs_continuation_and_extension(tmp_path, small_config, synthetic_data):
    """Batched depth 1 writes run folders as train does; batched depth 2 continues each seed from
    its own folder (relative init_from); train extends a batched schedule-free run exactly."""
    data = synthetic_data("image", 10)
    kw = dict(lr_schedule="constant", dtype="float64", batch_size=8)
    seeds = SEEDS[:2]
    l1 = [small_config(depth=1, seed=s, **kw) for s in seeds]
    train_batched(l1, data, run_dirs=[tmp_path / "b" / f"L1-s{s}" for s in seeds])
    for c, s in zip(l1, seeds):
        train(c, data, run_dir=tmp_path / "t" / f"L1-s{s}", progress=False)
    for s in seeds:
        got, want = (
            load_result(tmp_path / "b" / f"L1-s{s}"),
            load_result(tmp_path / "t" / f"L1-s{s}"),
        )
        np.testing.assert_allclose(got.features, want.features, rtol=1e-10, atol=1e-10)
        assert [h["epoch"] for h in got.history] == [h["epoch"] for h in want.history]
    # continuation: each seed from its own depth-1 folder, given relative to its own folder
    l2 = [
        small_config(depth=2, seed=s, init="continuation", init_from=f"../L1-s{s}", **kw)
        for s in seeds
    ]
    batched = train_batched(l2, data, run_dirs=[tmp_path / "b" / f"L2-s{s}" for s in seeds])
    separate = [
        train(c, data, run_dir=tmp_path / "t" / f"L2-s{s}", progress=False)
        for c, s in zip(l2, seeds)
    ]
    _assert_same(batched, separate, 1e-10)
    # a schedule-free run may be extended by train from the batched checkpoint, exactly as from
    # train's own: the optimizer state and permutation stream written per seed are its own
    longer = [dataclasses.replace(c, epochs=55) for c in l1]
    ext = [
        train(c, data, run_dir=tmp_path / "b" / f"L1-s{s}", progress=False)
        for c, s in zip(longer, seeds)
    ]
    ref = [
        train(c, data, run_dir=tmp_path / "t" / f"L1-s{s}", progress=False)
        for c, s in zip(longer, seeds)
    ]
    _assert_same(ext, ref, 1e-10)
    # fresh folders only
    with pytest.raises(ValueError, match="fresh runs only"):
        train_batched(l1, data, run_dirs=[tmp_path / "b" / f"L1-s{s}" for s in seeds])
    with pytest.raises(ValueError, match="distinct folders"):
        train_batched(l1, data, run_dirs=[tmp_path / "x", tmp_path / "x"])


def test_one_seed_equals_train(small_config, synthetic_data):
    data = synthetic_data("vector", 10)
    cfg = small_config(arch="rn2", seed=7, dtype="float64")
    _assert_same(train_batched([cfg], data), [train(cfg, data, progress=False)], 1e-10)


def test_rejects_what_it_cannot_batch(small_config, synthetic_data):
    data = synthetic_data("image", 10)
    with pytest.raises(ValueError, match=r"differ: \['depth', 'lr'\]"):
        train_batched([small_config(seed=0), small_config(seed=1, lr=0.1, depth=3)], data)
    with pytest.raises(ValueError, match="L-BFGS needs a line search per seed"):
        train_batched([small_config(seed=s, optimizer="lbfgs") for s in (0, 1)], data)
    assert "one after another" in LBFGS_MESSAGE
    with pytest.raises(ValueError, match="distinct seeds"):
        train_batched([small_config(seed=1), small_config(seed=1)], data)
    with pytest.raises(ValueError, match="empty list"):
        train_batched([], data)
    with pytest.raises(ValueError, match="RunConfig"):
        train_batched([small_config().to_dict()], data)
    # without data, data_seed=None would give each seed its own subset
    with pytest.raises(ValueError, match="data_seed"):
        train_batched([small_config(seed=0), small_config(seed=1)])


def test_divergence_names_the_seeds(small_config, synthetic_data):
    data = synthetic_data("image", 10)
    data.x_train = data.x_train.copy()
    data.x_train[0] = np.nan
    with pytest.raises(TrainingDivergedError, match=r"seed\(s\) \[0, 1\]"):
        train_batched([small_config(seed=0), small_config(seed=1)], data)
