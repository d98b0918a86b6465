"""The optimizer registry: every optimizer a run may name, and what the training loop, the config
validation, batched seeds and the command line need to know about it (THEORY §9).

Adding an optimizer is one :func:`register_optimizer` call and its code. First-order optimizers
(``full_batch=False``) step on minibatches with the run's learning-rate schedule, and batch over
seeds when their update is elementwise (``batchable``). Full-batch optimizers step on the exact
objective (a line search or a trust region needs it): a run of one counts iterations as epochs,
trains in chunks with a convergence check at the end of each, empties the optimizer's state when
it can make no progress, and ends with the escape probe (:mod:`deepnet.convergence`); they may
start with a first-order warm-up. ``float64`` optimizers refuse ``dtype="float32"`` and make
``dtype="auto"`` float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .newton import NewtonTR, newton_steps

if TYPE_CHECKING:  # the config reads this registry; the constructors read the config
    from .config import RunConfig

#: a full-batch optimizer's chunk: ``iterate(opt, objective, n)`` runs up to n iterations on
#: ``objective()`` (J with its graph, not yet differentiated) and returns (iterations run, J at
#: the start); fewer than n means it could make no progress from where it stopped
Iterate = Callable[[torch.optim.Optimizer, Callable[[], Tensor], int], tuple[int, Tensor]]

#: line-search evaluations allowed per L-BFGS iteration (torch's strong-Wolfe uses at most 25)
MAX_EVALS_PER_ITER = 25


@dataclass(frozen=True)
class OptimizerSpec:
    """One registered optimizer.

    ``make(params, config)`` builds it over ``params``; ``label`` names it in messages and figures;
    ``step_control`` is what picks its step length ("learning rate", "line search", "trust
    region"); ``iterate`` runs a full-batch optimizer's chunk (see :data:`Iterate`).
    """

    name: str
    label: str
    description: str
    make: Callable[[Sequence[Tensor], RunConfig], torch.optim.Optimizer]
    full_batch: bool = False
    float64: bool = False
    batchable: bool = False
    step_control: str = "learning rate"
    iterate: Iterate | None = None

    def __post_init__(self) -> None:
        if self.full_batch != (self.iterate is not None):
            raise ValueError(f"optimizer {self.name!r}: full-batch optimizers (only) need iterate")
        if self.full_batch and self.batchable:
            raise ValueError(f"optimizer {self.name!r}: a full-batch optimizer cannot batch seeds")

    @property
    def unit(self) -> str:
        """What one unit of ``epochs`` is for a run of this optimizer."""
        return "iterations" if self.full_batch else "epochs"

    def unbatchable_message(self) -> str:
        return (
            f"{self.label} needs a {self.step_control} per seed; batching it would couple the "
            "seeds' step sizes: run them one after another"
        )


OPTIMIZERS: dict[str, OptimizerSpec] = {}


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    """Add ``spec`` to the registry (a name may be registered once)."""
    if spec.name in OPTIMIZERS:
        raise ValueError(f"optimizer {spec.name!r} is already registered")
    OPTIMIZERS[spec.name] = spec
    return spec


def optimizer_spec(name: str) -> OptimizerSpec:
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name]


def first_order() -> tuple[str, ...]:
    """The optimizers a full-batch run may warm up with."""
    return tuple(n for n, s in OPTIMIZERS.items() if not s.full_batch)


# ------------------------------------------------------------------------------------ L-BFGS


def make_lbfgs(params: Sequence[Tensor], history: int) -> torch.optim.LBFGS:
    """Full-batch L-BFGS with a strong-Wolfe line search. Tolerances 0: stopping is ours (budget,
    criteria, stall), never torch's silent early exit."""
    return torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=1,
        history_size=history,
        tolerance_grad=0.0,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )


def lbfgs_steps(opt: torch.optim.Optimizer, closure: Any, n: int) -> tuple[int, Tensor]:
    """Run up to ``n`` L-BFGS iterations in one ``step`` call. Returns (iterations run, J at the
    start). Fewer than ``n`` means the line search could make no progress along the current
    direction (with memory: the quasi-Newton model is stale; without: a stall)."""
    group = opt.param_groups[0]
    group["max_iter"] = n
    group["max_eval"] = n * MAX_EVALS_PER_ITER + 1
    before = int(opt.state[group["params"][0]].get("n_iter", 0))
    loss = opt.step(closure)
    return int(opt.state[group["params"][0]].get("n_iter", 0)) - before, loss


def lbfgs_iterate(
    opt: torch.optim.Optimizer, objective: Callable[[], Tensor], n: int
) -> tuple[int, Tensor]:
    """:data:`Iterate` for L-BFGS: its closure differentiates J once per evaluation. The
    trajectory does not depend on how iterations are grouped into calls: each call re-evaluates
    J at the current point, which the state already determines."""

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=False)
        J = objective()
        J.backward()
        return J

    return lbfgs_steps(opt, closure, n)


# ------------------------------------------------------------------------------- the registry

register_optimizer(
    OptimizerSpec(
        "adam", "Adam", "Adam on minibatches (lr, lr_schedule, batch_size)",
        lambda params, cfg: torch.optim.Adam(params, lr=cfg.lr, foreach=True),
        batchable=True,
    )
)  # fmt: skip
register_optimizer(
    OptimizerSpec(
        "sgd", "SGD", "SGD with momentum on minibatches (lr, lr_schedule, momentum, batch_size)",
        lambda params, cfg: torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, foreach=True
        ),
        batchable=True,
    )
)  # fmt: skip
register_optimizer(
    OptimizerSpec(
        "lbfgs", "L-BFGS",
        "L-BFGS on the full batch in float64 with a strong-Wolfe line search (lbfgs_history)",
        lambda params, cfg: make_lbfgs(params, cfg.lbfgs_history),
        full_batch=True, float64=True, step_control="line search", iterate=lbfgs_iterate,
    )
)  # fmt: skip
register_optimizer(
    OptimizerSpec(
        "newton_tr", "Newton-TR",
        "trust-region Newton-CG (Steihaug-Toint) on exact Hessian-vector products, full batch, "
        "float64 (a polisher: see deepnet.newton)",
        lambda params, cfg: NewtonTR(params),
        full_batch=True, float64=True, step_control="trust region",
        iterate=newton_steps,
    )
)  # fmt: skip
