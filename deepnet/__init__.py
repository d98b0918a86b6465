"""deepcollapse.deepnet: deep LayerNorm ResNets and transformers trained on the exact objective.

Public (``__all__``; what ``reduction`` may import, docs/CONTRACTS.md): the run's definition and
record (:class:`RunConfig`, :class:`RunResult`, :class:`Stationarity`, the fingerprint
functions), training (:func:`train`, :func:`train_batched`, :func:`check_batchable`,
:class:`TrainingDivergedError`, :func:`load_run_data`, :func:`check_threads`), the registries
(:data:`ARCHS` / :func:`register_arch`, :data:`OPTIMIZERS` / :func:`register_optimizer`), the
models (:class:`ResNet`, :class:`Transformer` with their configs, :class:`LayerNorm`), and the
run folder (:func:`load_result`, :func:`checkpoint_summary`, :func:`depth_of_state`,
:func:`restart_copy`, the checkpoint errors). Data: ``deepnet.data``.
"""

from deepcollapse import __version__
from deepcollapse.output import require as _require

_require("torch", "torch", "deepnet (the deep networks and their training)")

from .batched import check_batchable, train_batched  # noqa: E402
from .config import (  # noqa: E402
    MAX_DEPTH,
    RESUME_FREE,
    RunConfig,
    RunResult,
    Stationarity,
    fingerprint,
    fingerprint_diff,
    fingerprint_fields,
    fingerprint_of,
)
from .continuation import restart_copy  # noqa: E402
from .convergence import escape_probe, stationarity  # noqa: E402
from .io import (  # noqa: E402
    CorruptCheckpointError,
    CorruptSourceError,
    checkpoint_summary,
    depth_of_state,
    load_result,
)
from .layers import Classifier, CollapseNet, LayerNorm  # noqa: E402
from .models import ARCHS, Arch, build_model, register_arch  # noqa: E402
from .objective import evaluate, gradient_norms  # noqa: E402
from .optimizers import OPTIMIZERS, OptimizerSpec, register_optimizer  # noqa: E402
from .resnet import ResNet, ResNetConfig  # noqa: E402
from .runstate import TrainingDivergedError, check_threads, load_run_data  # noqa: E402
from .train import train  # noqa: E402
from .transformer import Transformer, TransformerConfig  # noqa: E402

__all__ = [
    "ARCHS",
    "MAX_DEPTH",
    "OPTIMIZERS",
    "RESUME_FREE",
    "Arch",
    "Classifier",
    "CollapseNet",
    "CorruptCheckpointError",
    "CorruptSourceError",
    "LayerNorm",
    "OptimizerSpec",
    "ResNet",
    "ResNetConfig",
    "RunConfig",
    "RunResult",
    "Stationarity",
    "TrainingDivergedError",
    "Transformer",
    "TransformerConfig",
    "__version__",
    "build_model",
    "check_batchable",
    "check_threads",
    "checkpoint_summary",
    "depth_of_state",
    "escape_probe",
    "evaluate",
    "fingerprint",
    "fingerprint_diff",
    "fingerprint_fields",
    "fingerprint_of",
    "gradient_norms",
    "load_result",
    "load_run_data",
    "register_arch",
    "register_optimizer",
    "restart_copy",
    "stationarity",
    "train",
    "train_batched",
]
