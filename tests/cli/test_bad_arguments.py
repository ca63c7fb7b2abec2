"""Bad command-line arguments end in a message and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from histoguard.cli import app


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


@pytest.mark.parametrize(
    ("options", "fix"),
    [
        (["--mpp", "inf"], "1000"),
        (["--mpp", "nan"], "1000"),
        (["--mpp", "1e300"], "1000"),
        (["--mpp-override", "inf"], "1000"),
        (["--tile-size", "1"], "8"),
        (["--tile-size", "100000"], "8192"),
        (["--tile-size", "2147483648"], "8192"),
        (["--threads", "1000"], "64"),
        (["--thumbnail-size", "1000000"], "16384"),
    ],
)
def test_tile_numeric_bounds(tmp_path: Path, options: list[str], fix: str) -> None:
    code, output = _run(["tile", str(tmp_path), "--out", str(tmp_path / "o"), *options])
    assert code == 2
    assert "Traceback" not in output
    assert fix in output


@pytest.mark.parametrize(
    ("options", "fix"),
    [
        (["--workers", "-1"], "greater than or equal to 1"),
        (["--workers", "0"], "greater than or equal to 1"),
        (["--readers", "1000"], "64"),
        (["--device", "bogus"], "use cpu"),
    ],
)
def test_extract_arguments(tmp_path: Path, options: list[str], fix: str) -> None:
    code, output = _run(
        ["extract", str(tmp_path), "--encoder", "x", "--out", str(tmp_path / "o"), *options]
    )
    assert code != 0
    assert "Traceback" not in output
    assert fix in output


def test_extract_cuda_on_cpu_torch_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is available")
    code, output = _run(
        ["extract", str(tmp_path), "--encoder", "x", "--out", str(tmp_path), "--device", "cuda"]
    )
    assert code == 2
    assert "--device cpu" in output


@pytest.mark.parametrize(
    ("options", "fix"),
    [(["--lr", "nan"], "10"), (["--max-instances", "0"], "1"), (["--n-boot", "0"], "1")],
)
def test_train_numeric_bounds(tmp_path: Path, options: list[str], fix: str) -> None:
    code, output = _run(["train", *options])
    assert code == 2
    assert "Traceback" not in output
    assert fix in output


def test_out_that_is_a_file_or_below_one(tmp_path: Path) -> None:
    afile = tmp_path / "f"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        code, output = _run(["tile", str(tmp_path), "--out", str(out)])
        assert code == 2
        assert "Traceback" not in output
        assert "choose" in output


def _tiny_slide(tmp_path: Path) -> Path:
    import numpy as np
    import tifffile

    path = tmp_path / "s.tif"
    tifffile.imwrite(path, np.full((64, 64, 3), 200, np.uint8))
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["info"],
        ["tile", "--out", "{out}"],
        ["extract", "--encoder", "hg-handcrafted", "--out", "{out}", "-q"],
    ],
)
def test_unknown_backend_lists_the_known_ones(tmp_path: Path, command: list[str]) -> None:
    slide = _tiny_slide(tmp_path)
    args = [a.replace("{out}", str(tmp_path / "o")) for a in command]
    code, output = _run([args[0], str(slide), *args[1:], "--backend", "nosuch"])
    assert code == 2, output
    assert "Traceback" not in output
    assert "unknown slide back-end 'nosuch'" in output
    assert "openslide" in output and "tiffslide" in output and "image" in output
    assert not (tmp_path / "o" / "s.h5").exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:  # a port the system just handed out, now closed again
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("address", "fix"),
    [
        ("tcp://127.0.0.1:{port}", "dask scheduler --port"),
        ("127.0.0.1:{port}", "leave out --scheduler"),
        ("tcp://[bad", "tcp://HOST:PORT"),
    ],
)
def test_unreachable_scheduler_is_refused_up_front(tmp_path: Path, address: str, fix: str) -> None:
    import time

    slide = _tiny_slide(tmp_path)
    out = tmp_path / "o"
    address = address.replace("{port}", str(_closed_port()))
    pytest.importorskip("distributed")
    import histoguard.features._dask  # noqa: F401 - imported first: time the check, not imports

    started = time.perf_counter()
    code, output = _run(
        ["extract", str(slide), "--encoder", "hg-handcrafted", "--out", str(out), "-q",
         "--scheduler", address]
    )  # fmt: skip
    assert time.perf_counter() - started < 10  # Dask alone would wait 30 s
    assert code == 2, output
    assert "Traceback" not in output
    assert fix in output
    assert not out.exists()  # refused before anything is tiled or written


def test_a_listening_scheduler_address_passes_the_check() -> None:
    import socket

    pytest.importorskip("distributed")
    from histoguard.errors import ConfigError
    from histoguard.features._dask import check_scheduler

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_scheduler(f"tcp://127.0.0.1:{port}", timeout_s=2)
        check_scheduler(f"127.0.0.1:{port}", timeout_s=2)
    check_scheduler("inproc://somewhere")  # not a TCP transport: left to Dask
    with pytest.raises(ConfigError, match="cannot reach"):
        check_scheduler(f"tcp://127.0.0.1:{port}", timeout_s=2)


@pytest.mark.parametrize(
    ("reference", "method", "fix"),
    [
        ("missing.png", "macenko", "no such image file; pass the path of an H&E image"),
        ("garbage.png", "reinhard", "cannot decode the image"),
        ("white.png", "macenko", "use an H&E image with plenty of tissue"),
        ("garbage.png", "nosuch", "Known: macenko"),
    ],
)
def test_bad_stain_settings_are_refused_before_any_slide(
    tmp_path: Path, reference: str, method: str, fix: str
) -> None:
    import numpy as np
    from PIL import Image

    (tmp_path / "garbage.png").write_text("not an image")
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(tmp_path / "white.png")
    slide, out = _tiny_slide(tmp_path), tmp_path / "o"
    code, output = _run(
        ["extract", str(slide), "--encoder", "hg-handcrafted", "--out", str(out), "-q",
         "--mpp-override", "0.5", "--stain-normalize", method,
         "--stain-reference", str(tmp_path / reference)]
    )  # fmt: skip
    assert code == 2, output
    assert "Traceback" not in output
    assert "FAILED" not in output and "unexpected" not in output  # not per slide
    assert fix in output
    assert not out.exists()
