"""Weakly supervised MIL models: padded bags of instance features in, bag predictions out.

One contract (:class:`MILModel`: ``forward(features, mask) -> MILOutput``, ``compute_loss``,
``predict``, ``config``) and one registry (:func:`build_model`, :func:`list_models`).
:func:`predict` returns predictions with attention and draws nothing; heatmaps are drawn by
:func:`histoguard.report.write_prediction_heatmaps`.
"""

from histoguard.errors import CohortError

# Imported for their registration side effect: each module registers its models (the registry
# itself imports none of them).
from histoguard.mil import _abmil, _clam, _dsmil, _pooling, _topk, _transmil  # noqa: F401
from histoguard.mil._bags import Bag, load_bags, predict_bags
from histoguard.mil._base import MILModel, MILOutput
from histoguard.mil._checkpoint import load_model, save_model
from histoguard.mil._cohort import Cohort, CohortRow, load_cohort
from histoguard.mil._compare import compare_designs
from histoguard.mil._end_to_end import (
    EndToEndConfig,
    EndToEndResult,
    FitHistory,
    fit_end_to_end,
    train_end_to_end,
)
from histoguard.mil._end_to_end_step import StepSettings, StepStats
from histoguard.mil._ensemble import FoldEnsemble, load_models
from histoguard.mil._evaluate import (
    EvaluationResult,
    TrustEvaluation,
    evaluate,
    format_trust_report,
    gate_performance,
    trust_report,
)
from histoguard.mil._metrics import (
    binary_metrics,
    bootstrap_ci,
    format_table,
    metrics_report,
    multiclass_metrics,
)
from histoguard.mil._predict import level0_tile_size, predict
from histoguard.mil._prediction import SlidePrediction
from histoguard.mil._provenance import PROVENANCE_FIELDS, read_provenance
from histoguard.mil._registry import (
    ModelInfo,
    build_model,
    get_model_info,
    list_models,
    register_model,
)
from histoguard.mil._splits import (
    Split,
    check_no_leak,
    get_or_create_splits,
    given_split,
    hold_out_calibration,
    kfold_splits,
    leave_one_center_out,
    load_splits,
    save_splits,
    unseen_center_splits,
)
from histoguard.mil._train import (
    TrainConfig,
    TrainResult,
    load_train_config,
    train,
    train_split,
)
from histoguard.mil._trust import (
    Trust,
    TrustReading,
    TrustSettings,
    apply_trust,
    batch_drift,
    fit_trust,
    load_trust,
    save_trust,
)

__all__ = [
    "PROVENANCE_FIELDS",
    "Bag",
    "Cohort",
    "CohortError",
    "CohortRow",
    "EndToEndConfig",
    "EndToEndResult",
    "EvaluationResult",
    "FitHistory",
    "FoldEnsemble",
    "MILModel",
    "MILOutput",
    "ModelInfo",
    "SlidePrediction",
    "Split",
    "StepSettings",
    "StepStats",
    "TrainConfig",
    "TrainResult",
    "Trust",
    "TrustEvaluation",
    "TrustReading",
    "TrustSettings",
    "apply_trust",
    "batch_drift",
    "binary_metrics",
    "bootstrap_ci",
    "build_model",
    "check_no_leak",
    "compare_designs",
    "evaluate",
    "fit_end_to_end",
    "fit_trust",
    "format_table",
    "format_trust_report",
    "gate_performance",
    "get_model_info",
    "get_or_create_splits",
    "given_split",
    "hold_out_calibration",
    "kfold_splits",
    "leave_one_center_out",
    "level0_tile_size",
    "list_models",
    "load_bags",
    "load_cohort",
    "load_model",
    "load_models",
    "load_splits",
    "load_train_config",
    "load_trust",
    "metrics_report",
    "multiclass_metrics",
    "predict",
    "predict_bags",
    "read_provenance",
    "register_model",
    "save_model",
    "save_splits",
    "save_trust",
    "train",
    "train_end_to_end",
    "train_split",
    "trust_report",
    "unseen_center_splits",
]
