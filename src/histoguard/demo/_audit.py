"""The demo's audit: a two-center cohort whose confounder is known, audited end to end.

Real LC25000 lung tiles (one per original image, so augmented copies never meet) are assigned to
two simulated centers with the stain profiles of two real labs' reference images, with a
center-class association of 0.5: the kind of cohort where an encoder that sees the stain learns
the hospital. Without the shared data the tiles are generated and the two profiles are the
Ruifrok-Johnston H&E vectors and a shifted variant of them. The built-in CNN ``hg-cnn`` is then
audited on it (it is differentiable, so the attacks run), with budgets small enough for a laptop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoguard.demo._pseudo_slides import real_tile_paths
from histoguard.encoders import load_encoder
from histoguard.errors import AuditDataError
from histoguard.report import write_audit_page, write_comparison_page
from histoguard.robustness import (
    AttackSettings,
    AuditConfig,
    AuditOutputs,
    ClusteringConfig,
    ComparisonResult,
    LabelledEmbeddings,
    RobustnessIndexConfig,
    StainProfile,
    StressConfig,
    TileDataset,
    audit_encoder,
    audit_metadata,
    center_class_association,
    compare_embeddings,
    default_profiles,
    simulate_centers,
    write_audit,
    write_comparison,
)
from histoguard.robustness.metrics._apd import APDConfig
from histoguard.slide._synthetic import synthetic_tile

DEMO_AUDIT_ENCODER = "hg-cnn"
#: Tiles per class in the demo cohort, and the center-class association it is built with.
TILES_PER_CLASS = 32
CORRELATION = 0.5

DEMO_AUDIT_CONFIG = AuditConfig(
    robustness_index=RobustnessIndexConfig(max_k=30, n_bootstrap=300),
    apd=APDConfig(n_levels=2, n_seeds=2),
    clustering=ClusteringConfig(k_max=8, n_repeats=1),
    stress=StressConfig(
        perturbations=("blur", "jpeg", "hed_jitter", "rot90", "mirror"), severities=(1, 3, 5)
    ),
    attacks=AttackSettings(pgd_eps=(1 / 255, 4 / 255), pgd_steps=5, max_tiles=24),
    max_stress_tiles=24,
)

# Haematoxylin and eosin optical-density directions (Ruifrok & Johnston 2001), and a variant
# turned by a few degrees: two labs that stain differently.
_RUIFROK_HE = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105]])
_SHIFTED_HE = np.array([[0.550, 0.760, 0.346], [0.200, 0.960, 0.190]])


def demo_audit_tiles(data_root: Path | None, *, seed: int = 0) -> tuple[TileDataset, str]:
    """The demo's two-center cohort, and whether its tiles are ``"real"`` or ``"generated"``."""
    real = real_tile_paths(data_root) if data_root is not None else None
    if real:
        paths = [p for label in ("lung_n", "lung_aca") for p in real[label][:TILES_PER_CLASS]]
        labels = ["normal"] * TILES_PER_CLASS + ["tumour"] * TILES_PER_CLASS
        tiles = TileDataset(
            paths=np.array([str(p) for p in paths]),
            label=np.array(labels),
            center=np.array(["lab"] * len(paths)),
            slide_id=np.array([p.stem for p in paths]),
        )
        tiles = TileDataset(
            paths=tiles.paths, label=tiles.label, center=tiles.center,
            slide_id=tiles.slide_id, images=tiles.load(size=224),
        )  # fmt: skip
        source = "real"
    else:
        densities = {"normal": 1 / 220, "tumour": 1 / 45}
        images, labels = [], []
        for label, density in densities.items():
            for i in range(TILES_PER_CLASS):
                images.append(synthetic_tile(224, nuclei_per_px=density, seed=seed * 1000 + i))
                labels.append(label)
        names = np.array([f"generated{i:03d}" for i in range(len(images))])
        tiles = TileDataset(
            paths=names, label=np.array(labels), center=np.array(["lab"] * len(names)),
            slide_id=names, images=np.stack(images),
        )  # fmt: skip
        source = "generated"
    return simulate_centers(tiles, _profiles(data_root), correlation=CORRELATION, seed=seed), source


def _profiles(data_root: Path | None) -> list[StainProfile]:
    if data_root is not None and (data_root / "stain_refs").is_dir():
        try:
            return default_profiles(data_root / "stain_refs")[:2]
        except AuditDataError:
            pass  # unusable references: fall back to the built-in pair
    return [
        StainProfile(name=name, stains=stains / np.linalg.norm(stains, axis=1, keepdims=True),
                     max_concentrations=np.array([1.9, 1.0]))
        for name, stains in (("lab_a", _RUIFROK_HE), ("lab_b", _SHIFTED_HE))
    ]  # fmt: skip


def run_demo_audit(out: Path, data_root: Path | None, *, progress: bool) -> AuditOutputs:
    """Build the demo cohort, audit ``hg-cnn`` on it, write ``out/audit.json`` + ``.html``."""
    tiles, source = demo_audit_tiles(data_root)
    encoder = load_encoder(DEMO_AUDIT_ENCODER)
    result = audit_encoder(tiles, encoder, config=DEMO_AUDIT_CONFIG, progress=progress)
    meta = audit_metadata(
        f"encoder {DEMO_AUDIT_ENCODER} on a simulated two-center cohort ({source} tiles)",
        DEMO_AUDIT_CONFIG, encoder=DEMO_AUDIT_ENCODER, n_tiles=len(tiles),
        tile_source=source, simulated_correlation=CORRELATION,
        center_class_association=center_class_association(tiles.label, tiles.center),
    )  # fmt: skip
    result = result.with_metadata(meta)
    json_path = write_audit(result, out)
    html_path = write_audit_page(result, out / "audit.html")
    return AuditOutputs(json_path=json_path, html_path=html_path, audit=result.to_dict())


def run_demo_harmonization(
    out: Path, data_root: Path | None, *, seed: int = 0
) -> ComparisonOutputs:
    """The cure beside the diagnosis: CovBat fitted on half of the demo cohort's slides (their
    labels as the covariate), applied to the other half, compared before / after on that held-
    out half; writes ``out/comparison.json`` + ``.html``."""
    from histoguard.harmonize import Harmonizer, design_from_labels

    tiles, source = demo_audit_tiles(data_root)
    embeddings = load_encoder(DEMO_AUDIT_ENCODER).encode(tiles.load(size=224))
    rng = np.random.default_rng(seed)
    train = np.zeros(len(tiles), dtype=bool)
    for cell in {(a, b) for a, b in zip(tiles.label, tiles.center, strict=True)}:
        rows = np.flatnonzero((tiles.label == cell[0]) & (tiles.center == cell[1]))
        train[rng.permutation(rows)[: len(rows) // 2]] = True
    harmonizer = Harmonizer(method="covbat").fit(
        embeddings[train], tiles.center[train], design_from_labels(tiles.label[train])
    )
    test = ~train
    harmonised = harmonizer.transform(embeddings[test], tiles.center[test])
    sides = [
        LabelledEmbeddings(
            embeddings=np.asarray(values, dtype=np.float32),
            label=tiles.label[test],
            center=tiles.center[test],
            slide_id=tiles.slide_id[test],
        )
        for values in (embeddings[test], harmonised)
    ]
    result = compare_embeddings(sides[0], sides[1], DEMO_AUDIT_CONFIG)
    meta = audit_metadata(
        f"{DEMO_AUDIT_ENCODER} embeddings before / after CovBat (fitted on the other half of "
        f"the simulated two-center cohort, {source} tiles)",
        DEMO_AUDIT_CONFIG, encoder=DEMO_AUDIT_ENCODER, n_tiles=int(test.sum()),
        n_fit_tiles=int(train.sum()), tile_source=source,
    )  # fmt: skip
    result = result.with_metadata(meta)
    json_path = write_comparison(result, out)
    html_path = write_comparison_page(result, out / "comparison.html")
    return ComparisonOutputs(json_path=json_path, html_path=html_path, comparison=result)


@dataclass(frozen=True)
class ComparisonOutputs:
    """Where the demo's before / after comparison went, and the comparison."""

    json_path: Path
    html_path: Path
    comparison: ComparisonResult
