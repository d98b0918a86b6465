"""The result of `ufm.solve`: an optimum (W, H, b) with its value and geometry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

from .problem import Points, Problem

#: whether a solution's value is known to be the global optimum (see :class:`Solution`)
Status = Literal["closed_form", "certified", "not_certified", "unknown"]
#: how a solution was found
Method = Literal["closed_form", "numerical"]


@dataclass(frozen=True)
class Solution:
    """Optimum of a UFM problem.

    ``W`` (K×width), ``H_points`` (width×P, one feature per point of ``points``), ``b`` (K,) or
    None; ``H`` (width×N, samples class-major) is expanded from the points on access.
    ``value = fit + penalty``. ``method`` (:data:`Method`) is "closed_form" or "numerical".

    ``status`` (:data:`Status`) says whether the value is known to be the global optimum:
    "closed_form" (a theorem, THEORY §4/§11), "certified" (the dual bound ``lower_bound`` is
    within a relative 1e-6 of ``value``, THEORY §5), "not_certified" (the best of several starts;
    the relaxation is not tight, so no bound proves it global) or "unknown" (not checked).
    ``certified`` is True for the first two.
    """

    problem: Problem
    W: np.ndarray
    H_points: np.ndarray
    b: np.ndarray | None
    value: float
    fit: float
    penalty: float
    geometry: str
    method: Method
    points: Points
    info: dict = field(default_factory=dict)
    status: Status = "unknown"
    lower_bound: float | None = None

    def __post_init__(self) -> None:
        if self.status not in get_args(Status):
            raise ValueError(f"status must be one of {get_args(Status)}, got {self.status!r}")
        if self.method not in get_args(Method):
            raise ValueError(f"method must be one of {get_args(Method)}, got {self.method!r}")

    @property
    def certified(self) -> bool:
        """Global optimality is proven (closed form, or a dual bound within 1e-6)."""
        return self.status in ("closed_form", "certified")

    @property
    def H(self) -> np.ndarray:
        """Features of every sample (width × N, class-major)."""
        return self.H_points[:, self.points.assignment]

    @property
    def class_means(self) -> np.ndarray:
        """μ_k = (1/n_k) Σ_{i: y_i = k} h_i (width × K), computed from the points; NaN columns
        for classes without samples."""
        return class_means(self.H_points, self.points.counts)

    def summary(self) -> dict:
        """Numbers for printing: value split, norms, geometry."""
        M = self.class_means
        return {
            "value": self.value, "fit": self.fit, "penalty": self.penalty,
            "geometry": self.geometry, "method": self.method, "status": self.status,
            "lower_bound": self.lower_bound,
            "norm_W": float(np.linalg.norm(self.W)),
            "mean_row_norm_W": float(np.mean(np.linalg.norm(self.W, axis=1))),
            # over classes with samples (a label-count problem may have empty ones)
            "mean_class_mean_norm": float(np.mean(np.linalg.norm(M[:, ~np.isnan(M[0])],
                                                                 axis=0))),
            "norm_b": None if self.b is None else float(np.linalg.norm(self.b)),
        }


def class_means(Hp: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Class means (d × K) from point features Hp (d × P) and label counts C (K × P); NaN for
    empty classes."""
    n = C.sum(axis=1)
    S = Hp @ C.T
    out = np.full_like(S, np.nan)
    np.divide(S, n, out=out, where=n > 0)
    return out


def classify_geometry(W: np.ndarray, M: np.ndarray, tol: float = 1e-5) -> str:
    """Name the configuration of the class means M (d×K) and classifier W (K×d).

    "zero" when both vanish; "numerical" when a class is empty; "simplex_etf" when the
    normalised Gram of the means is K/(K−1)·P_K; "orthogonal_frame" when it is I; "equiangular"
    for equal norms and equal cosines; otherwise "numerical".
    """
    keep = ~np.isnan(M).any(axis=0)  # empty classes have no mean
    if not keep.all():
        return "numerical"
    K = M.shape[1]
    scale = max(float(np.abs(M).max(initial=0.0)), float(np.abs(W).max(initial=0.0)))
    if scale < 1e-7:
        return "zero"
    M = M / max(float(np.abs(M).max(initial=0.0)), 1e-300)  # scale-free (radius 1e-200 or 1e200)
    norms = np.linalg.norm(M, axis=0)
    if not norms.max() > 0 or norms.min() < tol * norms.max():
        return "numerical"
    G = (M.T @ M) / np.outer(norms, norms)
    etf = (K / (K - 1)) * (np.eye(K) - 1.0 / K)
    equinorm = np.ptp(norms) <= tol * norms.max()
    if not equinorm:
        return "numerical"
    if np.abs(G - etf).max() <= tol:
        return "simplex_etf"
    if np.abs(G - np.eye(K)).max() <= tol:
        return "orthogonal_frame"
    off = G[~np.eye(K, dtype=bool)]
    if np.ptp(off) <= tol:
        return "equiangular"
    return "numerical"
