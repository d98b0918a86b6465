"""deepcollapse.ufm: global optima of unconstrained-features models (UFM) and their certificates.

`Problem` states a UFM (loss, classes, samples per class, width, regularisation, feature
constraint); `solve` returns its global optimum (closed form of SPEC §4 where one exists, else a
multi-start float64 solver); `certify` lower-bounds the optimum by a convex program (SPEC §5).
"""

from importlib.metadata import PackageNotFoundError, version

from .certificate import Certificate, certify
from .closed_form import ClosedFormUnavailable, closed_form, closed_form_reason
from .problem import Points, Problem, evaluate
from .solution import Solution, classify_geometry
from .solver import solve, solve_numerical

try:
    __version__ = version("deepcollapse")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Certificate",
    "ClosedFormUnavailable",
    "Points",
    "Problem",
    "Solution",
    "__version__",
    "certify",
    "classify_geometry",
    "closed_form",
    "closed_form_reason",
    "evaluate",
    "solve",
    "solve_numerical",
]
