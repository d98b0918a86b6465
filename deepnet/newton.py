"""A second-order polisher: full-batch Newton-CG in a trust region (Steihaug–Toint), float64.

Each iteration minimises the quadratic model of J at the current point θ within the trust region
‖p‖ ≤ Δ (THEORY §9),

  m(p) = J(θ) + gᵀp + ½ pᵀHp,   g = ∇J(θ),  H = ∇²J(θ),

by conjugate gradients on exact Hessian-vector products Hv = ∇(gᵀv) (double backward; H is never
formed), stopping at the boundary, on a direction of non-positive curvature, or once
‖Hp + g‖ ≤ min(0.5, √‖g‖)·‖g‖ (Steihaug 1983, Toint 1981; Nocedal & Wright, Algorithm 7.2). The
step is taken when ρ = (J(θ) − J(θ + p)) / (m(0) − m(p)) > ``eta``; Δ shrinks to Δ/4 when
ρ < 1/4 and doubles (up to ``max_radius``) when ρ > 3/4 and the step reached the boundary
(Algorithm 4.1). The constants are those of ``scipy.optimize.minimize(method="trust-ncg")``.

One iteration (accepted or not) is one "epoch" of a run, as one L-BFGS iteration is, and the run's
chunked loop treats it as it treats L-BFGS (:mod:`deepnet.train`): ``step`` returns early when the
trust region has collapsed below ``min_radius`` (no step of any length lowers J by what the model
predicts: the analogue of a failed line search), or when the gradient is exactly zero. Emptying
``state`` (the run's "memory restart") resets Δ to ``radius``. Correct rather than fast: each
CG iteration is one double-backward pass over the whole training set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

#: the defaults (scipy's trust-ncg: initial radius 1, max 1000, eta 0.15)
RADIUS = 1.0
MAX_RADIUS = 1000.0
ETA = 0.15
#: the trust region counts as collapsed below this radius (relative to 1 + ‖θ‖)
MIN_RADIUS = 1e-12
#: CG iterations per Newton step at most (the model is solved inexactly beyond this)
MAX_CG = 250


def _flat(tensors: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _boundary(z: Tensor, d: Tensor, radius: float) -> Tensor:
    """The τ ≥ 0 with ‖z + τ d‖ = radius (z inside the region)."""
    a, b, c = float(d @ d), 2.0 * float(z @ d), float(z @ z) - radius * radius
    tau = (-b + math.sqrt(max(b * b - 4.0 * a * c, 0.0))) / (2.0 * a)
    return torch.as_tensor(tau, dtype=z.dtype, device=z.device)


def steihaug_cg(
    g: Tensor, hvp: Callable[[Tensor], Tensor], radius: float, tol: float, max_iter: int
) -> tuple[Tensor, Tensor, bool]:
    """Approximately minimise gᵀp + ½ pᵀHp over ‖p‖ ≤ radius (Steihaug–Toint CG).

    Returns (p, Hp + g, whether p lies on the boundary); ``hvp(v)`` = H v.
    """
    z = torch.zeros_like(g)
    r = g.clone()  # residual H z + g
    if float(r.norm()) <= tol:
        return z, r, False
    d = -r
    for _ in range(max_iter):
        Hd = hvp(d)
        dHd = float(d @ Hd)
        if dHd <= 0.0:  # negative curvature: follow d to the boundary
            tau = _boundary(z, d, radius)
            return z + tau * d, r + tau * Hd, True
        rr = float(r @ r)
        alpha = rr / dHd
        z_next = z + alpha * d
        if float(z_next.norm()) >= radius:
            tau = _boundary(z, d, radius)
            return z + tau * d, r + tau * Hd, True
        r = r + alpha * Hd
        z = z_next
        if float(r.norm()) <= tol:
            return z, r, False
        d = -r + (float(r @ r) / rr) * d
    return z, r, False


class NewtonTR(torch.optim.Optimizer):
    """Trust-region Newton-CG over ``params`` (see the module docstring).

    ``step(closure)`` runs up to ``max_iter`` iterations (a param-group entry, as in
    ``torch.optim.LBFGS``); ``closure()`` must return J with its graph (no ``backward``: the
    optimizer differentiates it twice). ``state`` (on the first parameter) holds the radius and
    the iteration count ``n_iter``.
    """

    def __init__(
        self,
        params: Any,
        *,
        radius: float = RADIUS,
        max_radius: float = MAX_RADIUS,
        eta: float = ETA,
        min_radius: float = MIN_RADIUS,
        max_cg: int = MAX_CG,
        max_iter: int = 1,
    ) -> None:
        if not 0 < radius <= max_radius:
            raise ValueError(f"need 0 < radius <= max_radius, got {radius}, {max_radius}")
        if not 0 <= eta < 0.25:
            raise ValueError(f"eta must be in [0, 1/4), got {eta}")
        defaults = dict(
            radius=radius, max_radius=max_radius, eta=eta, min_radius=min_radius,
            max_cg=max_cg, max_iter=max_iter,
        )  # fmt: skip
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("NewtonTR takes one parameter group")

    @torch.no_grad()
    def _add(self, params: list[Tensor], flat: Tensor, sign: float = 1.0) -> None:
        offset = 0
        for p in params:
            n = p.numel()
            p.add_(flat[offset : offset + n].view_as(p), alpha=sign)
            offset += n

    def step(self, closure: Callable[[], Tensor]) -> Tensor:  # type: ignore[override]
        """Up to ``max_iter`` trust-region iterations; returns J at the start."""
        group = self.param_groups[0]
        params: list[Tensor] = [p for p in group["params"] if p.requires_grad]
        state = self.state[group["params"][0]]
        state.setdefault("radius", group["radius"])
        state.setdefault("n_iter", 0)
        J_start: Tensor | None = None
        for _ in range(group["max_iter"]):
            with torch.enable_grad():
                J = closure()
                grads = _grad(J, params, create_graph=True)
            if J_start is None:
                J_start = J.detach()
            g = _flat(grads).detach()
            gnorm = float(g.norm())
            if not math.isfinite(gnorm) or gnorm == 0.0:
                break  # a stationary point (or a non-finite one): no model to minimise

            def hvp(v: Tensor, grads: tuple[Tensor, ...] = grads) -> Tensor:
                with torch.enable_grad():
                    dot = torch.zeros((), dtype=v.dtype, device=v.device)
                    for gi, vi in zip(grads, _split(v, params)):
                        dot = dot + (gi * vi.view_as(gi)).sum()
                    hv = _grad(dot, params, retain_graph=True)
                return _flat(hv).detach()

            radius = float(state["radius"])
            tol = min(0.5, math.sqrt(gnorm)) * gnorm
            p, r, on_boundary = steihaug_cg(g, hvp, radius, tol, int(group["max_cg"]))
            # m(0) − m(p) = −(gᵀp + ½ pᵀHp) = −½ (gᵀp + pᵀ(Hp + g))
            predicted = -0.5 * (float(g @ p) + float(p @ r))
            J0 = float(J.detach())
            self._add(params, p)
            with torch.no_grad():
                J1 = float(closure())
            rho = (J0 - J1) / predicted if predicted > 0 else -math.inf
            if not (math.isfinite(J1) and rho > group["eta"]):
                self._add(params, p, -1.0)  # rejected: back to θ
            step = float(p.norm())
            if rho < 0.25:
                radius = 0.25 * step if step > 0 else 0.25 * radius
            elif rho > 0.75 and on_boundary:
                radius = min(2.0 * radius, float(group["max_radius"]))
            state["radius"] = radius
            state["n_iter"] += 1
            size = 1.0 + float(_flat([q.detach() for q in params]).norm())
            if radius < group["min_radius"] * size:
                break  # the trust region collapsed: J cannot be lowered along this model
        if J_start is None:  # no iteration ran (max_iter 0, or a zero gradient at once)
            with torch.no_grad():
                J_start = closure().detach()
        return J_start


def _grad(y: Tensor, params: list[Tensor], **kw: Any) -> tuple[Tensor, ...]:
    """∂y/∂params, with zeros for the parameters y does not depend on."""
    got = torch.autograd.grad(y, params, allow_unused=True, **kw)
    return tuple(torch.zeros_like(p) if g is None else g for g, p in zip(got, params))


def _split(flat: Tensor, params: list[Tensor]) -> list[Tensor]:
    out, offset = [], 0
    for p in params:
        n = p.numel()
        out.append(flat[offset : offset + n])
        offset += n
    return out


def newton_steps(
    opt: torch.optim.Optimizer, objective: Callable[[], Tensor], n: int
) -> tuple[int, Tensor]:
    """Run up to ``n`` iterations in one ``step`` call: (iterations run, J at the start). Fewer
    than ``n`` means the trust region collapsed (or the gradient vanished)."""
    if not isinstance(opt, NewtonTR):
        raise TypeError(f"newton_steps runs a NewtonTR, got {type(opt).__name__}")
    group = opt.param_groups[0]
    group["max_iter"] = n
    state = opt.state[group["params"][0]]
    before = int(state.get("n_iter", 0))
    J0 = opt.step(objective)
    return int(opt.state[group["params"][0]].get("n_iter", 0)) - before, J0
