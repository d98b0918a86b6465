"""deepcollapse.deepnet: deep LayerNorm ResNets and transformers trained on the exact objective.

Public: :class:`RunConfig`, :func:`train` → :class:`RunResult`, :func:`load_result`,
:class:`TrainingDivergedError`, :func:`build_model` and the architecture registry
(:data:`ARCHS`, :func:`register_arch`), the models (:class:`ResNet`, :class:`Transformer`) with
their configs, and :class:`LayerNorm`. Data: ``deepnet.data``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deepcollapse")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from deepcollapse.output import require as _require

_require("torch", "torch", "deepnet (the deep networks and their training)")

from .config import RunConfig, RunResult  # noqa: E402
from .convergence import escape_probe, stationarity  # noqa: E402
from .io import CorruptCheckpointError, atomic_write, load_result  # noqa: E402
from .layers import Classifier, CollapseNet, LayerNorm  # noqa: E402
from .models import ARCHS, Arch, build_model, register_arch  # noqa: E402
from .objective import evaluate, gradient_norms  # noqa: E402
from .resnet import ResNet, ResNetConfig  # noqa: E402
from .train import TrainingDivergedError, load_run_data, train  # noqa: E402
from .transformer import Transformer, TransformerConfig  # noqa: E402

__all__ = [
    "ARCHS",
    "Arch",
    "Classifier",
    "CollapseNet",
    "CorruptCheckpointError",
    "LayerNorm",
    "ResNet",
    "ResNetConfig",
    "RunConfig",
    "RunResult",
    "TrainingDivergedError",
    "Transformer",
    "TransformerConfig",
    "__version__",
    "atomic_write",
    "build_model",
    "escape_probe",
    "evaluate",
    "gradient_norms",
    "load_result",
    "load_run_data",
    "register_arch",
    "stationarity",
    "train",
]
