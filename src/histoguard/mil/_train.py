"""Training MIL models from slide labels, validated per fold and per center.

Feature bags are read once and cached in memory; each split trains one model with AdamW,
class-balanced loss, early stopping on the validation split and a fixed seed; the best state is
saved as safetensors plus a JSON config that rebuilds the model (no pickles) and records the
training features' provenance (encoder, weights, mpp, tile size) so prediction can check it.
Progress: per-epoch losses are logged at INFO; ``progress=True`` draws split and epoch bars.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from histoguard.core._atomic import write_bytes_atomic, write_json_atomic
from histoguard.errors import ConfigError
from histoguard.harmonize import FIT_TILES_PER_SLIDE, MIN_NEW_CENTER_SLIDES
from histoguard.mil._bags import Bag, BagCache, bag_batch, load_bags, predict_bags
from histoguard.mil._base import MILModel, class_balanced_weights
from histoguard.mil._checkpoint import save_model
from histoguard.mil._cohort import Cohort, load_cohort
from histoguard.mil._config_checks import check_model_settings, checked_type, did_you_mean
from histoguard.mil._ensemble import FoldEnsemble, fold_dir_name, remove_stale_run_temporaries
from histoguard.mil._harmonized import HarmonizedModel
from histoguard.mil._harmonized_training import check_harmonize_cohort, split_harmonizer
from histoguard.mil._metrics import format_table, metrics_report
from histoguard.mil._provenance import training_provenance
from histoguard.mil._registry import build_model
from histoguard.mil._robust_training import RobustObjective, check_adversarial_centers
from histoguard.mil._splits import (
    Split,
    get_or_create_splits,
    given_split,
    hold_out_calibration,
    kfold_splits,
    leave_one_center_out,
)
from histoguard.mil._trust import TrustSettings

logger = logging.getLogger(__name__)

SplitDesign = Literal["kfold", "leave-one-center-out", "given"]
#: ``TrainConfig.harmonize`` values: no harmonisation, or a :class:`Harmonizer` method.
HARMONIZE_METHODS = ("none", "combat", "covbat")

#: ``bags_per_step`` when a contrastive loss is asked for with the default of 1.
CONTRASTIVE_BAGS_PER_STEP = 8

_SPLIT_MAKERS: dict[str, Callable[[Cohort, int, int], list[Split]]] = {
    "kfold": lambda cohort, k, seed: kfold_splits(cohort, k=k, seed=seed),
    "leave-one-center-out": lambda cohort, k, seed: leave_one_center_out(cohort, seed=seed),
    "given": lambda cohort, k, seed: given_split(cohort),
}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that decides a training run; saved with the results.

    Attributes:
        cohort: CSV/Parquet table with ``slide_id``, ``label`` and optional ``patient_id``,
            ``center``, ``split``.
        features: folder of ``<slide_id>.h5`` feature files.
        out: output folder.
        model: registered MIL model name (``abmil``, ``clam-sb``, ``transmil``, ...).
        model_kwargs: extra constructor arguments of the model.
        split: ``kfold`` (patient-grouped, stratified), ``leave-one-center-out`` or ``given``.
        k: folds for ``kfold``.
        epochs: maximum epochs per split.
        patience: stop after this many epochs without a better validation loss.
        lr, weight_decay: AdamW settings.
        max_instances: train on a random subset of at most this many tiles per bag and step
            (None: all); prediction always uses every tile.
        class_balanced: weight the loss by inverse class frequency of the training split.
        seed: seeds splits, initialisation, sampling.
        threshold: decision threshold for sensitivity/specificity (binary tasks).
        n_boot: bootstrap resamples for confidence intervals.
        seeds: models per split, seeds ``seed``, ``seed + 1``, ...: a deep ensemble whose
            disagreement is part of the reported uncertainty (``fold_i``, ``fold_i-seed1``...).
        calibration_fraction: share of slides (whole patients) held out from every split to
            fit calibration, conformal sets and the out-of-distribution gate (0: none; a
            ``given`` split uses its ``calibration`` rows instead).
        alpha, conformal_score, mondrian, calibrator, ood_score, ood_k, ood_alpha,
            drift_alpha: see :class:`~histoguard.mil.TrustSettings`.
        harmonize: ``"none"``, ``"combat"`` or ``"covbat"``: each split fits a harmoniser on
            its training slides' tiles (the slide label as the covariate to keep; needs a
            ``center`` for every slide), trains on harmonised features, and saves it with
            the model (``fold_i/harmonizer/``), which applies it at predict time. Centers a
            split never trained on (its held-out center) are harmonised label-free from
            their own slides, without labels.
        harmonize_parametric: parametric (True) or non-parametric empirical Bayes.
        harmonize_tiles: tiles per slide (seeded sample) the harmoniser is estimated from.
        harmonize_min_slides: fewest slides of an unseen center for its label-free estimate.
        adversarial_weight: λ_max of a center-adversarial head with gradient reversal on the
            bag embedding (DANN schedule; 0: off). Splits training on fewer than 2 centers
            skip it with a warning; a run where no split has 2 is refused.
        adversarial_unlabelled: each split's held-out test slides also join the adversary, as
            unlabelled bags of their own centers (one per training bag and step; features
            only, never labels; not the calibration slides). Transductive: the held-out
            slides' features shape the model. Lets leave-one-center-out use the adversary.
        contrastive_weight: weight of a supervised-contrastive loss on the bag embeddings of
            each step, positives = same class from another center (0: off).
        contrastive_temperature: its temperature τ.
        bags_per_step: bags whose losses are averaged into one optimiser step. With
            ``contrastive_weight > 0`` a value of 1 (which leaves the loss nothing to contrast)
            is raised to :data:`CONTRASTIVE_BAGS_PER_STEP`. Memory grows with it: every bag's
            graph is kept until the step's backward pass.
        pad_batches: run a step's ``bags_per_step`` bags through the model as one zero-padded
            batch ``(B, N_max, D)`` with its mask (one forward and backward pass instead of B)
            and take :meth:`~MILModel.compute_loss` of the batch: the mean of the bags'
            class-weighted terms, as without this option. False: every bag alone, losses
            averaged.
    """

    cohort: Path
    features: Path
    out: Path
    model: str = "abmil"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    split: SplitDesign = "kfold"
    k: int = 5
    epochs: int = 40
    patience: int = 8
    lr: float = 2e-4
    weight_decay: float = 1e-4
    max_instances: int | None = 4096
    class_balanced: bool = True
    seed: int = 0
    threshold: float = 0.5
    n_boot: int = 1000
    seeds: int = 1
    calibration_fraction: float = 0.2
    # The trust settings, flat for YAML and the command line; defaults from TrustSettings.
    alpha: float = TrustSettings.alpha
    conformal_score: str = TrustSettings.score
    mondrian: str = TrustSettings.mondrian
    calibrator: str = TrustSettings.calibrator
    ood_score: str = TrustSettings.ood_score
    ood_k: int = TrustSettings.ood_k
    ood_alpha: float = TrustSettings.ood_alpha
    drift_alpha: float = TrustSettings.drift_alpha
    harmonize: str = "none"
    harmonize_parametric: bool = True
    harmonize_tiles: int = FIT_TILES_PER_SLIDE
    harmonize_min_slides: int = MIN_NEW_CENTER_SLIDES
    # Training-time robustness (mil/_robust_training.py); all off by default.
    adversarial_weight: float = 0.0
    adversarial_unlabelled: bool = False
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.1
    bags_per_step: int = 1
    pad_batches: bool = False

    def __post_init__(self) -> None:
        if self.split not in _SPLIT_MAKERS:
            raise ConfigError(f"split must be one of {sorted(_SPLIT_MAKERS)}, got {self.split!r}")
        if self.harmonize not in HARMONIZE_METHODS:
            raise ConfigError(
                f"harmonize must be one of {list(HARMONIZE_METHODS)}, got {self.harmonize!r}"
            )
        for name, lowest in (
            ("epochs", 1), ("patience", 1), ("k", 2), ("n_boot", 1), ("seeds", 1),
            ("harmonize_tiles", 2), ("harmonize_min_slides", 2),
        ):  # fmt: skip
            if getattr(self, name) < lowest:
                raise ConfigError(f"{name} must be >= {lowest}, got {getattr(self, name)}")
        if self.max_instances is not None and self.max_instances < 1:
            raise ConfigError(f"max_instances must be >= 1 or None, got {self.max_instances}")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ConfigError(
                f"need lr > 0 and weight_decay >= 0, got lr={self.lr}, "
                f"weight_decay={self.weight_decay}"
            )
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        check_model_settings(self.model, self.model_kwargs)
        if not 0 <= self.calibration_fraction < 1:
            raise ConfigError(
                f"calibration_fraction must be in [0, 1), got {self.calibration_fraction}"
            )
        self.trust_settings()  # checks the trust settings
        if not self.adversarial_weight >= 0 or not self.contrastive_weight >= 0:
            raise ConfigError(
                f"need adversarial_weight >= 0 and contrastive_weight >= 0, got "
                f"{self.adversarial_weight}, {self.contrastive_weight}"
            )
        if self.adversarial_unlabelled and not self.adversarial_weight > 0:
            raise ConfigError(
                "adversarial_unlabelled feeds test slides to the center adversary, which is off "
                "(adversarial_weight=0): set adversarial_weight > 0 or drop adversarial_unlabelled"
            )
        if not self.contrastive_temperature > 0:
            raise ConfigError(
                f"contrastive_temperature must be > 0, got {self.contrastive_temperature}"
            )
        if self.bags_per_step < 1:
            raise ConfigError(f"bags_per_step must be >= 1, got {self.bags_per_step}")
        if self.contrastive_weight > 0 and self.bags_per_step == 1:
            object.__setattr__(self, "bags_per_step", CONTRASTIVE_BAGS_PER_STEP)

    def trust_settings(self) -> TrustSettings:
        """The calibration, conformal and gate settings of this run."""
        return TrustSettings(
            alpha=self.alpha,
            score=self.conformal_score,  # type: ignore[arg-type]
            mondrian=self.mondrian,  # type: ignore[arg-type]
            calibrator=self.calibrator,  # type: ignore[arg-type]
            ood_score=self.ood_score,  # type: ignore[arg-type]
            ood_k=self.ood_k,
            ood_alpha=self.ood_alpha,
            drift_alpha=self.drift_alpha,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible values (paths as strings)."""
        return json.loads(json.dumps(asdict(self), default=str))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class TrainResult:
    """Where the run's outputs are, its metrics report, and the report as the text table
    written to ``metrics.txt`` (metrics, then the trust part when there is one)."""

    out: Path
    report: dict[str, Any]
    fold_dirs: tuple[Path, ...]
    table: str = ""


def load_train_config(path: Path | None, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML (or JSON) file, with ``overrides`` (None = not given)
    taking precedence.

    Everything is checked here, before a run writes anything: the file exists and parses,
    every key is a setting, every value has the setting's type and range, the model is
    registered and takes the ``model_kwargs`` given.

    Raises:
        ConfigError: a missing or unparsable file (with line and column), unknown or missing
            settings, a value of the wrong type or out of range, an unknown model or a model
            setting it does not take; the message names the file and the setting.
    """
    import yaml

    where = f"{path}: " if path is not None else ""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found; check the path") from None
        except OSError as error:
            raise ConfigError(f"{path}: cannot read the config file ({error})") from None
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or error
            raise ConfigError(
                f"{path}: not valid YAML{at}: {problem}; fix the syntax there"
            ) from None
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: expected a mapping of settings (key: value lines), "
                f"got {type(loaded).__name__}"
            )
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = sorted(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(map(str, values)) - set(known))
    if unknown:
        hints = "".join(did_you_mean(name, known) for name in unknown)
        raise ConfigError(f"{where}unknown training settings {unknown}.{hints} Known: {known}")
    missing = [name for name in ("cohort", "features", "out") if name not in values]
    if missing:
        raise ConfigError(
            f"{where}missing training settings {missing}; set them in the config file or "
            "pass --cohort, --features, --out"
        )
    for name, value in values.items():
        values[name] = checked_type(name, value, where)
    try:
        return TrainConfig(**values)
    except ConfigError as error:
        raise ConfigError(f"{where}{error}") from None


def _mean_loss(
    model: MILModel, bags: Sequence[Bag], labels: torch.Tensor, weights: torch.Tensor | None
) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for bag, label in zip(bags, labels, strict=True):
            features, mask = bag_batch(bag, None, None)
            output = model(features, mask)
            total += float(model.compute_loss(output, label.view(1), class_weights=weights))
    return total / max(1, len(bags))


def _cached_mean_loss(
    model: MILModel,
    cache: BagCache,
    rows: Sequence[int],
    labels: torch.Tensor,
    weights: torch.Tensor | None,
) -> float:
    """:func:`_mean_loss` over standardised bags ``rows`` of ``cache`` (the same values)."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for row, label in zip(rows, labels, strict=True):
            output = model.forward_standardized(*cache.batch(row, None, None))
            total += float(model.compute_loss(output, label.view(1), class_weights=weights))
    return total / max(1, len(rows))


def train_split(
    split: Split,
    cohort: Cohort,
    bags: dict[str, Bag],
    config: TrainConfig,
    *,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> MILModel:
    """Train one model on ``split.train``, early-stopped on ``split.val``; returns the best.

    Each epoch's mean training loss (the classification loss) and validation loss are logged
    at INFO, and with ``adversarial_weight > 0`` the center adversary's accuracy. One step
    averages the losses of ``bags_per_step`` bags and adds the robustness terms of
    :class:`~histoguard.mil._robust_training.RobustObjective` (none by default); with
    ``adversarial_unlabelled`` it also runs one drawn test bag per training bag, for the
    adversary only (test labels are never read).

    Args:
        on_epoch: called as ``on_epoch(epoch, train_loss, val_loss)`` after every epoch.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train_ids, val_ids = list(split.train), list(split.val) or list(split.train)
    known = {*train_ids, *val_ids}  # the test slides' labels are never read
    label_of = {r.slide_id: cohort.label_index(r) for r in cohort.rows if r.slide_id in known}
    train_labels = torch.tensor([label_of[s] for s in train_ids])
    val_labels = torch.tensor([label_of[s] for s in val_ids])
    in_dim = int(bags[train_ids[0]].features.shape[1])
    model = build_model(
        config.model, in_dim=in_dim, n_classes=len(cohort.labels), **config.model_kwargs
    )
    model.fit_feature_scaling(torch.cat([bags[s].features for s in train_ids]))
    # Training and validation bags, standardised once; rows 0.. are the training bags in order.
    cached = list(dict.fromkeys([*train_ids, *val_ids]))
    cache = BagCache([bags[s] for s in cached], model)
    row_of = {slide_id: row for row, slide_id in enumerate(cached)}
    val_rows = [row_of[s] for s in val_ids]
    robust = RobustObjective(
        model, split, cohort,
        adversarial_weight=config.adversarial_weight,
        contrastive_weight=config.contrastive_weight,
        temperature=config.contrastive_temperature, unlabelled=config.adversarial_unlabelled,
    )  # fmt: skip
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    groups += robust.parameter_groups(config.lr)
    optimiser = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    weights = None
    if config.class_balanced:
        weights = class_balanced_weights(train_labels, len(cohort.labels))
    step_size = config.bags_per_step
    steps_per_epoch = math.ceil(len(train_ids) / step_size)
    best_loss, best_state, stale = float("inf"), copy.deepcopy(model.state_dict()), 0
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(train_ids), generator=generator).tolist()
        running = 0.0
        for step, start in enumerate(range(0, len(order), step_size)):
            chunk = order[start : start + step_size]
            if config.pad_batches:
                batch = cache.padded(chunk, generator, config.max_instances)
                outputs = [model.forward_standardized(*batch)]
                losses = [
                    model.compute_loss(outputs[0], train_labels[chunk], class_weights=weights)
                ]
            else:
                outputs, losses = [], []
                for index in chunk:
                    output = model.forward_standardized(
                        *cache.batch(index, generator, config.max_instances)
                    )
                    losses.append(
                        model.compute_loss(
                            output, train_labels[index].view(1), class_weights=weights
                        )
                    )
                    outputs.append(output)
            targets = robust.draw_targets(len(chunk), generator)
            target_outputs = [
                model(*bag_batch(bags[s], generator, config.max_instances)) for s in targets
            ]
            loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
            if robust.active:
                progress = (epoch * steps_per_epoch + step) / (config.epochs * steps_per_epoch)
                extra = robust.loss(
                    [train_ids[i] for i in chunk], outputs, progress,
                    targets=targets, target_outputs=target_outputs,
                )  # fmt: skip
                if extra is not None:
                    loss = loss + extra
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if config.pad_batches:
                running += float(losses[0].detach()) * len(chunk)
            else:
                running += sum(float(bag_loss.detach()) for bag_loss in losses)
        val_loss = _cached_mean_loss(model, cache, val_rows, val_labels, weights)
        logger.info(
            "%s epoch %d/%d: train loss %.4f, validation loss %.4f",
            split.name, epoch + 1, config.epochs, running / len(train_ids), val_loss,
        )  # fmt: skip
        robust.end_epoch(split.name, epoch, config.epochs)
        if on_epoch is not None:
            on_epoch(epoch, running / len(train_ids), val_loss)
        if val_loss < best_loss - 1e-6:
            best_loss, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    return model.eval()


def _draw_splits(cohort: Cohort, config: TrainConfig) -> list[Split]:
    """The design's splits, with calibration patients held out first (not for ``given``, whose
    table says which slides calibrate)."""

    def make(part: Cohort) -> list[Split]:
        return _SPLIT_MAKERS[config.split](part, config.k, config.seed)

    if config.split == "given":
        return make(cohort)
    return hold_out_calibration(
        cohort, make, fraction=config.calibration_fraction, seed=config.seed
    )


def train(
    config: TrainConfig,
    *,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train and validate a MIL model on every split of the chosen design, and fit what tells
    its predictions when not to be trusted.

    Writes to ``config.out``: ``config.json`` (resolved), ``splits.json`` (reused on reruns,
    never silently redrawn), ``fold_<i>/model.safetensors`` + ``model.json`` (and
    ``fold_<i>-seed<j>`` with ``seeds > 1``), ``predictions.csv`` (one row per test slide and
    fold), ``metrics.json`` and ``metrics.txt`` (per fold and per center, with bootstrap
    confidence intervals). Each model records the provenance its training features share
    (encoder, weights SHA-256, mpp, tile size).

    With calibration slides (``calibration_fraction > 0``, or ``calibration`` rows of a given
    split) it also writes ``trust.json`` + ``trust.safetensors`` (calibration, conformal
    thresholds, out-of-distribution gate) for the ensemble in ``out`` and for each model in
    its folder, and ``metrics.json`` gains a ``trust`` section: calibration, coverage per class
    and center, selective accuracy and gate false alarms on the test slides, each split's
    models calibrated on the calibration slides; ``trust_readings.csv`` holds those test
    slides' calibrated readings, one row each (:meth:`TrustEvaluation.to_csv`).

    Args:
        config: the run's settings.
        log: called with one line per finished split.
        progress: draw rich progress bars (splits, and epochs within a split); per-epoch losses
            are logged at INFO either way.

    Raises:
        CohortError: the cohort table is invalid (all problems listed), or splits would leak.
    """
    from histoguard.core._batch import progress_bars
    from histoguard.mil._evaluate import format_trust_report, trust_report
    from histoguard.mil._trust_fit import TrustFitter

    say = log or (lambda message: None)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_run_temporaries(out)  # a killed run's, in out and its fold folders
    write_json_atomic(out / "config.json", config.to_dict())
    cohort = load_cohort(config.cohort, features_dir=config.features)
    check_harmonize_cohort(cohort, config)
    bags = load_bags(cohort, config.features)
    splits = get_or_create_splits(out / "splits.json", cohort, lambda: _draw_splits(cohort, config))
    check_adversarial_centers(
        splits, cohort, config.adversarial_weight, unlabelled=config.adversarial_unlabelled
    )
    provenance = training_provenance((slide_id, bag.attrs) for slide_id, bag in bags.items())
    center_of = {row.slide_id: row.center or "" for row in cohort.rows}
    label_of = {row.slide_id: cohort.labels.index(row.label) for row in cohort.rows}
    fitter = TrustFitter.for_run(cohort, bags, splits, config.trust_settings())
    for warning in fitter.warnings:
        logger.warning("%s", warning)
        say(f"warning: {warning}")
    test_ids: list[str] = []
    probs: list[np.ndarray] = []
    folds: list[str] = []
    rows = ["fold,slide_id,center,label," + ",".join(f"p_{label}" for label in cohort.labels)]
    fold_dirs: list[Path] = []
    models: list[MILModel] = []
    with progress_bars(progress) as bars:
        split_task = bars.add_task("splits", total=len(splits))
        epoch_task = bars.add_task("epochs", total=config.epochs * config.seeds)
        for i, split in enumerate(splits):
            bars.reset(
                epoch_task, total=config.epochs * config.seeds, description=f"{split.name} epochs"
            )
            started = time.perf_counter()
            harmonizer, split_bags = split_harmonizer(split, cohort, bags, config, say)
            members = []
            for j in range(config.seeds):
                model = train_split(
                    split, cohort, split_bags, dataclasses.replace(config, seed=config.seed + j),
                    on_epoch=lambda *_: bars.advance(epoch_task),
                )  # fmt: skip
                if harmonizer is not None:
                    model = HarmonizedModel(model, harmonizer).eval()
                fold_dir = out / fold_dir_name(i, j)
                save_model(model, fold_dir, labels=cohort.labels, provenance=provenance)
                fitter.fit_and_save(model, fold_dir, split=split)
                fold_dirs.append(fold_dir)
                members.append(model)
                models.append(model)
            split_model = members[0] if len(members) == 1 else FoldEnsemble(members).eval()
            split_test = list(split.test)
            p, _ = predict_bags(split_model, [bags[s] for s in split_test])
            fitter.add_test_predictions(split_model, split, p, label_of, center_of)
            for slide_id, row_probs in zip(split_test, p, strict=True):
                test_ids.append(slide_id)
                probs.append(row_probs)
                folds.append(split.name)
                values = ",".join(f"{v:.6f}" for v in row_probs)
                rows.append(
                    f"{split.name},{slide_id},{center_of[slide_id]},{cohort.labels[label_of[slide_id]]},{values}"
                )
            seconds = time.perf_counter() - started
            sizes = f"trained on {len(split.train)}, tested on {len(split_test)}"
            logger.info("%s: %s slides (%.1f s)", split.name, sizes, seconds)
            say(f"{split.name}: {sizes} slides ({seconds:.1f} s)")
            bars.advance(split_task)
    write_bytes_atomic(out / "predictions.csv", ("\n".join(rows) + "\n").encode())
    centers = [center_of[s] for s in test_ids]
    report = metrics_report(
        np.asarray([label_of[s] for s in test_ids]),
        np.stack(probs),
        labels=cohort.labels,
        threshold=config.threshold,
        centers=centers if any(centers) else None,
        folds=folds,
        n_boot=config.n_boot,
        seed=config.seed,
    )
    report["design"] = config.split
    table = format_table(report)
    if fitter.enabled:
        fitter.fit_and_save(models[0] if len(models) == 1 else FoldEnsemble(models).eval(), out)
        readings = fitter.test_readings()
        write_bytes_atomic(out / "trust_readings.csv", readings.to_csv().encode())
        report["trust"] = trust_report(readings, n_boot=config.n_boot, seed=config.seed)
        table += "\n\n" + format_trust_report(report["trust"])
    write_json_atomic(out / "metrics.json", report, default=float)
    write_bytes_atomic(out / "metrics.txt", (table + "\n").encode())
    return TrainResult(out=out, report=report, fold_dirs=tuple(fold_dirs), table=table)
