"""Mistakes users make end in a message and an exit code, not a traceback.

Exit codes: 2 for usage and configuration mistakes, 1 for data problems, 130 when interrupted;
the message names the file or setting and the fix.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from histoguard.cli import app
from histoguard.mil import build_model, save_model
from tests.conftest import REPO_ROOT

runner = CliRunner()


def _run(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args], prog_name="histoguard")


def _assert_message(result: Result, code: int, *needles: str) -> str:
    """The run ended with ``code``, no traceback and no stray exception, and said each needle."""
    output = result.output
    assert result.exit_code == code, output
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    for needle in needles:
        assert needle in output, f"{needle!r} not in {output!r}"
    return output


@pytest.fixture(autouse=True)
def _restore_histoguard_logger() -> Iterator[None]:
    """The CLI configures the ``histoguard`` logger; put it back for the other tests."""
    logger = logging.getLogger("histoguard")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers


# --------------------------------------------------------------------------- audit


def test_audit_tolerance_out_of_range_is_a_config_error(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    result = _run("audit", "--features", tmp_path / "f", "--cohort", tmp_path / "c.csv",
                  "--out", out, "--tolerance", "1.5", "-q")  # fmt: skip
    # The option's range refuses it before the audit's own check (StressConfig) is reached.
    text = _assert_message(result, 2, "--tolerance", "less than or equal to 1")
    assert "AuditDataError" not in text
    assert not (out / "audit.json").exists()


def test_audit_without_an_input_mode_is_a_usage_error(tmp_path: Path) -> None:
    result = _run("audit", "--out", tmp_path / "audit", "-q")
    _assert_message(result, 2, "--features with --cohort", "--tiles with --encoder")


def test_audit_eps_that_are_not_numbers_are_a_usage_error(tmp_path: Path) -> None:
    result = _run("audit", "--out", tmp_path, "--eps", "1,two", "-q")
    _assert_message(result, 2, "--eps", "1,two")


# --------------------------------------------------------------------------- train


def _train_files(tmp_path: Path, config_text: str) -> tuple[Path, Path]:
    """A config file whose cohort and features paths exist, and the output folder it names."""
    (tmp_path / "features").mkdir()
    (tmp_path / "cohort.csv").write_text("slide_id,label\ns1,a\ns2,b\n")
    out = tmp_path / "run"
    head = f"cohort: {tmp_path / 'cohort.csv'}\nfeatures: {tmp_path / 'features'}\nout: {out}\n"
    config = tmp_path / "train.yaml"
    config.write_text(head + config_text)
    return config, out


def test_train_with_a_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.yaml"
    _assert_message(_run("train", missing), 2, "histoguard train: error:", str(missing),
                    "not found")  # fmt: skip


def test_train_with_a_yaml_syntax_error_says_where(tmp_path: Path) -> None:
    config, out = _train_files(tmp_path, "epochs: [3\nmodel: abmil\n")
    text = _assert_message(_run("train", config), 2, str(config), "not valid YAML", "line 5")
    assert "column" in text
    assert not out.exists()


def test_train_with_a_value_of_the_wrong_type(tmp_path: Path) -> None:
    config, out = _train_files(tmp_path, "epochs: two\n")
    _assert_message(_run("train", config), 2, str(config), "epochs", "'two'", "an integer")
    assert not out.exists()


def test_train_with_an_unknown_model_writes_nothing(tmp_path: Path) -> None:
    config, out = _train_files(tmp_path, "model: abmill\n")
    _assert_message(_run("train", config), 2, str(config), "'abmill'", "Did you mean 'abmil'")
    assert not (out / "config.json").exists() and not (out / "splits.json").exists()


def test_train_with_a_typo_in_model_kwargs_names_the_accepted_keys(tmp_path: Path) -> None:
    config, out = _train_files(tmp_path, "model: abmil\nmodel_kwargs:\n  hiden_dim: 64\n")
    _assert_message(_run("train", config), 2, "'hiden_dim'", "hidden_dim", "dropout")
    assert not (out / "config.json").exists()


def test_train_model_kwargs_flag_typo_and_bad_json(tmp_path: Path) -> None:
    config, out = _train_files(tmp_path, "")
    typo = _run("train", config, "--model-kwargs", '{"hiden_dim": 64}')
    _assert_message(typo, 2, "'hiden_dim'", "Did you mean 'hidden_dim'")
    bad = _run("train", config, "--model-kwargs", "{hidden_dim: 64}")
    _assert_message(bad, 2, "--model-kwargs", "not valid JSON")
    assert not out.exists()


def test_train_with_an_unknown_setting(tmp_path: Path) -> None:
    config, _ = _train_files(tmp_path, "epoch: 3\n")
    _assert_message(_run("train", config), 2, "'epoch'", "Did you mean 'epochs'")


def test_train_missing_cohort_is_reported_by_the_subprocess_entry_point(tmp_path: Path) -> None:
    """The installed entry point (``python -m histoguard``) maps errors the same way."""
    missing = tmp_path / "no-such.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "histoguard", "train", str(missing)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("histoguard train: error:")
    assert str(missing) in done.stderr


# --------------------------------------------------------------------------- devices


def test_extract_on_cuda_without_cuda_says_how_to_fix_it(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error case needs a machine without it")
    out = tmp_path / "out"
    result = _run("extract", tmp_path / "x.svs", "--encoder", "hg-cnn", "--out", out,
                  "--device", "cuda", "-q")  # fmt: skip
    _assert_message(result, 2, "'cuda'", "--device cpu", "install a CUDA build of torch")
    assert not out.exists()


# --------------------------------------------------------------------------- CLAM .pt files


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A saved 2-class ABMIL on 8-d features (random weights)."""
    torch.manual_seed(0)
    directory = tmp_path / "model"
    save_model(build_model("abmil", in_dim=8, n_classes=2), directory, labels=["a", "b"])
    return directory


def test_predict_reads_a_clam_pt_feature_file(tiny_model: Path, tmp_path: Path) -> None:
    pt_files = tmp_path / "clam" / "pt_files"
    pt_files.mkdir(parents=True)
    torch.save(torch.randn(12, 8), pt_files / "slide1.pt")
    out = tmp_path / "pred"
    result = _run("predict", pt_files / "slide1.pt", "--model", tiny_model, "--out", out)
    _assert_message(result, 0, "slide1:")
    assert (out / "predictions.csv").read_text().splitlines()[1].startswith("slide1,")


def test_predict_on_a_pt_file_without_a_tensor_points_to_the_h5(
    tiny_model: Path, tmp_path: Path
) -> None:
    (tmp_path / "clam" / "pt_files").mkdir(parents=True)
    (tmp_path / "clam" / "h5_files").mkdir()
    (tmp_path / "clam" / "h5_files" / "slide1.h5").write_bytes(b"")
    path = tmp_path / "clam" / "pt_files" / "slide1.pt"
    torch.save({"features": torch.randn(3, 8)}, path)
    result = _run("predict", path, "--model", tiny_model, "--out", tmp_path / "pred")
    _assert_message(result, 1, "histoguard predict: error:", str(path), "h5_files")


def test_predict_refuses_a_pt_file_that_needs_pickle(tiny_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "slide1.pt"
    torch.save({"when": Path("not a tensor")}, path)  # a class weights_only=True refuses
    result = _run("predict", path, "--model", tiny_model, "--out", tmp_path / "pred")
    _assert_message(result, 1, str(path), "h5_files")


def test_predict_with_a_folder_that_is_no_model(tmp_path: Path) -> None:
    path = tmp_path / "f.pt"
    torch.save(torch.randn(3, 8), path)
    result = _run("predict", path, "--model", tmp_path / "nothing", "--out", tmp_path / "pred")
    _assert_message(result, 1, "nothing", "model.json")


# --------------------------------------------------------------------------- the mapper


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import histoguard.slide

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(histoguard.slide, "slide_info", interrupted)
    _assert_message(_run("info", tmp_path / "x.svs"), 130, "interrupted")


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import histoguard.slide

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(histoguard.slide, "slide_info", broken)
    result = _run("info", tmp_path / "x.svs")
    assert isinstance(result.exception, RuntimeError) and result.exit_code == 1


def test_an_unreadable_user_file_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    result = _run("compare", tmp_path / "random", tmp_path / "site")
    _assert_message(result, 1, "histoguard compare: error:", "metrics.json", "histoguard train")


def test_an_os_error_naming_a_file_is_a_data_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import histoguard.mil._compare

    def unreadable(run: Path) -> None:
        raise PermissionError(13, "Permission denied", str(run / "metrics.json"))

    monkeypatch.setattr(histoguard.mil._compare, "read_run_for_comparison", unreadable)
    result = _run("compare", tmp_path / "random", tmp_path / "site")
    _assert_message(result, 1, "histoguard compare: error:", "metrics.json: Permission denied",
                    "check the path")  # fmt: skip


def test_a_data_error_exits_1_with_its_message(tmp_path: Path) -> None:
    (tmp_path / "t.svs").write_text("hello")
    _assert_message(_run("info", tmp_path / "t.svs"), 1, "histoguard info: error:", "t.svs")


def test_an_unknown_backend_is_a_usage_error(tmp_path: Path) -> None:
    result = _run("tile", tmp_path / "x.svs", "--out", tmp_path / "o", "--backend", "nope")
    _assert_message(result, 2, "backend", "'nope'", "openslide")


# --------------------------------------------------------------------------- logging


def test_verbose_sets_the_histoguard_logger_to_info_and_logs_on_stderr() -> None:
    logger = logging.getLogger("histoguard")
    result = _run("-v", "encoders", "--json")
    assert result.exit_code == 0, result.output
    assert logger.isEnabledFor(logging.INFO) and not logger.isEnabledFor(logging.DEBUG)
    logging.getLogger("histoguard.test").info("visible with -v")
    quiet = _run("encoders", "--json")
    assert quiet.exit_code == 0 and json.loads(quiet.stdout)
    assert not logger.isEnabledFor(logging.INFO)
    assert len([h for h in logger.handlers if type(h).__name__ == "_StderrHandler"]) == 1


def test_info_log_lines_reach_stderr_only_with_verbose(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import histoguard.slide

    def chatty(*args: object, **kwargs: object) -> dict[str, object]:
        logging.getLogger("histoguard.slide").info("opening the slide")
        return {"path": "x"}

    monkeypatch.setattr(histoguard.slide, "slide_info", chatty)
    loud = _run("-v", "info", tmp_path / "x.svs", "--json")
    assert loud.exit_code == 0 and "histoguard: INFO: opening the slide" in loud.stderr
    assert "opening the slide" not in loud.stdout
    quiet = _run("info", tmp_path / "x.svs", "--json")
    assert quiet.exit_code == 0 and "opening the slide" not in quiet.output
