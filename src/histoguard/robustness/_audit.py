"""The audit: every robustness measurement on one encoder's embeddings (and, given tiles, on the
encoder itself and an optional slide model), returned as a typed :class:`AuditResult` and written
as ``audit.json`` (the page, ``audit.html``, is drawn by :func:`histoguard.report.write_audit_page`
from that result or file).

Two entry points, one per kind of input:

- embeddings with labels (feature files + a cohort table): representation metrics only
  (robustness index, APD, clustering score, site probe); stress tests and attacks need pixels
  and are recorded as skipped, with the reason;
- tile images with labels + an encoder: the tiles are embedded, the representation metrics run
  on those embeddings, then a linear probe is trained on a slide-disjoint part of the tiles and
  stress-tested and attacked on the other part; given a slide model (one fold, or every fold of
  a k-fold ``train`` output, averaged as ``predict`` averages them), its held-out slides are
  stress-tested and attacked too.

Data from a single center are refused before any work when a measure of center signal is
asked for (:func:`refuse_single_center`). Otherwise a metric that cannot run on the data (for
example APD when one of two centers is out of distribution) does not stop the others: its part
is a :class:`Skipped` with the reason. Progress messages go to ``logging.getLogger(__name__)``
(the command line shows them).
"""

from __future__ import annotations

import datetime
import logging
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from histoguard._version import __version__
from histoguard.core._atomic import write_bytes_atomic
from histoguard.errors import AuditDataError, ConfigError
from histoguard.robustness._audit_attacks import (
    Bags,
    SlideModelUnderTest,
    adversarial,
    held_out_bags,
    stress,
)
from histoguard.robustness._result import AuditResult, Skipped, jsonable
from histoguard.robustness.data._containers import LabelledEmbeddings, TileDataset
from histoguard.robustness.data._embed import embed_tiles
from histoguard.robustness.metrics._apd import APDConfig, average_performance_drop
from histoguard.robustness.metrics._clustering import ClusteringConfig, clustering_score
from histoguard.robustness.metrics._linear_probe import fit_linear_probe
from histoguard.robustness.metrics._robustness_index import RobustnessIndexConfig, robustness_index
from histoguard.robustness.metrics._site_probe import SiteProbeConfig, site_probe
from histoguard.robustness.shifts._stress import StressConfig

if TYPE_CHECKING:
    from histoguard.encoders import Encoder
    from histoguard.mil import MILModel
    from histoguard.robustness._slide_models import SlideModel

logger = logging.getLogger(__name__)

#: File name of the audit's JSON form inside the output folder.
AUDIT_JSON = "audit.json"

#: The measurements an audit can run, in report order (the top-level keys of ``audit.json``).
AUDIT_PARTS = (
    "robustness_index", "apd", "clustering_score", "site_probe", "stress", "adversarial"
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class AttackSettings:
    """Which attacks the audit runs, and their budgets (0–1 pixel scale).

    Attributes:
        pgd_eps: budgets of the tile-level PGD sweep.
        pgd_norms: ``"linf"`` and/or ``"l2"``; L2 budgets are ``pgd_eps`` scaled by the square
            root of the number of pixel values (so both norms allow a comparable mean change).
        pgd_steps: PGD iterations.
        universal_eps: L∞ budget of the universal perturbation.
        transfer_encoders: other registered encoders the universal perturbation is transferred
            to (each gets its own linear probe on the same training tiles).
        slide_fraction: fraction of each slide's tiles the slide-level attack perturbs (at
            least one tile).
        slide_eps: L∞ budget of the slide-level attack.
        max_tiles: tiles attacked at most (a stratified sample of the test tiles).

    Raises:
        ConfigError: a budget outside [0, 1], an unknown norm, a count below 1.
    """

    pgd_eps: tuple[float, ...] = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
    pgd_norms: tuple[Literal["linf", "l2"], ...] = ("linf",)
    pgd_steps: int = 10
    universal_eps: float = 8 / 255
    transfer_encoders: tuple[str, ...] = ()
    slide_fraction: float = 0.001
    slide_eps: float = 8 / 255
    max_tiles: int = 128

    def __post_init__(self) -> None:
        for name in ("pgd_eps", "universal_eps", "slide_eps"):
            value = getattr(self, name)
            if not all(0 <= v <= 1 for v in np.atleast_1d(value)):  # NaN fails too
                raise ConfigError(f"{name} must be in [0, 1] (0-1 pixel scale), got {value}")
        if not set(self.pgd_norms) <= {"linf", "l2"} or min(self.pgd_steps, self.max_tiles) < 1:
            raise ConfigError(f"need pgd_norms linf/l2, pgd_steps, max_tiles >= 1: got {self}")
        if not 0 < self.slide_fraction <= 1:
            raise ConfigError(f"slide_fraction must be in (0, 1], got {self.slide_fraction}")


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """Everything an audit does, with PathoROB-like defaults.

    Attributes:
        parts: which measurements to run (subset of :data:`AUDIT_PARTS`).
        robustness_index, apd, clustering, site_probe, stress: per-metric settings.
        attacks: attack settings.
        probe_train_fraction: share of the (in-distribution) slides whose tiles train the linear
            probe used by the stress tests and attacks; the rest are attacked.
        max_stress_tiles: tiles stress-tested at most (stratified sample of the test tiles).
        max_tiles_per_bag: tiles per test slide at most (seeded sample) when a slide model is
            stress-tested and attacked.
        max_tiles_per_slide: embeddings read per slide from feature files (subsampled).
        batch_size: tiles per encoder call.
        seed: seeds every random choice of the audit (overrides the per-metric seeds).
    """

    parts: tuple[str, ...] = AUDIT_PARTS
    robustness_index: RobustnessIndexConfig = field(default_factory=RobustnessIndexConfig)
    apd: APDConfig = field(default_factory=APDConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    site_probe: SiteProbeConfig = field(default_factory=SiteProbeConfig)
    stress: StressConfig = field(default_factory=StressConfig)
    attacks: AttackSettings = field(default_factory=AttackSettings)
    probe_train_fraction: float = 0.5
    max_stress_tiles: int = 256
    max_tiles_per_bag: int = 64
    max_tiles_per_slide: int | None = 256
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.parts) - set(AUDIT_PARTS)
        if unknown:
            raise ConfigError(f"unknown audit parts {sorted(unknown)}; choose from {AUDIT_PARTS}")
        if not 0 < self.probe_train_fraction < 1:
            raise ConfigError(f"probe_train_fraction {self.probe_train_fraction} not in (0, 1)")
        # One seed for the whole audit, so `--seed` reproduces every part.
        object.__setattr__(self, "robustness_index", replace(self.robustness_index, seed=self.seed))
        object.__setattr__(self, "apd", replace(self.apd, seed=self.seed))
        object.__setattr__(self, "clustering", replace(self.clustering, seed=self.seed))
        object.__setattr__(self, "site_probe", replace(self.site_probe, seed=self.seed))
        object.__setattr__(self, "stress", replace(self.stress, seed=self.seed))

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible settings (stain references are named, not embedded)."""
        settings = asdict(replace(self, stress=replace(self.stress, references={})))
        settings["stress"]["references"] = sorted(self.stress.references)
        content: dict[str, Any] = jsonable(settings)
        return content


@dataclass(frozen=True)
class AuditOutputs:
    """Where an audit's files were written, and their content.

    Attributes:
        json_path: ``audit.json`` (written by :func:`write_audit`).
        html_path: ``audit.html`` (written by :func:`histoguard.report.write_audit_page`).
        audit: the content of ``audit.json`` (``AuditResult.to_dict()``).
    """

    json_path: Path
    html_path: Path
    audit: dict[str, Any]


def audit_embeddings(
    data: LabelledEmbeddings,
    *,
    config: AuditConfig | None = None,
    ood_centers: Sequence[str] = (),
) -> AuditResult:
    """The representation metrics of labelled embeddings.

    Args:
        data: ``(N, D)`` embeddings with class, center and slide per row.
        config: audit settings (defaults if None).
        ood_centers: centers APD must hold out of training (PathoROB's OOD subset); overrides
            ``config.apd.ood_centers`` when not empty.

    Returns:
        An :class:`AuditResult` without metadata whose ``robustness_index``, ``apd``,
        ``clustering_score`` and ``site_probe`` hold the metrics (or :class:`Skipped` with the
        reason);
        ``stress`` and ``adversarial`` are ``Skipped("not requested")``.
    """
    config = config or AuditConfig()
    apd_config = replace(config.apd, ood_centers=tuple(ood_centers)) if ood_centers else config.apd
    metrics: dict[str, Callable[[], Any]] = {
        "robustness_index": lambda: robustness_index(data, config.robustness_index),
        "apd": lambda: average_performance_drop(data, apd_config),
        "clustering_score": lambda: clustering_score(data, config.clustering),
        "site_probe": lambda: site_probe(data, config.site_probe),
    }
    entries: dict[str, Mapping[str, Any]] = {}
    for name, compute in metrics.items():
        if name not in config.parts:
            entries[name] = {"skipped": "not requested"}
            continue
        logger.info(
            "%s: %d embeddings, %d classes, %d centers",
            name, len(data), len(data.classes), len(data.centers),
        )  # fmt: skip
        try:
            entries[name] = compute().to_dict()
        except AuditDataError as error:
            logger.info("%s: skipped (%s)", name, error)
            entries[name] = {"skipped": str(error)}
    return AuditResult.from_dict(
        {**entries, "stress": _NOT_REQUESTED, "adversarial": _NOT_REQUESTED}
    )


_NOT_REQUESTED = {"skipped": "not requested"}

#: The measurements of center signal: each compares centers, so needs at least two.
CENTER_PARTS = ("robustness_index", "apd", "clustering_score", "site_probe")


def refuse_single_center(centers: Sequence[str], parts: Sequence[str], *, tiles: bool) -> None:
    """Refuse, before any work, an audit asking for center-signal measures of one center.

    Args:
        centers: the distinct centers of the data.
        parts: the measurements requested.
        tiles: whether the audit runs on tile images (where the stress tests and attacks,
            which need no second center, can run).

    Raises:
        ConfigError: fewer than two centers and a part of :data:`CENTER_PARTS` requested.
    """
    asked = [part for part in CENTER_PARTS if part in parts]
    if len(set(centers)) >= 2 or not asked:
        return
    found = f"center {centers[0]!r}" if centers else "no center"
    fix = (
        "add slides of another center to the table, or run only --parts stress,adversarial "
        "(they need no second center)"
        if tiles
        else "add slides of another center to the cohort table (from feature files only these "
        "measures run; the stress tests and attacks, which need no second center, take "
        "--tiles with --encoder)"
    )
    raise ConfigError(
        f"the data have only {found}: {', '.join(asked)} measure the center signal and need "
        f"at least 2 centers; {fix}"
    )


def audit_encoder(
    tiles: TileDataset,
    encoder: Encoder,
    *,
    config: AuditConfig | None = None,
    ood_centers: Sequence[str] = (),
    model: MILModel | SlideModel | None = None,
    model_labels: Sequence[str] = (),
    progress: bool = False,
) -> AuditResult:
    """The full audit of an encoder on labelled tiles (and of a slide model, if given).

    Args:
        tiles: tile images with class, center and slide per tile.
        encoder: the encoder under audit.
        config: audit settings (defaults if None).
        ood_centers: centers held out of every training (APD's OOD centers; never used to train
            the probe).
        model: a trained MIL model on this encoder's features, or a :class:`SlideModel` (every
            fold of a ``train`` output, see :func:`load_slide_model`); its slides (the probe's
            held-out test tiles grouped by ``slide_id``, at most ``config.max_tiles_per_bag``
            each) are stress-tested and attacked, and its results name the models used. A
            ``SlideModel`` scores each slide only with fold models that never saw it and leaves
            out slides every fold saw (``held_out`` in the results lists both).
        model_labels: a bare model's class names, index order (a ``SlideModel`` brings its own).
        progress: show progress bars.

    Returns:
        An :class:`AuditResult` without metadata (add it with ``with_metadata``).
    """
    config = config or AuditConfig()
    data = embed_tiles(encoder, tiles, batch_size=config.batch_size, progress=progress)
    result = audit_embeddings(data, config=config, ood_centers=ood_centers)
    if not {"stress", "adversarial"} & set(config.parts):
        return result
    try:
        train, test = slide_disjoint_split(
            data, ood_centers, fraction=config.probe_train_fraction, seed=config.seed
        )
    except AuditDataError as error:
        reason = Skipped(reason=f"no linear probe: {error}")
        return replace(result, stress=reason, adversarial=reason)
    logger.info("linear probe: %d training tiles, %d test tiles", len(train), len(test))
    probe = fit_linear_probe(
        data.embeddings[train], data.label[train], groups=data.slide_id[train], seed=config.seed
    )
    under_test = None
    if model is not None:
        under_test = _under_test(model, model_labels, held_out_bags(tiles, test, encoder, config))
    if "stress" in config.parts:
        entry = stress(encoder, tiles, probe, test, config, under_test)
        result = replace(result, stress=AuditResult.from_dict({"stress": entry}).stress)
    if "adversarial" in config.parts:
        entry = adversarial(encoder, tiles, probe, train, test, config, under_test)
        parsed = AuditResult.from_dict({"adversarial": entry}).adversarial
        result = replace(result, adversarial=parsed)
    return result


def _under_test(
    model: MILModel | SlideModel, labels: Sequence[str], bags: Bags
) -> SlideModelUnderTest:
    """The model with its class names, the held-out bags and the record of which models."""
    from histoguard.robustness._slide_models import SlideModel

    if isinstance(model, SlideModel):
        # Only slides the scoring model never saw: a k-fold output's folds each judge their own
        # test slides.
        held = model.held_out(bags.slides)
        kept = Bags(
            slides=[bags.slides[i] for i in held.kept],
            tiles=[bags.tiles[i] for i in held.kept],
            labels=bags.labels[held.kept],
        )
        record = {**model.describe(), "held_out": held.record}
        return SlideModelUnderTest(model=held.models, labels=model.labels, bags=kept, models=record)
    single = {"models": [type(model).__name__], "n_models": 1, "combination": "single model"}
    return SlideModelUnderTest(model=model, labels=list(labels), bags=bags, models=single)


def slide_disjoint_split(
    data: LabelledEmbeddings, ood_centers: Sequence[str], *, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of a probe training set and a test set that share no slide, drawn from the
    in-distribution centers, with about ``fraction`` of each class's slides in training.

    Raises:
        AuditDataError: a class has fewer than two slides in the in-distribution centers.
    """
    rng = np.random.default_rng(seed)
    in_dist = ~np.isin(data.center, list(ood_centers))
    train_slides: list[str] = []
    for label in data.classes:
        slides = np.unique(data.slide_id[in_dist & (data.label == label)])
        if len(slides) < 2:
            raise AuditDataError(
                f"class {label!r} has {len(slides)} slide(s) in the in-distribution centers; "
                "a slide-disjoint probe needs at least 2 per class"
            )
        n_train = min(len(slides) - 1, max(1, round(fraction * len(slides))))
        train_slides += rng.choice(slides, size=n_train, replace=False).tolist()
    is_train = in_dist & np.isin(data.slide_id, train_slides)
    return np.flatnonzero(is_train), np.flatnonzero(in_dist & ~is_train)


def write_audit(result: AuditResult, out: Path) -> Path:
    """Write ``out/audit.json`` (atomically, verified) and return its path.

    The page is drawn separately from the result or this file:
    :func:`histoguard.report.write_audit_page`.

    Raises:
        OutputError: the file could not be written as intended.
    """
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / AUDIT_JSON
    write_bytes_atomic(json_path, result.to_json().encode())
    return json_path


def audit_metadata(subject: str, config: AuditConfig, **extra: Any) -> dict[str, Any]:
    """Provenance recorded under ``audit.json``'s ``metadata`` key."""
    return {
        "subject": subject,
        "histoguard_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.system()} {platform.machine()}, python {platform.python_version()}",
        **extra,
        "config": config.to_dict(),
    }


def run_audit(
    out: Path,
    *,
    features: Path | None = None,
    cohort: Path | None = None,
    tiles: Path | None = None,
    encoder: str | None = None,
    weights: Path | None = None,
    image_root: Path | None = None,
    model: Path | None = None,
    ood_centers: Sequence[str] = (),
    config: AuditConfig | None = None,
    progress: bool = False,
) -> AuditResult:
    """Audit feature files + a cohort table, or tile images + an encoder; write ``audit.json``.

    Exactly one input mode: ``features`` and ``cohort`` (each slide's ``slide_id``, ``label``
    and ``center``), or ``tiles`` (a tile table; the PathoROB layout is accepted as is) and
    ``encoder``. ``model`` (a ``histoguard train`` output: every ``fold_*`` model, averaged as
    ``histoguard predict`` averages them; or one model folder) adds the slide model's stress
    test and attack in the tiles mode; ``metadata["slide_model"]`` names the models used. OOD
    centers come from ``ood_centers``, else from a tile table's ``subset`` column (PathoROB
    ``OOD`` rows). Draw the page with :func:`histoguard.report.write_audit_page`.

    Returns:
        The :class:`AuditResult`, also written to ``out/audit.json``.

    Raises:
        ConfigError: not exactly one complete input mode; a single center with a measure of
            center signal requested (see :func:`refuse_single_center`).
        AuditDataError: the table, images, feature files or model cannot be used (named in the
            message).
        EncoderError: the encoder cannot be loaded.
    """
    from histoguard.robustness.data._layouts import load_feature_cohort
    from histoguard.robustness.data._tile_tables import load_tile_table, ood_centers_from_table

    config = config or AuditConfig()
    features_mode = features is not None or cohort is not None
    tiles_mode = tiles is not None or encoder is not None
    if features_mode == tiles_mode:
        raise ConfigError("give either --features with --cohort, or --tiles with --encoder")
    if features_mode:
        if features is None or cohort is None:
            raise ConfigError("--features and --cohort go together")
        data = load_feature_cohort(
            features, cohort, max_tiles_per_slide=config.max_tiles_per_slide, seed=config.seed
        )
        refuse_single_center(data.centers, config.parts, tiles=False)
        result = audit_embeddings(data, config=config, ood_centers=ood_centers)
        reason = Skipped(reason="needs tile images: run the audit with --tiles and --encoder")
        result = replace(result, stress=reason, adversarial=reason)
        meta = audit_metadata(f"features in {features}", config, features=str(features),
                              cohort=str(cohort), n_embeddings=len(data))  # fmt: skip
    else:
        if tiles is None or encoder is None:
            raise ConfigError("--tiles and --encoder go together")
        from histoguard.encoders import load_encoder
        from histoguard.robustness._slide_models import load_slide_model

        dataset = load_tile_table(tiles, image_root=image_root)
        refuse_single_center(dataset.centers, config.parts, tiles=True)
        ood = tuple(ood_centers) or ood_centers_from_table(tiles)
        enc = load_encoder(encoder, weights=weights)
        slide_model = load_slide_model(model, enc.embed_dim) if model else None
        result = audit_encoder(dataset, enc, config=config, ood_centers=ood, model=slide_model,
                               progress=progress)  # fmt: skip
        extra = {"slide_model": slide_model.describe()} if slide_model else {}
        meta = audit_metadata(f"encoder {encoder}", config, tiles=str(tiles), encoder=encoder,
                              n_tiles=len(dataset), ood_centers=list(ood), **extra)  # fmt: skip
    result = result.with_metadata(meta)
    write_audit(result, out)
    return result
