"""deepnet.train: exact objective, training, resume, divergence, UFM lower bound, files, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from torch import nn

from deepcollapse.files import json_default
from deepnet import RunConfig, RunResult, TrainingDivergedError, build_model, load_result, train
from deepnet.cli import main as cli_main
from deepnet.data import Dataset

pytestmark = pytest.mark.integration

torch.set_num_threads(1)

K = 3


# --------------------------------------------------------------------------------------- config


def test_runconfig_validation_and_roundtrip():
    cfg = RunConfig(arch="rn2", depth=4, lam_schedule="inverse_depth", data_options={"a": 1})
    assert cfg.effective_lam == pytest.approx(0.005 / 4)
    assert RunConfig(depth=4).effective_lam == 0.005
    d = json.loads(json.dumps(cfg.to_dict()))
    assert RunConfig.from_dict(d) == cfg
    for bad in (
        dict(arch="vgg"),
        dict(norm="mid"),
        dict(loss="hinge"),
        dict(optimizer="adamw"),
        dict(depth=-1),
        dict(width=64, heads=3),
        dict(epochs=1.5),
        dict(lr="0.1"),
        dict(width=True),
        dict(seed=-1),
        dict(optimizer="lbfgs", batch_size=10),
        dict(optimizer="lbfgs", dtype="float32"),
        dict(optimizer="lbfgs", epochs=10, warmup_epochs=10),
        dict(optimizer="adam", warmup_epochs=5),
        dict(init="continuation", depth=0),
        dict(init_from="runs/x"),
        dict(conv_window=0.0),
        dict(lr=-1.0),
        dict(lam=-0.1),
        dict(arch="rn2", block_form="linear_of_relu"),
        dict(batch_size=0),
        dict(dtype="float16"),
        dict(lr_schedule="step"),
        dict(device="tpu"),
    ):
        with pytest.raises(ValueError):
            RunConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        RunConfig.from_dict({"arch": "rn1", "nope": 1})
    with pytest.raises(ValueError, match="epochs must be an integer"):
        RunConfig(epochs=1.5)
    with pytest.raises(ValueError, match="lr must be a number"):
        RunConfig(lr="0.1")
    assert RunConfig(lam=1).lam == 1.0 and isinstance(RunConfig(lam=1).lam, float)
    assert RunConfig(depth=0).effective_lam == 0.005
    assert RunConfig(depth=0, lam_schedule="inverse_depth").effective_lam == 0.005
    assert RunConfig(optimizer="lbfgs").torch_dtype_name == "float64"
    assert RunConfig().torch_dtype_name == "float32"


# ------------------------------------------------------------------------------------ objective


def _independent_objective(model: nn.Module, data: Dataset, cfg: RunConfig) -> dict[str, float]:
    """J_L from the parameters, written out by hand in float64: CE via logsumexp or ½‖z − e_y‖²,
    penalty over every nn.Linear weight of the blocks and the classifier (+ embedding if asked)."""
    x = torch.as_tensor(data.x_train)
    if x.is_floating_point():
        x = x.to(getattr(torch, cfg.torch_dtype_name))
    y = torch.as_tensor(data.y_train)
    with torch.no_grad():
        h = model.features(x).double()
        W = model.classifier.linear.weight.double()
        b = model.classifier.linear.bias
        z = h @ W.T + (0 if b is None else b.double())
        if cfg.loss == "ce":
            fit = (torch.logsumexp(z, 1) - z[torch.arange(len(y)), y]).mean()
        else:
            fit = 0.5 * ((z - torch.eye(K, dtype=z.dtype)[y]) ** 2).sum() / len(y)
        lam = cfg.lam / max(cfg.depth, 1) if cfg.lam_schedule == "inverse_depth" else cfg.lam
        body = sum(
            (m.weight.double() ** 2).sum()
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.startswith("blocks.")
        )
        emb = sum((p.double() ** 2).sum() for p in model.embed.parameters())
        out = {
            "fit": float(fit),
            "classifier_penalty": float(lam / 2 * (W**2).sum()),
            "body_penalty": float(lam / 2 * body),
            "embedding_penalty": float(lam / 2 * emb) if cfg.decay_embedding else 0.0,
        }
    out["objective"] = sum(out.values())
    return out


def _model_from_checkpoint(run_dir, cfg: RunConfig, data: Dataset) -> nn.Module:
    model = build_model(cfg, data).to(getattr(torch, cfg.torch_dtype_name))
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    model.load_state_dict(ckpt["model"])
    return model.eval()


@pytest.mark.parametrize(
    "cfg_kw",
    [
        dict(arch="rn1"),
        dict(arch="rn1", dtype="float64", block_form="linear_of_relu"),
        dict(arch="rn2", loss="mse", bias=True, lam_schedule="inverse_depth", norm="pre"),
        dict(arch="t11", heads=2, readout="last", optimizer="sgd", lr=0.05),
        dict(arch="t12", readout="mean", decay_embedding=True, batch_size=7),
        dict(arch="rn1", optimizer="lbfgs", epochs=15),
        dict(arch="t11", optimizer="lbfgs", epochs=10, warmup_epochs=4, depth=0, readout="mean"),
    ],
)
def test_reported_objective_equals_recomputation(tmp_path, cfg_kw, small_config, synthetic_data):
    kind = "text" if cfg_kw["arch"] == "t11" else "image"
    data = synthetic_data(kind)
    cfg = small_config(**cfg_kw)
    res = train(cfg, data=data, run_dir=tmp_path, progress=False)
    ref = _independent_objective(_model_from_checkpoint(tmp_path, cfg, data), data, cfg)
    for key, value in ref.items():
        assert getattr(res, key) == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert (res.embedding_penalty > 0) == cfg.decay_embedding
    assert res.history[-1]["objective"] == pytest.approx(res.objective, rel=1e-12)
    # training lowers the objective
    assert res.objective < 0.8 * res.history[0]["objective"]
    assert res.features.dtype == np.float64 and res.features.shape == (len(data.y_train), 8)
    np.testing.assert_array_equal(res.labels, data.y_train)
    assert (res.b is not None) == cfg.bias
    if cfg.optimizer == "lbfgs":
        assert res.history[-1]["lr"] is None and res.history[-1]["phase"] == "lbfgs"
    elif cfg.lr_schedule == "cosine":  # the lr of the last epoch's steps: annealed to ~0
        assert 0 < res.history[-1]["lr"] < 2e-3 * cfg.lr


def test_training_fits_digits():
    """Real data: L-RN1 on sklearn digits (10 classes, 8×8) reaches full training accuracy."""
    from deepnet.data import load_dataset

    data = load_dataset("digits", n_per_class=10, test_per_class=10)
    cfg = RunConfig(
        arch="rn1",
        depth=3,
        width=16,
        epochs=150,
        lr=1e-2,
        dataset="digits",
        n_per_class=10,
        test_per_class=10,
        eval_every=10,
        device="cpu",
    )
    res = train(cfg, data=data, progress=False)
    assert res.train_acc == 1.0
    assert res.test_acc is not None and res.test_acc > 0.5
    assert res.objective < 0.5 * res.history[0]["objective"]
    assert len(res.decayed) == 3 + 1


# --------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("batch_size", [None, 10])
def test_resume_is_bitwise_identical(tmp_path, batch_size, small_config, synthetic_data):
    data = synthetic_data("image")
    cfg = small_config(arch="rn2", batch_size=batch_size, checkpoint_every=7)
    ref = train(cfg, data=data, progress=False)

    part = train(cfg, data=data, run_dir=tmp_path, progress=False, max_epochs_this_call=13)
    assert not part.completed and part.epochs_done == 13
    assert not (tmp_path / "metrics.json").exists()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 13
    done = train(cfg, data=data, run_dir=tmp_path, progress=False)
    assert done.completed and done.epochs_done == cfg.epochs
    assert done.objective == ref.objective  # bitwise
    np.testing.assert_array_equal(done.features, ref.features)
    np.testing.assert_array_equal(done.W, ref.W)
    assert done.history == ref.history

    # a finished run resumes to itself without training; a different config is refused
    again = train(cfg, data=data, run_dir=tmp_path, progress=False)
    assert again.objective == ref.objective
    with pytest.raises(ValueError, match="different config"):
        train(
            small_config(arch="rn2", batch_size=batch_size, lr=0.5),
            data=data,
            run_dir=tmp_path,
            progress=False,
        )
    fresh = train(
        small_config(arch="rn2", lr=0.5), data=data, run_dir=tmp_path, resume=False, progress=False
    )
    assert fresh.objective != ref.objective
    # restarting from scratch removes the finished run's results until the new one finishes
    train(cfg, data=data, run_dir=tmp_path, resume=False, progress=False, max_epochs_this_call=2)
    assert not (tmp_path / "metrics.json").exists()
    assert not (tmp_path / "features.npz").exists()


def test_run_dir_files_and_load_result(tmp_path, small_config, synthetic_data):
    data = synthetic_data("vector")
    cfg = small_config(bias=True)
    res = train(cfg, data=data, run_dir=tmp_path, progress=False)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"config.json", "metrics.json", "checkpoint.pt", "features.npz"}
    back = load_result(tmp_path)
    assert isinstance(back, RunResult) and back.config == cfg
    for key in (
        "objective",
        "fit",
        "classifier_penalty",
        "body_penalty",
        "train_acc",
        "test_acc",
        "decayed",
        "history",
        "stationarity",
        "num_params",
        "provenance",
    ):
        # via JSON: NaN (rel_change when not applicable) compares equal to itself there
        a, b = getattr(back, key), getattr(res, key)
        assert json.dumps(a, default=json_default) == json.dumps(b, default=json_default), key
    for key in ("features", "labels", "W", "b"):
        np.testing.assert_array_equal(getattr(back, key), getattr(res, key))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "features" not in metrics and metrics["config"]["arch"] == "rn1"
    assert set(metrics["stationarity"]) >= {"grad_norm", "rel_change", "converged", "reasons"}
    prov = metrics["provenance"]
    assert prov["torch"] == torch.__version__ and prov["data_seed"] == cfg.subset_seed
    assert {"deepcollapse", "git_commit", "numpy", "device", "device_name"} <= set(prov)
    # files are readable by collaborators: the umask's mode, not mkstemp's 0600
    import os

    umask = os.umask(0)
    os.umask(umask)
    for f in tmp_path.iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f.name
    assert metrics["decayed"] == [
        "blocks.0.fc1.weight",
        "blocks.1.fc1.weight",
        "classifier.linear.weight",
    ]


def test_window_test_fails_when_the_lr_is_annealed(tmp_path, small_config, synthetic_data):
    """Cosine-to-zero leaves J nearly unchanged at the end whatever the distance to the optimum:
    the window test must fail there instead of passing (THEORY §9)."""
    res = train(
        small_config(epochs=100, lr=3e-3, eval_every=30), data=synthetic_data(), progress=False
    )
    epochs = [h["epoch"] for h in res.history]
    assert epochs == [0, 30, 60, 90, 100]  # 90 = start of the final 10% window
    st = res.stationarity
    assert st["full_step"] is False and math.isnan(st["rel_change"])
    assert not st["converged"] and any("annealed" in r for r in st["reasons"])
    const = train(
        small_config(epochs=100, lr=3e-3, eval_every=30, lr_schedule="constant"),
        data=synthetic_data(),
        progress=False,
    )
    st = const.stationarity
    j90, j100 = const.history[-2]["objective"], const.history[-1]["objective"]
    assert st["full_step"] and st["rel_change"] == pytest.approx((j90 - j100) / j100)
    assert st["converged"] == (
        abs(st["rel_change"]) <= st["rel_tol"] and st["grad_norm"] <= st["grad_tol"]
    )


# ----------------------------------------------------------------------------------- divergence


def test_divergence_raises_and_keeps_checkpoint(tmp_path, small_config, synthetic_data):
    """SGD with lr·λ ≫ 2 makes the penalty grow geometrically until it overflows."""
    cfg = small_config(
        optimizer="sgd",
        momentum=0.0,
        lr=1e4,
        lr_schedule="constant",
        epochs=200,
        checkpoint_every=2,
        eval_every=2,
    )
    with pytest.raises(TrainingDivergedError, match="last good checkpoint is kept"):
        train(cfg, data=synthetic_data(), run_dir=tmp_path, progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert 2 <= ckpt["epoch"] < 200
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert all(math.isfinite(h["objective"]) for h in ckpt["history"])
    assert not (tmp_path / "metrics.json").exists()


# ------------------------------------------------------------------------------ UFM lower bound


def _ufm_layernorm_ce(K: int, d: int, lam: float) -> float:
    """LayerNorm-UFM CE optimum (THEORY §4): s* is the root of λs = r e^{−u}/(1+(K−1)e^{−u}),
    u = K r s/(K−1); value log(1 + (K−1)e^{−u*}) + λKs*²/2."""
    r = math.sqrt(d)

    def g(s: float) -> float:
        e = math.exp(-K * r * s / (K - 1))
        return lam * s - r * e / (1 + (K - 1) * e)

    s = brentq(g, 1e-12, r / (K * lam), xtol=1e-14)
    u = K * r * s / (K - 1)
    return math.log(1 + (K - 1) * math.exp(-u)) + lam * K * s**2 / 2


def _ufm_value(K: int, n: int, d: int, lam: float) -> float:
    try:
        import ufm

        return ufm.solve(
            ufm.Problem(
                loss="ce",
                num_classes=K,
                samples_per_class=n,
                width=d,
                lam_W=lam,
                features="layernorm",
            )
        ).value
    except (ImportError, AttributeError):
        return _ufm_layernorm_ce(K, d, lam)


def test_closed_form_reference_matches_spec_example():
    assert _ufm_layernorm_ce(10, 64, 0.005) == pytest.approx(0.02276, abs=2e-5)


@pytest.mark.parametrize("arch", ["rn1", "t11"])
def test_classifier_side_objective_above_layernorm_ufm(arch, small_config, synthetic_data):
    data = synthetic_data("image", n_per_class=10)
    cfg = small_config(arch=arch, width=8, depth=2, lam=0.05, epochs=300, lr=2e-2, eval_every=50)
    res = train(cfg, data=data, progress=False)
    ufm_star = _ufm_value(K, 10, cfg.width, cfg.lam)
    classifier_side = res.fit + res.classifier_penalty
    assert classifier_side >= ufm_star
    assert res.objective - ufm_star >= res.body_penalty - 1e-12
    # the bound is close, not vacuous: a well-trained network nearly attains it
    assert classifier_side < 1.25 * ufm_star


# ------------------------------------------------------------------------------------------ CLI


def test_cli_train_json(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli_main(
        [
            "train",
            "--arch",
            "rn1",
            "--depth",
            "2",
            "--width",
            "8",
            "--dataset",
            "digits",
            "--per-class",
            "5",
            "--test-per-class",
            "3",
            "--epochs",
            "20",
            "--lr",
            "1e-2",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--json",
            "--no-progress",
        ]
    )
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    back = load_result(out)
    assert printed["objective"] == back.objective
    assert back.config.n_per_class == 5 and back.config.dataset == "digits"
    assert len(back.labels) == 50


def test_num_threads_is_restored_and_cli_summary(tmp_path, capsys, small_config, synthetic_data):
    before = torch.get_num_threads()
    res = train(small_config(num_threads=1, epochs=10), data=synthetic_data(), progress=False)
    assert torch.get_num_threads() == before and res.completed
    rc = cli_main(
        [
            "train",
            "--dataset",
            "digits",
            "--per-class",
            "3",
            "--test-per-class",
            "2",
            "--width",
            "8",
            "--epochs",
            "10",
            "--lam-schedule",
            "inverse_depth",
            "--device",
            "cpu",
            "--num-threads",
            "1",
            "--no-progress",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0
    for word in ("J_L", "fit", "classifier", "body", "train acc", "test acc", "converged"):
        assert word in text
    assert load_result(tmp_path / "r").config.lam_schedule == "inverse_depth"
