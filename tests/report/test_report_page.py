"""The validation report on a synthetic train run: numbers, checklist, determinism, errors,
leaks, the intended-use override, subgroups and the page in a real browser."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.errors import ConfigError
from histoguard.report import build_model_card, write_report
from tests.conftest import REPO_ROOT
from tests.report._page_checks import check_images, check_numbers, check_screenshot
from tests.report.conftest import synthetic_run

DOCS_IMAGE = REPO_ROOT / "docs" / "img" / "report.png"


@pytest.fixture(scope="module")
def report_out(report_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    write_report(report_run, out)
    return out


def test_every_number_on_the_page_is_read_from_the_card(report_out: Path) -> None:
    card = check_numbers(report_out)
    assert card["schema_version"] == "1"
    assert card["performance"]["overall"]["n"] == len(
        (Path(card["run_dir"]) / "predictions.csv").read_text().splitlines()[1:]
    )


def test_checklist_is_mostly_filled_by_software(report_out: Path) -> None:
    card = json.loads((report_out / "model_card.json").read_text())
    summary = card["checklist_summary"]
    items = card["checklist"]
    assert summary["n_items"] == len(items)
    assert summary["n_auto"] == sum(i["status"] == "auto" for i in items)
    assert summary["n_knowable"] == sum(i["software_knowable"] for i in items)
    # Without an audit the robustness items are knowable but not filled.
    assert any(i["status"] == "human" and i["software_knowable"] for i in items)
    assert summary["auto_share"] >= 0.8, summary


def test_rerun_gives_the_same_card_apart_from_the_timestamp(
    report_run: Path, tmp_path: Path
) -> None:
    cards = []
    for name in ("a", "b"):
        write_report(report_run, tmp_path / name)
        cards.append(json.loads((tmp_path / name / "model_card.json").read_text()))
    assert cards[0].pop("generated_at") and cards[1].pop("generated_at")
    assert cards[0] == cards[1]


def test_the_leak_check_is_recomputed_from_the_saved_splits(report_run: Path) -> None:
    card = build_model_card(report_run)
    check = card.leak_check
    assert check.leak_free and check.test_overlap == 0
    assert all(s.shared_patients == 0 for s in check.splits)
    total = sum(s.slides["test"] for s in check.splits)
    assert total == card.performance.overall.n


def test_a_leaking_split_is_reported_not_passed(report_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    splits = json.loads((run / "splits.json").read_text())
    first = splits["splits"][0]
    # s00 and s01 belong to patient p0: move s01 to the other side of split 0.
    for part in ("train", "val", "test", "calibration"):
        first[part] = [s for s in first[part] if s != "s01"]
    side = "test" if "s00" not in first["test"] else "train"
    first[side].append("s01")
    (run / "splits.json").write_text(json.dumps(splits))
    check = build_model_card(run).leak_check
    assert not check.leak_free
    assert "p0" in check.reading


def test_calibration_bins_reproduce_the_runs_ece(report_run: Path) -> None:
    card = build_model_card(report_run)
    assert card.calibration is not None
    before, after = card.calibration.diagrams
    assert before.ece == pytest.approx(card.calibration.ece_before.value, abs=1e-6)
    # trust_readings.csv holds probabilities with 6 decimals.
    assert after.ece == pytest.approx(card.calibration.ece_after.value, abs=1e-4)


def test_intended_use_yaml_overrides_and_unknown_keys_fail(
    report_run: Path, tmp_path: Path
) -> None:
    good = tmp_path / "use.yaml"
    good.write_text("statement: Triage of colon biopsies.\nexclusions: [frozen sections]\n")
    use = build_model_card(report_run, intended_use_file=good).intended_use
    assert use.edited and use.statement == "Triage of colon biopsies."
    assert use.exclusions == ["frozen sections"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("statment: typo\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        build_model_card(report_run, intended_use_file=bad)


def test_subgroup_columns_of_the_cohort_are_tabulated(report_run: Path) -> None:
    card = build_model_card(report_run)
    assert [t.column for t in card.subgroups] == ["sex"]
    strata = card.subgroups[0].strata
    assert {s.name for s in strata} == {"sex = F", "sex = M"}
    assert sum(s.n for s in strata) == card.performance.overall.n


def test_strata_below_the_minimum_read_too_few_slides(report_run: Path) -> None:
    card = build_model_card(report_run, min_slides=1000)
    reading = card.performance.overall.metrics["auc"].reading
    assert reading.startswith("too few slides")


@pytest.mark.parametrize("kind", ["missing", "not-a-run"])
def test_a_wrong_run_dir_is_a_one_line_error(tmp_path: Path, kind: str) -> None:
    run = tmp_path / "nowhere" if kind == "missing" else tmp_path
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert str(run) in message


@pytest.mark.slow
def test_site_aware_gap_and_audit(report_run: Path, tmp_path: Path) -> None:
    """With the leave-one-center-out run of the same cohort and an audit of it."""
    site = synthetic_run(report_run.parent, split="leave-one-center-out")
    card = build_model_card(report_run, compare_run=site)
    assert card.design_gap is not None
    random_auc, site_auc, gap = card.design_gap.rows["auc"]
    assert gap.value == pytest.approx(random_auc.value - site_auc.value)
    with pytest.raises(ConfigError, match="one random-split run"):
        build_model_card(report_run, compare_run=report_run)


def test_the_page_renders_in_chromium(report_out: Path, tmp_path: Path) -> None:
    assert check_images(report_out) >= 3
    png = check_screenshot(report_out, tmp_path / "report.png")
    if os.environ.get("HISTOGUARD_WRITE_DOCS_IMAGES") == "1":
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.open(png).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(
            DOCS_IMAGE, optimize=True
        )
