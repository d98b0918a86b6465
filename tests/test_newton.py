"""The second-order polisher (deepnet.newton, registered as optimizer "newton_tr"): it reaches
known minimisers, and it trains a small ResNet through the same chunked loop, convergence
criteria and escape probe as L-BFGS (THEORY §9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepnet import OPTIMIZERS, RunConfig, train
from deepnet.newton import NewtonTR, newton_steps, steihaug_cg

torch.set_num_threads(1)


def _minimise(f, x0, iterations: int = 200):
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = NewtonTR([x])
    done, _ = newton_steps(opt, lambda: f(x), iterations)
    return x.detach().numpy(), done, opt


@pytest.mark.unit
def test_rosenbrock_reaches_its_minimiser():
    def rosenbrock(x):
        return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2

    x, done, _ = _minimise(rosenbrock, [-1.2, 1.0])
    np.testing.assert_allclose(x, [1.0, 1.0], rtol=0, atol=1e-8)
    assert done < 200  # at the minimiser the trust region collapses: the loop is told so


@pytest.mark.unit
def test_negative_curvature_is_followed_to_the_minimiser():
    """At x ≈ 0, ∂²f/∂x² = −4: Steihaug-CG leaves along the direction of negative curvature."""

    def double_well(x):
        return (x[0] ** 2 - 1) ** 2 + x[1] ** 2

    x, _, _ = _minimise(double_well, [1e-3, 0.5])
    np.testing.assert_allclose(x, [1.0, 0.0], rtol=0, atol=1e-8)


@pytest.mark.unit
def test_a_quadratic_is_solved_and_the_model_step_respects_the_region():
    rng = np.random.default_rng(0)
    M = rng.normal(size=(6, 6))
    A = torch.tensor(M @ M.T + np.eye(6), dtype=torch.float64)
    b = torch.tensor(rng.normal(size=6), dtype=torch.float64)
    x, _, _ = _minimise(lambda x: 0.5 * x @ A @ x - b @ x, np.zeros(6))
    np.testing.assert_allclose(x, np.linalg.solve(A.numpy(), b.numpy()), rtol=0, atol=1e-8)
    # inside the region the CG step is the Newton step; at a small radius it lies on the boundary
    p, r, on_boundary = steihaug_cg(-b, lambda v: A @ v, 1e6, 1e-14, 50)
    np.testing.assert_allclose(p.numpy(), np.linalg.solve(A.numpy(), b.numpy()), atol=1e-10)
    assert not on_boundary and float(r.norm()) <= 1e-10
    p, _, on_boundary = steihaug_cg(-b, lambda v: A @ v, 1e-3, 1e-14, 50)
    assert on_boundary and abs(float(p.norm()) - 1e-3) <= 1e-15


@pytest.mark.unit
def test_the_registry_entry_says_what_the_loop_needs():
    spec = OPTIMIZERS["newton_tr"]
    assert spec.full_batch and spec.float64 and not spec.batchable and spec.iterate is not None
    assert RunConfig(optimizer="newton_tr").torch_dtype_name == "float64"
    assert RunConfig(optimizer="newton_tr").whiten_embedding is True
    with pytest.raises(ValueError, match="Newton-TR is full-batch"):
        RunConfig(optimizer="newton_tr", batch_size=10)
    with pytest.raises(ValueError, match="Newton-TR runs in float64"):
        RunConfig(optimizer="newton_tr", dtype="float32")


@pytest.mark.integration
def test_trains_a_tiny_resnet_to_a_converged_point(tmp_path, synthetic_data, small_config):
    """The same chunked loop as L-BFGS: a check every chunk, the escape probe, a stop once the
    criteria hold; a resumed run is bitwise the uninterrupted one (the trust radius is state)."""
    data = synthetic_data("vector", 10)
    cfg = small_config(
        optimizer="newton_tr", epochs=100, chunk_epochs=10, depth=1, eval_every=5,
        escape_lbfgs_iters=10, escape_adam_steps=50,
    )  # fmt: skip
    res = train(cfg, data=data, progress=False)
    st = res.stationarity
    assert res.converged and st.reasons == ()
    assert st.grad_norm <= cfg.grad_tol and abs(st.rel_change) <= cfg.rel_tol
    assert st.escape_rel <= cfg.escape_tol  # the probe ran and could not lower J
    assert res.epochs_done < cfg.epochs and len(res.checks) >= 1  # stopped by the criteria
    assert {h["phase"] for h in res.history} <= {"newton_tr", "escape"}
    assert all(h["lr"] is None for h in res.history)
    # the minimum L-BFGS converges to from the same start, polished: J no higher than there
    ref = train(small_config(**{**cfg.to_dict(), "optimizer": "lbfgs"}), data=data, progress=False)
    assert ref.converged and res.objective <= ref.objective
    assert res.objective == pytest.approx(ref.objective, rel=cfg.rel_tol)
    assert st.grad_norm < ref.stationarity.grad_norm
    train(cfg, data=data, run_dir=tmp_path, progress=False, max_epochs_this_call=7)
    resumed = train(cfg, data=data, run_dir=tmp_path, progress=False)
    assert resumed.objective == res.objective and resumed.stationarity == res.stationarity
