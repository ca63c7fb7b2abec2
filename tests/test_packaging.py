"""The package metadata a user sees on PyPI: licence, classifiers, URLs, README links."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        document: dict[str, Any] = tomllib.load(f)
    return document


def test_licence_is_an_spdx_expression_with_its_file(project: dict[str, Any]) -> None:
    metadata = project["project"]
    assert metadata["license"] == "Apache-2.0"  # PEP 639: a string, not the deprecated table
    assert metadata["license-files"] == ["LICENSE"]
    # PEP 639 forbids licence classifiers next to an SPDX expression.
    assert not [c for c in metadata["classifiers"] if c.startswith("License ::")]
    requires = project["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(7[7-9]|[89]\d|\d{3,})(\.\d+)*", r) for r in requires)


def test_licence_file_is_the_apache_2_text() -> None:
    text = (REPO_ROOT / "LICENSE").read_text()
    head = text[:300]
    assert "Apache License" in head
    assert "Version 2.0, January 2004" in head
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "Copyright 2026 The histoguard authors" in text
    assert "[yyyy]" not in text


def test_classifiers_and_urls(project: dict[str, Any]) -> None:
    metadata = project["project"]
    classifiers = set(metadata["classifiers"])
    for expected in (
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Intended Audience :: Healthcare Industry",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Image Recognition",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Typing :: Typed",
    ):
        assert expected in classifiers
    urls = metadata["urls"]
    assert set(urls) >= {"Homepage", "Documentation", "Repository", "Issues"}
    assert all(u.startswith("https://github.com/histoguard/histoguard") for u in urls.values())


def markdown_links(text: str) -> list[str]:
    """Targets of inline Markdown links and images, ``[text](target)``."""
    return re.findall(r"\]\(\s*<?([^)\s>]+)", text)


def test_markdown_links_are_found() -> None:
    text = "[a](docs/a.md) ![b](https://x.org/b.png) [c](#set-up)"
    assert markdown_links(text) == ["docs/a.md", "https://x.org/b.png", "#set-up"]


def test_readme_links_work_on_pypi() -> None:
    # PyPI renders the README away from the repository: relative links there lead nowhere.
    links = markdown_links((REPO_ROOT / "README.md").read_text())
    assert links
    relative = [link for link in links if not re.match(r"https?://|#", link)]
    assert relative == []
