"""deepcollapse.ufm: global optima of unconstrained-features models (UFM) and their certificates.

`Problem` states a UFM (loss, classes, samples per class, width, regularisation, feature
constraint, identical inputs); `solve` returns its global optimum (closed form of THEORY §4/§11
where one exists, else a multi-start float64 solver, whose `Solution.status` says whether the
optimum is certified global); `certify` lower-bounds the optimum by a
convex program or its dual (THEORY §5). The generalised UFM of language modelling (THEORY §11):
`context_counts` groups identical contexts, `Problem.from_label_counts` builds the problem and
`gufm_geometry` measures how far its optimum is from collapse.

Importing the package loads numpy and scipy only; cvxpy is imported when an SDP certificate is
computed.
"""

from importlib.metadata import PackageNotFoundError, version

from .certificate import Certificate, certify, estimate_seconds
from .closed_form import ClosedFormUnavailable, closed_form, closed_form_reason
from .gufm import GUFMGeometry, context_counts, gufm_geometry
from .problem import Points, Problem, evaluate
from .solution import Method, Solution, Status, classify_geometry
from .solver import UncertifiedOptimumWarning, solve, solve_numerical

try:
    __version__ = version("deepcollapse")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Certificate",
    "ClosedFormUnavailable",
    "GUFMGeometry",
    "Method",
    "Points",
    "Problem",
    "Solution",
    "Status",
    "UncertifiedOptimumWarning",
    "__version__",
    "certify",
    "classify_geometry",
    "closed_form",
    "closed_form_reason",
    "context_counts",
    "estimate_seconds",
    "evaluate",
    "gufm_geometry",
    "solve",
    "solve_numerical",
]
