"""What an audit found, as one typed, schema-versioned value: :class:`AuditResult`.

``AuditResult.to_dict()`` is the content of ``audit.json``: the keys every earlier version wrote
(``metadata``, ``robustness_index``, ``apd``, ``clustering_score``, ``stress``, ``adversarial``,
each part's own keys unchanged) plus ``schema_version`` and ``site_probe`` (absent from files
written before it existed, and then read as not run). :meth:`AuditResult.from_json` reads it
back, so the audit page (``histoguard.report``) can be rebuilt from a saved file without running
any model. A part that could not run is a :class:`Skipped` with its reason, written as
``{"skipped": reason}`` (with whatever the part measured before it stopped).

Each section types the fields a reader (and the page) relies on; everything else a metric
reports (curves, per-seed values, parameters) is kept, unchanged, in its ``details``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from histoguard.errors import AuditDataError

#: Version of the ``audit.json`` layout. Files written before it existed have no
#: ``schema_version`` and the same keys; they are read as version "0".
SCHEMA_VERSION = "1"
_KNOWN_VERSIONS = ("0", "1")


@dataclass(frozen=True, kw_only=True)
class Skipped:
    """A part of the audit that did not run (or stopped): why, and what it measured before.

    Attributes:
        reason: one sentence, naming what is missing and how to get it.
        partial: results the part produced before it stopped (for example PGD results of an
            encoder whose transfer target cannot be attacked); usually empty.
    """

    reason: str
    partial: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{"skipped": reason, **partial}``."""
        return {"skipped": self.reason, **self.partial}


@dataclass(frozen=True, kw_only=True)
class RobustnessIndexSection:
    """The robustness index (see :func:`histoguard.robustness.robustness_index`).

    Attributes:
        value: RI at ``k``, in [0, 1]; 1 = neighbours share the biology, 0 = the center.
        ci: percentile slide-bootstrap interval of ``value`` at ``confidence``, or None.
        confidence: coverage of ``ci`` (0.95 by default).
        k: neighbours per query of ``value`` (the headline k).
        k_selection: ``"user"`` (given) or ``"knn_balanced_accuracy"`` (the k with the best
            kNN balanced accuracy of the biological class).
        details: every other key of the metric's entry (curve, composition, kNN table, counts,
            paired design, parameters).
    """

    value: float
    ci: tuple[float, float] | None
    confidence: float = 0.95
    k: int
    k_selection: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> RobustnessIndexSection:
        """The section of an ``audit.json`` entry."""
        return cls(
            value=float(entry["value"]),
            ci=_interval(entry.get("ci")),
            confidence=float(entry.get("confidence", 0.95)),
            k=int(entry["k"]),
            k_selection=str(entry.get("k_selection", "knn_balanced_accuracy")),
            details=_rest(entry, ("value", "ci", "confidence", "k", "k_selection")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``audit.json`` entry."""
        return {
            "value": self.value,
            "k": self.k,
            "k_selection": self.k_selection,
            "ci": _list(self.ci),
            "confidence": self.confidence,
            **self.details,
        }


@dataclass(frozen=True, kw_only=True)
class APDSection:
    """The average performance drop (see :func:`histoguard.robustness.average_performance_drop`).

    Attributes:
        in_distribution: APD on held-out slides of the training centers (0 = no drop, -0.1 = a
            10 % relative loss).
        out_of_distribution: APD on held-out centers, or None without any.
        ci_in_distribution, ci_out_of_distribution: 95 % intervals of the mean over seeds, or
            None (one seed, or no OOD centers).
        details: every other key (accuracy per confounding level, per-seed values, parameters).
    """

    in_distribution: float
    out_of_distribution: float | None
    ci_in_distribution: tuple[float, float] | None
    ci_out_of_distribution: tuple[float, float] | None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> APDSection:
        """The section of an ``audit.json`` entry."""
        ood = entry.get("out_of_distribution")
        return cls(
            in_distribution=float(entry["in_distribution"]),
            out_of_distribution=None if ood is None else float(ood),
            ci_in_distribution=_interval(entry.get("ci_in_distribution")),
            ci_out_of_distribution=_interval(entry.get("ci_out_of_distribution")),
            details=_rest(entry, _APD_KEYS),
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``audit.json`` entry."""
        return {
            "in_distribution": self.in_distribution,
            "out_of_distribution": self.out_of_distribution,
            "ci_in_distribution": _list(self.ci_in_distribution),
            "ci_out_of_distribution": _list(self.ci_out_of_distribution),
            **self.details,
        }


_APD_KEYS = (
    "in_distribution",
    "out_of_distribution",
    "ci_in_distribution",
    "ci_out_of_distribution",
)


@dataclass(frozen=True, kw_only=True)
class ClusteringSection:
    """The clustering score (see :func:`histoguard.robustness.clustering_score`).

    Attributes:
        value: mean of ``ARI(clusters, class) - ARI(clusters, center)`` over the 2 x 2
            subsets. An ARI lies in [-0.5, 1], so the score lies in [-1.5, 1.5]; +1 means the
            clusters are the classes, -1 the centers, and a value a little beyond ±1 comes from
            the other ARI dipping below 0 by chance.
        ci: 95 % interval of the mean over subset x repeat scores, or None.
        details: every other key (mean ARIs, per-subset results, parameters).
    """

    value: float
    ci: tuple[float, float] | None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> ClusteringSection:
        """The section of an ``audit.json`` entry."""
        return cls(
            value=float(entry["value"]),
            ci=_interval(entry.get("ci")),
            details=_rest(entry, ("value", "ci")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``audit.json`` entry."""
        return {"value": self.value, "ci": _list(self.ci), **self.details}


@dataclass(frozen=True, kw_only=True)
class SiteProbeSection:
    """The site probe (see :func:`histoguard.robustness.site_probe`): how well the center is
    predicted from the embeddings by a slide-grouped cross-validated linear probe.

    Attributes:
        auroc: out-of-fold AUROC (one-vs-rest macro for more than 2 centers); 0.5 = chance.
        ci: its percentile slide-bootstrap interval at ``confidence``.
        balanced_accuracy: out-of-fold balanced accuracy of the predicted center.
        ci_balanced_accuracy: its interval.
        confidence: coverage of the intervals.
        centers: the centers told apart.
        details: every other key (chance levels, folds, counts, per-fold AUROC, parameters).
    """

    auroc: float
    ci: tuple[float, float] | None
    balanced_accuracy: float
    ci_balanced_accuracy: tuple[float, float] | None
    confidence: float = 0.95
    centers: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> SiteProbeSection:
        """The section of an ``audit.json`` entry."""
        return cls(
            auroc=float(entry["auroc"]),
            ci=_interval(entry.get("ci")),
            balanced_accuracy=float(entry["balanced_accuracy"]),
            ci_balanced_accuracy=_interval(entry.get("ci_balanced_accuracy")),
            confidence=float(entry.get("confidence", 0.95)),
            centers=tuple(str(c) for c in entry.get("classes", ())),
            details=_rest(entry, _SITE_PROBE_KEYS),
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``audit.json`` entry."""
        return {
            "auroc": self.auroc,
            "ci": _list(self.ci),
            "balanced_accuracy": self.balanced_accuracy,
            "ci_balanced_accuracy": _list(self.ci_balanced_accuracy),
            "confidence": self.confidence,
            "classes": list(self.centers),
            **self.details,
        }


_SITE_PROBE_KEYS = ("auroc", "ci", "balanced_accuracy", "ci_balanced_accuracy", "confidence",
                    "classes")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class StressSection:
    """The stress tests (see :func:`histoguard.robustness.stress_test`).

    Attributes:
        tolerance: accuracy drop a perturbation may cause and still count as graceful.
        clean_balanced_accuracy: the probe's balanced accuracy on the unperturbed tiles.
        perturbations: per perturbation name, its per-severity results (``severities``,
            ``balanced_accuracy``, ``drift``, ``graceful_severity``, ...).
        slide_model: the slide model's stress test (with ``models``: the model folders used),
            a :class:`Skipped`, or None when no model was given.
        details: every other key (tile count, parameters).
    """

    tolerance: float
    clean_balanced_accuracy: float
    perturbations: Mapping[str, Mapping[str, Any]]
    slide_model: Mapping[str, Any] | Skipped | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> StressSection:
        """The section of an ``audit.json`` entry."""
        slide = entry.get("slide_model")
        return cls(
            tolerance=float(entry["tolerance"]),
            clean_balanced_accuracy=float(entry["clean"]["balanced_accuracy"]),
            perturbations=dict(entry["perturbations"]),
            slide_model=_maybe_skipped(slide) if isinstance(slide, Mapping) else None,
            details=_rest(entry, ("tolerance", "clean", "perturbations", "slide_model")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``audit.json`` entry (``slide_model`` only when a model was given)."""
        out: dict[str, Any] = {
            "tolerance": self.tolerance,
            "clean": {"balanced_accuracy": self.clean_balanced_accuracy},
            "perturbations": dict(self.perturbations),
            **self.details,
        }
        if self.slide_model is not None:
            out["slide_model"] = _entry(self.slide_model)
        return out


@dataclass(frozen=True, kw_only=True)
class AdversarialSection:
    """The attacks (see :func:`histoguard.robustness.pgd_attack`, ``universal_attack``,
    ``slide_attack``).

    Attributes:
        pgd: one result per (norm, budget) of the tile-level PGD sweep, each with
            ``clean_accuracy`` and ``adversarial_accuracy``.
        universal: the universal perturbation and its transfer, or None.
        slide: the slide-level attack (with ``models``: the model folders attacked), or None
            when no model was given.
        details: any other key.
    """

    pgd: tuple[Mapping[str, Any], ...] = ()
    universal: Mapping[str, Any] | None = None
    slide: Mapping[str, Any] | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> AdversarialSection:
        """The section of an ``audit.json`` entry."""
        return cls(
            pgd=tuple(entry.get("pgd") or ()),
            universal=entry.get("universal"),
            slide=entry.get("slide"),
            details=_rest(entry, ("pgd", "universal", "slide")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``audit.json`` entry (keys only for what ran)."""
        out: dict[str, Any] = {"pgd": list(self.pgd), **self.details}
        if self.universal is not None:
            out["universal"] = dict(self.universal)
        if self.slide is not None:
            out["slide"] = dict(self.slide)
        return out


_S = TypeVar("_S", RobustnessIndexSection, APDSection, ClusteringSection, SiteProbeSection,
             StressSection, AdversarialSection)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class AuditResult:
    """Everything one audit measured, with its provenance.

    Attributes:
        metadata: subject, software version, date, machine, inputs, the slide model used (if
            any) and the resolved ``config``.
        robustness_index, apd, clustering_score, site_probe, stress, adversarial: one section
            per part of :data:`~histoguard.robustness.AUDIT_PARTS`, or :class:`Skipped`.
        schema_version: layout version of the JSON form (:data:`SCHEMA_VERSION`).
    """

    metadata: Mapping[str, Any] = field(default_factory=dict)
    robustness_index: RobustnessIndexSection | Skipped = Skipped(reason="not run")
    apd: APDSection | Skipped = Skipped(reason="not run")
    clustering_score: ClusteringSection | Skipped = Skipped(reason="not run")
    site_probe: SiteProbeSection | Skipped = Skipped(reason="not run")
    stress: StressSection | Skipped = Skipped(reason="not run")
    adversarial: AdversarialSection | Skipped = Skipped(reason="not run")
    schema_version: str = SCHEMA_VERSION

    def with_metadata(self, metadata: Mapping[str, Any]) -> AuditResult:
        """The same result with ``metadata`` (JSON-compatible) as its provenance."""
        return replace(self, metadata=jsonable(metadata))

    def to_dict(self) -> dict[str, Any]:
        """The content of ``audit.json``: JSON types only, NaN written as None."""
        content: dict[str, Any] = jsonable(
            {
                "schema_version": self.schema_version,
                "metadata": dict(self.metadata),
                "robustness_index": self.robustness_index.to_dict(),
                "apd": self.apd.to_dict(),
                "clustering_score": self.clustering_score.to_dict(),
                "site_probe": self.site_probe.to_dict(),
                "stress": self.stress.to_dict(),
                "adversarial": self.adversarial.to_dict(),
            }
        )
        return content

    def to_json(self) -> str:
        """``audit.json``'s text (indented, strict JSON, newline-terminated)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, content: Mapping[str, Any]) -> AuditResult:
        """The result of an ``audit.json`` content (any key but the parts' is ignored).

        Raises:
            AuditDataError: a schema version this histoguard does not know, or a part whose
                entry lacks its main fields.
        """
        version = str(content.get("schema_version", "0"))
        if version not in _KNOWN_VERSIONS:
            raise AuditDataError(
                f"audit schema version {version!r} is newer than this histoguard reads "
                f"({', '.join(_KNOWN_VERSIONS)}); upgrade histoguard to read it"
            )
        content = jsonable(content)
        try:
            return cls(
                metadata=dict(content.get("metadata") or {}),
                robustness_index=_part(RobustnessIndexSection, content.get("robustness_index")),
                apd=_part(APDSection, content.get("apd")),
                clustering_score=_part(ClusteringSection, content.get("clustering_score")),
                site_probe=_part(SiteProbeSection, content.get("site_probe")),
                stress=_part(StressSection, content.get("stress")),
                adversarial=_part(AdversarialSection, content.get("adversarial")),
                schema_version=SCHEMA_VERSION,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise AuditDataError(
                f"not an audit result: a part lacks or mistypes its field {error}; "
                "pass the audit.json that `histoguard audit` wrote"
            ) from None

    @classmethod
    def from_json(cls, source: str | Path | Mapping[str, Any]) -> AuditResult:
        """Read an audit: a path to ``audit.json``, its text, or its parsed content.

        Raises:
            AuditDataError: the file cannot be read or is not an audit (the message names it).
        """
        if isinstance(source, Mapping):
            return cls.from_dict(source)
        text, where = str(source), "the given text"
        if isinstance(source, Path) or not text.lstrip().startswith("{"):
            path = Path(source)
            where = str(path)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as error:
                raise AuditDataError(
                    f"{path}: cannot read the audit ({error.strerror or error}); pass the "
                    "audit.json that `histoguard audit` wrote"
                ) from None
        try:
            content = json.loads(text)
        except json.JSONDecodeError as error:
            raise AuditDataError(
                f"{where}: not JSON ({error.msg}, line {error.lineno}); pass the audit.json "
                "that `histoguard audit` wrote"
            ) from None
        if not isinstance(content, Mapping):
            raise AuditDataError(f"{where}: an audit is a JSON object, not {type(content)}")
        try:
            return cls.from_dict(content)
        except AuditDataError as error:
            raise AuditDataError(f"{where}: {error}") from None


def _part(cls: type[_S], entry: Any) -> _S | Skipped:
    if not isinstance(entry, Mapping):
        return Skipped(reason="not run")
    if "skipped" in entry:
        return Skipped(reason=str(entry["skipped"]), partial=_rest(entry, ("skipped",)))
    return cls.from_dict(entry)


def _maybe_skipped(entry: Mapping[str, Any]) -> Mapping[str, Any] | Skipped:
    if "skipped" in entry:
        return Skipped(reason=str(entry["skipped"]), partial=_rest(entry, ("skipped",)))
    return dict(entry)


def _entry(value: Mapping[str, Any] | Skipped) -> dict[str, Any]:
    return value.to_dict() if isinstance(value, Skipped) else dict(value)


def _rest(entry: Mapping[str, Any], typed: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in typed}


def _interval(value: Any) -> tuple[float, float] | None:
    if value is None or any(v is None for v in value):
        return None
    low, high = value
    return float(low), float(high)


def _list(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else list(interval)


def jsonable(value: Any) -> Any:
    """numpy scalars/arrays, tuples and paths as JSON types; NaN and infinities as None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
