"""deepcollapse.deepnet: deep LayerNorm ResNets and transformers trained on the exact objective.

Public: :class:`RunConfig`, :func:`train` → :class:`RunResult`, :func:`load_result`,
:class:`TrainingDivergedError`, :func:`build_model`, the models (:class:`ResNet`,
:class:`Transformer`) with their configs, and :class:`LayerNorm`. Data: ``deepnet.data``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deepcollapse")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from .layers import Classifier, CollapseNet, LayerNorm
from .resnet import ResNet, ResNetConfig
from .train import (
    RunConfig,
    RunResult,
    TrainingDivergedError,
    atomic_write,
    build_model,
    evaluate,
    load_result,
    load_run_data,
    train,
)
from .transformer import Transformer, TransformerConfig

__all__ = [
    "Classifier",
    "CollapseNet",
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
    "evaluate",
    "load_result",
    "load_run_data",
    "train",
]
