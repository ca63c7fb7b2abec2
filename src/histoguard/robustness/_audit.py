"""The audit: every robustness measurement on one encoder's embeddings (and, given tiles, on the
encoder itself and an optional slide model), written as ``audit.json`` and ``audit.html``.

Two entry points, one per kind of input:

- embeddings with labels (feature files + a cohort table): representation metrics only
  (robustness index, APD, clustering score); stress tests and attacks need pixels and are
  recorded as skipped, with the reason;
- tile images with labels + an encoder: the tiles are embedded, the representation metrics run
  on those embeddings, then a linear probe is trained on a slide-disjoint part of the tiles and
  stress-tested and attacked on the other part; given a MIL model, its slides are attacked too.

A metric that cannot run on the data (for example APD with a single center) does not stop the
others: its entry records ``{"skipped": reason}``.
"""

from __future__ import annotations

import datetime
import json
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from histoguard._version import __version__
from histoguard.core._atomic import write_bytes_atomic
from histoguard.errors import AuditDataError, EncoderError
from histoguard.report._audit_page import render_audit_html
from histoguard.robustness.attacks._pgd import (
    PGDConfig,
    UniversalConfig,
    pgd_attack,
)
from histoguard.robustness.attacks._slide_attack import SlideAttackConfig, slide_attack
from histoguard.robustness.attacks._universal import (
    universal_attack,
)
from histoguard.robustness.data._containers import LabelledEmbeddings, TileDataset
from histoguard.robustness.metrics._apd import APDConfig, average_performance_drop
from histoguard.robustness.metrics._clustering import ClusteringConfig, clustering_score
from histoguard.robustness.metrics._linear_probe import LinearProbe, fit_linear_probe
from histoguard.robustness.metrics._robustness_index import RobustnessIndexConfig, robustness_index
from histoguard.robustness.shifts._stress import StressConfig, stress_slide_model, stress_test

if TYPE_CHECKING:
    from histoguard.encoders import Encoder
    from histoguard.mil import MILModel

#: The measurements an audit can run, in report order (the top-level keys of ``audit.json``).
AUDIT_PARTS = ("robustness_index", "apd", "clustering_score", "stress", "adversarial")


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
    """

    pgd_eps: tuple[float, ...] = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
    pgd_norms: tuple[Literal["linf", "l2"], ...] = ("linf",)
    pgd_steps: int = 10
    universal_eps: float = 8 / 255
    transfer_encoders: tuple[str, ...] = ()
    slide_fraction: float = 0.001
    slide_eps: float = 8 / 255
    max_tiles: int = 128


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """Everything an audit does, with PathoROB-like defaults.

    Attributes:
        parts: which measurements to run (subset of :data:`AUDIT_PARTS`).
        robustness_index, apd, clustering, stress: per-metric settings.
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
            raise ValueError(f"unknown audit parts {sorted(unknown)}; choose from {AUDIT_PARTS}")
        if not 0 < self.probe_train_fraction < 1:
            raise ValueError("probe_train_fraction must be in (0, 1)")
        # One seed for the whole audit, so `--seed` reproduces every part.
        object.__setattr__(self, "robustness_index", replace(self.robustness_index, seed=self.seed))
        object.__setattr__(self, "apd", replace(self.apd, seed=self.seed))
        object.__setattr__(self, "clustering", replace(self.clustering, seed=self.seed))
        object.__setattr__(self, "stress", replace(self.stress, seed=self.seed))

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible settings (stain references are named, not embedded)."""
        settings = asdict(replace(self, stress=replace(self.stress, references={})))
        settings["stress"]["references"] = sorted(self.stress.references)
        jsonable: dict[str, Any] = _jsonable(settings)
        return jsonable


@dataclass(frozen=True)
class AuditOutputs:
    """Where an audit was written, and its content.

    Attributes:
        json_path: ``audit.json``.
        html_path: ``audit.html``.
        audit: the dictionary written to ``audit.json``.
    """

    json_path: Path
    html_path: Path
    audit: dict[str, Any]


Log = Callable[[str], None]


def audit_embeddings(
    data: LabelledEmbeddings,
    *,
    config: AuditConfig | None = None,
    ood_centers: Sequence[str] = (),
    log: Log | None = None,
) -> dict[str, Any]:
    """The representation metrics of labelled embeddings.

    Args:
        data: ``(N, D)`` embeddings with class, center and slide per row.
        config: audit settings (defaults if None).
        ood_centers: centers APD must hold out of training (PathoROB's OOD subset); overrides
            ``config.apd.ood_centers`` when not empty.
        log: called with one line per step.

    Returns:
        ``{"robustness_index": ..., "apd": ..., "clustering_score": ...}``, each the metric's
        result dictionary or ``{"skipped": reason}``.
    """
    config = config or AuditConfig()
    say = log or (lambda _: None)
    apd_config = replace(config.apd, ood_centers=tuple(ood_centers)) if ood_centers else config.apd
    metrics: dict[str, Callable[[], Any]] = {
        "robustness_index": lambda: robustness_index(data, config.robustness_index),
        "apd": lambda: average_performance_drop(data, apd_config),
        "clustering_score": lambda: clustering_score(data, config.clustering),
    }
    results: dict[str, Any] = {}
    for name, compute in metrics.items():
        if name not in config.parts:
            results[name] = {"skipped": "not requested"}
            continue
        say(
            f"{name}: {len(data)} embeddings, {len(data.classes)} classes, "
            f"{len(data.centers)} centers"
        )
        try:
            results[name] = compute().to_dict()
        except AuditDataError as error:
            say(f"{name}: skipped ({error})")
            results[name] = {"skipped": str(error)}
    return results


def embed_tiles(
    encoder: Encoder, tiles: TileDataset, *, batch_size: int = 64, progress: bool = False
) -> LabelledEmbeddings:
    """Embed every tile of a dataset: ``(N, D)`` float32 with the dataset's metadata.

    Raises:
        AuditDataError: a tile file cannot be read (named in the message).
    """
    from histoguard.core._batch import progress_bars

    chunks = []
    with progress_bars(progress) as bars:
        task = bars.add_task(f"embedding ({encoder.info.name})", total=len(tiles))
        for start in range(0, len(tiles), batch_size):
            index = np.arange(start, min(start + batch_size, len(tiles)))
            chunks.append(encoder.encode(tiles.load_for(encoder.info, index)))
            bars.advance(task, len(index))
    return LabelledEmbeddings(
        embeddings=np.concatenate(chunks),
        label=tiles.label,
        center=tiles.center,
        slide_id=tiles.slide_id,
        item_id=tiles.paths,
    )


def audit_encoder(
    tiles: TileDataset,
    encoder: Encoder,
    *,
    config: AuditConfig | None = None,
    ood_centers: Sequence[str] = (),
    model: MILModel | None = None,
    model_labels: Sequence[str] = (),
    progress: bool = False,
    log: Log | None = None,
) -> dict[str, Any]:
    """The full audit of an encoder on labelled tiles (and of a slide model, if given).

    Args:
        tiles: tile images with class, center and slide per tile.
        encoder: the encoder under audit.
        config: audit settings (defaults if None).
        ood_centers: centers held out of every training (APD's OOD centers; never used to train
            the probe).
        model: a trained MIL model on this encoder's features; its slides (the test tiles
            grouped by ``slide_id``, at most ``config.max_tiles_per_bag`` each) are
            stress-tested and attacked.
        model_labels: the model's class names, index order (from :func:`histoguard.mil.load_model`).
        progress: show progress bars.
        log: called with one line per step.

    Returns:
        The audit dictionary with all five :data:`AUDIT_PARTS` keys.
    """
    config = config or AuditConfig()
    say = log or (lambda _: None)
    data = embed_tiles(encoder, tiles, batch_size=config.batch_size, progress=progress)
    audit = audit_embeddings(data, config=config, ood_centers=ood_centers, log=say)
    wants_pixels = {"stress", "adversarial"} & set(config.parts)
    if not wants_pixels:
        return {
            **audit,
            "stress": {"skipped": "not requested"},
            "adversarial": {"skipped": "not requested"},
        }
    try:
        train, test = slide_disjoint_split(
            data, ood_centers, fraction=config.probe_train_fraction, seed=config.seed
        )
    except AuditDataError as error:
        reason = f"no linear probe: {error}"
        return {**audit, "stress": {"skipped": reason}, "adversarial": {"skipped": reason}}
    say(f"linear probe: {len(train)} training tiles, {len(test)} test tiles")
    probe = fit_linear_probe(
        data.embeddings[train], data.label[train], groups=data.slide_id[train], seed=config.seed
    )
    bags = _test_bags(tiles, test, encoder, config) if model is not None else None
    audit["stress"] = (
        _stress(encoder, tiles, probe, test, config, say, model, model_labels, bags)
        if "stress" in config.parts
        else {"skipped": "not requested"}
    )
    audit["adversarial"] = (
        _adversarial(encoder, tiles, probe, train, test, config, model, bags, say)
        if "adversarial" in config.parts
        else {"skipped": "not requested"}
    )
    return audit


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


def _stratified_sample(labels: np.ndarray, rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of ``rows``, as equal per class as the data allow, sorted."""
    if len(rows) <= limit:
        return rows
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(rows)
    # Rank of each row within its class; taking the lowest ranks first interleaves the classes,
    # so a small class is kept whole before a large one fills the rest.
    rank = np.empty(len(shuffled), dtype=np.int64)
    for label in np.unique(labels[shuffled]):
        members = labels[shuffled] == label
        rank[members] = np.arange(int(members.sum()))
    return np.sort(shuffled[np.argsort(rank, kind="stable")[:limit]])


def _stress(
    encoder: Encoder,
    tiles: TileDataset,
    probe: LinearProbe,
    test: np.ndarray,
    config: AuditConfig,
    say: Log,
    model: MILModel | None,
    model_labels: Sequence[str],
    bags: _Bags | None,
) -> dict[str, Any]:
    rows = _stratified_sample(tiles.label, test, config.max_stress_tiles, config.seed)
    say(f"stress tests: {len(rows)} tiles")
    images = tiles.load_for(encoder.info, rows)
    result = stress_test(encoder, images, tiles.label[rows], probe.predict, config=config.stress)
    out = result.to_dict()
    if model is not None and bags is not None:
        say(f"stress tests of the slide model: {len(bags.slides)} slides")
        try:
            out["slide_model"] = stress_slide_model(
                encoder, model, bags.tiles, bags.labels, model_labels, config=config.stress
            ).to_dict()
        except AuditDataError as error:
            out["slide_model"] = {"skipped": str(error)}
    return out


@dataclass(frozen=True)
class _Bags:
    """The test slides as bags of tiles for a slide model: ``slides`` (M,), ``tiles`` (M arrays
    of ``(N_i, S, S, 3)`` uint8), ``labels`` (M,) each slide's majority tile label."""

    slides: list[str]
    tiles: list[np.ndarray]
    labels: np.ndarray


def _test_bags(
    tiles: TileDataset, test: np.ndarray, encoder: Encoder, config: AuditConfig
) -> _Bags:
    """Each test slide's tiles (at most ``config.max_tiles_per_bag``, seeded) at the encoder's
    input size."""
    rng = np.random.default_rng(config.seed)
    slides = sorted(set(tiles.slide_id[test].tolist()))
    bags, labels = [], []
    for slide in slides:
        rows = test[tiles.slide_id[test] == slide]
        if len(rows) > config.max_tiles_per_bag:
            rows = np.sort(rng.choice(rows, size=config.max_tiles_per_bag, replace=False))
        bags.append(tiles.load_for(encoder.info, rows))
        values, counts = np.unique(tiles.label[rows], return_counts=True)
        labels.append(values[np.argmax(counts)])
    return _Bags(slides=slides, tiles=bags, labels=np.array(labels))


def _adversarial(
    encoder: Encoder,
    tiles: TileDataset,
    probe: LinearProbe,
    train: np.ndarray,
    test: np.ndarray,
    config: AuditConfig,
    model: MILModel | None,
    bags: _Bags | None,
    say: Log,
) -> dict[str, Any]:
    settings = config.attacks
    rows = _stratified_sample(tiles.label, test, settings.max_tiles, config.seed)
    images = tiles.load_for(encoder.info, rows)
    class_index = {c: i for i, c in enumerate(probe.classes)}
    labels = np.array([class_index[c] for c in tiles.label[rows]], dtype=np.int64)
    head = probe.as_torch()
    out: dict[str, Any] = {}
    try:
        out["pgd"] = []
        for norm in settings.pgd_norms:
            for eps in settings.pgd_eps:
                budget = eps if norm == "linf" else eps * float(np.sqrt(images[0].size))
                say(f"PGD {norm} eps={budget:.4f}: {len(rows)} tiles")
                pgd = PGDConfig(norm=norm, eps=budget, steps=settings.pgd_steps, seed=config.seed)
                out["pgd"].append(pgd_attack(encoder, head, images, labels, config=pgd).to_dict())
        out["universal"] = _universal(encoder, tiles, probe, train, images, labels, config, say)
        if model is not None and bags is not None:
            out["slide"] = _slide_attack(encoder, model, bags, config, say)
    except EncoderError as error:
        return {"skipped": f"encoder {encoder.info.name!r} cannot be attacked: {error}", **out}
    return out


def _universal(
    encoder: Encoder,
    tiles: TileDataset,
    probe: LinearProbe,
    train: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    config: AuditConfig,
    say: Log,
) -> dict[str, Any]:
    """A universal perturbation learned on probe-training tiles, applied to the unseen test
    tiles, and transferred to the configured other encoders (each with its own probe)."""
    from histoguard.encoders import load_encoder

    settings = config.attacks
    rows = _stratified_sample(tiles.label, train, settings.max_tiles, config.seed)
    train_images = tiles.load_for(encoder.info, rows)
    class_index = {c: i for i, c in enumerate(probe.classes)}
    train_labels = np.array([class_index[c] for c in tiles.label[rows]], dtype=np.int64)
    targets = {}
    for name in settings.transfer_encoders:
        other = load_encoder(name)
        emb = embed_tiles(other, tiles.subset(rows), batch_size=config.batch_size)
        other_probe = fit_linear_probe(
            emb.embeddings, emb.label, groups=emb.slide_id, seed=config.seed
        )
        targets[name] = (other, other_probe.as_torch())
    say(f"universal perturbation: learned on {len(rows)} tiles, tested on {len(test_labels)}")
    universal = UniversalConfig(eps=settings.universal_eps, seed=config.seed)
    return universal_attack(
        source=(encoder, probe.as_torch()),
        targets=targets,
        train_tiles=train_images,
        train_labels=train_labels,
        test_tiles=test_images,
        test_labels=test_labels,
        config=universal,
    ).to_dict()


def _slide_attack(
    encoder: Encoder, model: MILModel, bags: _Bags, config: AuditConfig, say: Log
) -> dict[str, Any]:
    say(f"slide-level attack: {len(bags.slides)} slides")
    attack = SlideAttackConfig(
        fraction=config.attacks.slide_fraction, eps=config.attacks.slide_eps, seed=config.seed
    )
    result = slide_attack(encoder, model, bags.tiles, config=attack).to_dict()
    result["slides"] = bags.slides
    return result


def write_audit(audit: Mapping[str, Any], out: Path) -> AuditOutputs:
    """Write ``audit.json`` and ``audit.html`` into ``out`` (atomically, verified).

    Raises:
        OutputError: a file could not be written as intended.
    """
    out.mkdir(parents=True, exist_ok=True)
    content = json.dumps(_jsonable(audit), indent=2, allow_nan=False) + "\n"
    json_path, html_path = out / "audit.json", out / "audit.html"
    write_bytes_atomic(json_path, content.encode())
    write_bytes_atomic(html_path, render_audit_html(json.loads(content)).encode())
    return AuditOutputs(json_path=json_path, html_path=html_path, audit=json.loads(content))


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
    log: Log | None = None,
) -> AuditOutputs:
    """Audit feature files + a cohort table, or tile images + an encoder; write the report.

    Exactly one input mode: ``features`` and ``cohort`` (each slide's ``slide_id``, ``label``
    and ``center``), or ``tiles`` (a tile table; the PathoROB layout is accepted as is) and
    ``encoder``. ``model`` (a ``histoguard train`` model folder) adds the slide-level attack in
    the tiles mode. OOD centers come from ``ood_centers``, else from a tile table's ``subset``
    column (PathoROB ``OOD`` rows).

    Raises:
        ValueError: not exactly one complete input mode.
        AuditDataError: the table, images or feature files cannot be used (named in the message).
        EncoderError: the encoder cannot be loaded.
    """
    from histoguard.robustness.data._layouts import (
        load_feature_cohort,
    )
    from histoguard.robustness.data._tile_tables import (
        load_tile_table,
        ood_centers_from_table,
    )

    config = config or AuditConfig()
    features_mode = features is not None or cohort is not None
    tiles_mode = tiles is not None or encoder is not None
    if features_mode == tiles_mode:
        raise ValueError("give either --features with --cohort, or --tiles with --encoder")
    if features_mode:
        if features is None or cohort is None:
            raise ValueError("--features and --cohort go together")
        data = load_feature_cohort(
            features, cohort, max_tiles_per_slide=config.max_tiles_per_slide, seed=config.seed
        )
        audit = audit_embeddings(data, config=config, ood_centers=ood_centers, log=log)
        reason = "needs tile images: run the audit with --tiles and --encoder"
        audit |= {"stress": {"skipped": reason}, "adversarial": {"skipped": reason}}
        meta = audit_metadata(f"features in {features}", config, features=str(features),
                              cohort=str(cohort), n_embeddings=len(data))  # fmt: skip
    else:
        if tiles is None or encoder is None:
            raise ValueError("--tiles and --encoder go together")
        from histoguard.encoders import load_encoder

        dataset = load_tile_table(tiles, image_root=image_root)
        ood = tuple(ood_centers) or ood_centers_from_table(tiles)
        enc = load_encoder(encoder, weights=weights)
        mil_model, labels = _load_mil(model, enc.embed_dim) if model else (None, [])
        audit = audit_encoder(dataset, enc, config=config, ood_centers=ood, model=mil_model,
                              model_labels=labels, progress=progress, log=log)  # fmt: skip
        meta = audit_metadata(f"encoder {encoder}", config, tiles=str(tiles), encoder=encoder,
                              n_tiles=len(dataset), ood_centers=list(ood))  # fmt: skip
    return write_audit({"metadata": meta, **audit}, out)


def _load_mil(model: Path, embed_dim: int) -> tuple[MILModel, list[str]]:
    from histoguard.mil import load_model
    from histoguard.mil._predict import model_dirs

    try:
        directory = model_dirs(model)[0]
    except FileNotFoundError as error:
        raise AuditDataError(str(error)) from None
    mil_model, labels = load_model(directory)
    if mil_model.in_dim != embed_dim:
        raise AuditDataError(
            f"{directory}: the model takes {mil_model.in_dim}-d features but the encoder makes "
            f"{embed_dim}-d ones; audit it with the encoder it was trained on"
        )
    return mil_model, labels


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays, tuples and paths as JSON types; NaN as None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
