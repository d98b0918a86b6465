"""BLAS thread control for the small dense problems of `ufm`."""

from __future__ import annotations

import contextlib

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
    threadpool_limits = None


def single_thread_blas() -> contextlib.AbstractContextManager:
    """One BLAS thread: the solver's matrices are small, and multithreaded BLAS on them under a
    loaded machine was measured 20–50× slower per L-BFGS iteration than a single thread."""
    if threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
