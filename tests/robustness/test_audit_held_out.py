"""The audit of a k-fold ``train`` output scores each slide only with the fold models that never
saw it (checked against ``splits.json``), leaves out slides every fold saw, and says which."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from histoguard.mil import FoldEnsemble, load_cohort
from histoguard.mil._splits import Split, read_splits_file, save_splits
from histoguard.robustness import TileDataset, load_slide_model, run_audit
from tests.robustness.test_audit import SMALL, _kfold_output, _tile_table
from tests.robustness.test_audit import small_tiles as small_tiles  # the fixture


def _cohort(folder: Path, slides: list[str]) -> Path:
    table = folder / "cohort.csv"
    rows = [f"{s},p{s},{'benign' if i % 2 else 'malignant'},C{i % 2}" for i, s in enumerate(slides)]
    table.write_text("slide_id,patient_id,label,center\n" + "\n".join(rows) + "\n")
    return table


def _three_folds(model_dir: Path, slides: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Two fold models over three groups: fold_0 trains on A and B, tests C; fold_1 trains on
    B and C, tests A. B is seen by both."""
    third = len(slides) // 3
    a, b, c = slides[:third], slides[third : 2 * third], slides[2 * third :]
    cohort = load_cohort(_cohort(model_dir, slides), require_files=False)
    splits = [
        Split(name="fold0", train=(*a, *b[1:]), val=(b[0],), test=tuple(c)),
        Split(name="fold1", train=(*b, *c), val=(), test=tuple(a)),
    ]
    save_splits(splits, model_dir / "splits.json", cohort=cohort)
    return a, b, c


def test_each_slide_gets_a_model_that_never_saw_it(tmp_path: Path) -> None:
    model_dir = _kfold_output(tmp_path / "model", n_folds=2)
    slides = [f"s{i}" for i in range(9)]
    a, b, c = _three_folds(model_dir, slides)
    loaded = load_slide_model(model_dir, embed_dim=256)
    assert loaded.splits_file == model_dir / "splits.json"
    asked = [*slides, "elsewhere"]
    held = loaded.held_out(asked)
    chosen = {asked[i]: model for i, model in zip(held.kept, held.models, strict=True)}
    assert set(chosen) == {*a, *c, "elsewhere"}
    assert all(chosen[s] is loaded.members[1] for s in a)  # A: only fold_1 never saw it
    assert all(chosen[s] is loaded.members[0] for s in c)
    assert isinstance(chosen["elsewhere"], FoldEnsemble)  # in no split: every fold is unseen
    assert {e["slide"] for e in held.record["excluded"]} == set(b)
    assert held.record["proven"] is True
    # A fold folder inside the output knows its own split too.
    fold1 = load_slide_model(model_dir / "fold_1", embed_dim=256).held_out(slides)
    assert [slides[i] for i in fold1.kept] == a


def test_without_splits_the_audit_says_nothing_is_proven(tmp_path: Path) -> None:
    model_dir = _kfold_output(tmp_path / "model", n_folds=2)
    held = load_slide_model(model_dir, embed_dim=256).held_out(["x", "y"])
    assert held.kept == [0, 1] and held.record["proven"] is False
    assert "splits.json" in held.record["reason"]


@pytest.mark.slow
@pytest.mark.integration
def test_kfold_audit_scores_no_slide_its_model_saw(
    small_tiles: TileDataset, tmp_path: Path
) -> None:
    table = _tile_table(small_tiles, tmp_path / "tiles")
    model_dir = _kfold_output(tmp_path / "model", n_folds=2)
    slides = sorted(set(small_tiles.slide_id.tolist()))
    _three_folds(model_dir, slides)
    config = dataclasses.replace(SMALL, parts=("stress", "adversarial"))
    audit = run_audit(
        tmp_path / "a", tiles=table, encoder="hg-cnn", model=model_dir, config=config
    ).to_dict()
    splits, _ = read_splits_file(model_dir / "splits.json")
    seen = {f"{model_dir}/fold_{i}": {*s.train, *s.val, *s.calibration}
            for i, s in enumerate(splits)}  # fmt: skip
    for part in (audit["stress"]["slide_model"], audit["adversarial"]["slide"]):
        record = part["held_out"]
        assert record["proven"] is True
        scored = record["slides"]
        assert scored, "no slide was audited"
        for entry in scored:
            for folder in entry["models"]:
                assert entry["slide"] not in seen[folder], (entry, folder)
        assert {e["slide"] for e in scored} | {e["slide"] for e in record["excluded"]} <= set(
            slides
        )
    attacked = audit["adversarial"]["slide"]["slides"]
    assert attacked == [e["slide"] for e in audit["adversarial"]["slide"]["held_out"]["slides"]]
