"""Expanding inputs into slides: folders named like slides are reported, repeats processed once."""

from __future__ import annotations

from pathlib import Path

from histoguard.slide import TilingConfig, tile_slides
from histoguard.slide._inputs import find_slides


def test_a_folder_named_like_a_slide_is_kept_and_reported(tmp_path: Path) -> None:
    (tmp_path / "x.svs").mkdir()
    (tmp_path / "x.svs" / "inside.svs").write_bytes(b"")
    assert find_slides([tmp_path / "x.svs"]) == [tmp_path / "x.svs"]
    assert find_slides([tmp_path]) == [tmp_path / "x.svs"]
    report = tile_slides([tmp_path], tmp_path / "out", TilingConfig())
    assert [r.status for r in report.results] == ["failed"]
    assert "is a directory" in report.results[0].message


def test_a_slide_given_twice_is_processed_once(tmp_path: Path) -> None:
    slide = tmp_path / "a.svs"
    slide.write_bytes(b"x")
    link = tmp_path / "sub"
    link.mkdir()
    (link / "same.svs").symlink_to(slide)
    found = find_slides([slide, tmp_path, str(slide), link / "same.svs"])
    assert found == [slide]
