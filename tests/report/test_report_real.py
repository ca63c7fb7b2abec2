"""The validation report of a site-aware run on real colorectal tiles from two hospitals:
GlaS (Coventry, UK) and EBHI-Seg (China), benign vs malignant in their shared label space.

Pseudo-slides: each GlaS image (its 224-px grid crops) is a slide of its patient; EBHI tiles
of one specimen and class are cut into slides of up to 8 tiles, the specimen as the patient.
Features are the built-in hand-crafted encoder's (no weights), so the run takes seconds.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from histoguard.core._image import decode_image
from histoguard.encoders import load_encoder
from histoguard.features import write_feature_file
from histoguard.mil import TrainConfig, train
from histoguard.report import write_report
from tests.conftest import grid_crops
from tests.report._page_checks import check_images, check_numbers, check_screenshot

EBHI_CLASS = {"Normal": "benign", "Polyp": "benign", "Adenocarcinoma": "malignant"}
EBHI_TILES_PER_SLIDE = 8
#: EBHI pseudo-slides kept per class (first specimens in name order), to keep the run short.
EBHI_SLIDES_PER_CLASS = 40


def _colon_cohort(shared_data: Path, folder: Path) -> Path:
    encoder = load_encoder("hg-handcrafted")
    features = folder / "features"
    features.mkdir(parents=True)
    attrs = {"encoder": "hg-handcrafted", "weights_sha256": "", "tile_size": 224}
    lines = ["slide_id,label,patient_id,center"]

    def add(slide_id: str, tiles: list[np.ndarray], label: str, patient: str, center: str,
            mpp: float) -> None:  # fmt: skip
        x = encoder.encode(np.stack(tiles))
        coords = np.stack([np.arange(len(tiles)) * 224, np.zeros(len(tiles), int)], axis=1)
        write_feature_file(features / f"{slide_id}.h5", x, coords, {**attrs, "mpp": mpp})
        lines.append(f"{slide_id},{label},{patient},{center}")

    glas = shared_data / "tiles" / "glas"
    with (glas / "labels.csv").open(newline="") as handle:
        for i, row in enumerate(sorted(csv.DictReader(handle), key=lambda r: r["path"])):
            crops = grid_crops(decode_image(glas / row["path"]), 224)
            add(f"glas{i:03d}", crops, row["label"], f"GlaS-{row['patient']}", "GlaS", 0.62)
    ebhi = shared_data / "tiles" / "ebhi_seg"
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    with (ebhi / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["label"] in EBHI_CLASS:
                groups[(EBHI_CLASS[row["label"]], row["specimen"])].append(row["path"])
    kept: dict[str, int] = defaultdict(int)
    for (label, specimen), paths in sorted(groups.items()):
        for start in range(0, len(sorted(paths)), EBHI_TILES_PER_SLIDE):
            if kept[label] >= EBHI_SLIDES_PER_CLASS:
                break
            chunk = sorted(paths)[start : start + EBHI_TILES_PER_SLIDE]
            tiles = [decode_image(ebhi / p) for p in chunk]
            add(f"ebhi-{label}-{specimen}-{start // EBHI_TILES_PER_SLIDE}", tiles, label,
                f"EBHI-{specimen}", "EBHI", 0.62)  # fmt: skip
            kept[label] += 1
    # Every file records GlaS's 0.62 µm/px, so the model records one scale; EBHI's 400x tiles
    # are finer in truth, part of the site shift between the two centers.
    table = folder / "cohort.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


@pytest.fixture(scope="module")
def colon_runs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("colon")
    table = _colon_cohort(shared_data, folder)
    runs = {}
    for split in ("leave-one-center-out", "kfold"):
        runs[split] = folder / split
        train(
            TrainConfig(
                cohort=table, features=folder / "features", out=runs[split], split=split,  # type: ignore[arg-type]
                k=3, epochs=15, lr=1e-3, n_boot=200, calibration_fraction=0.2,
            )
        )  # fmt: skip
    return runs


@pytest.mark.slow
@pytest.mark.integration
def test_report_of_a_site_aware_glas_ebhi_run(colon_runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_report(colon_runs["leave-one-center-out"], out, compare_run=colon_runs["kfold"])
    card = check_numbers(out)
    assert check_images(out) >= 3
    check_screenshot(out, tmp_path / "report.png")
    assert card["leak_check"]["leak_free"]
    assert {s["held_out_centers"][0] for s in card["leak_check"]["splits"]} == {"GlaS", "EBHI"}
    assert {s["name"] for s in card["performance"]["per_center"]} == {"GlaS", "EBHI"}
    gap = card["design_gap"]
    assert gap is not None and "auc" in gap["rows"]
    summary = card["checklist_summary"]
    print(f"\nGlaS/EBHI site-aware: checklist {summary}; gap reading: {gap['reading']}")
    assert summary["auto_share"] >= 0.8, summary
