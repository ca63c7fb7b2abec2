"""Only files under the configured roots are served: traversal, symbolic links out of a root,
and absurd levels, tiles, coordinates or bodies are answered 4xx, never 5xx."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from histoguard.errors import ConfigError
from histoguard.serve import ServeConfig, create_app
from tests.serve.conftest import Served

BAD_URLS = (
    "/slides/../../etc/passwd",
    "/slides/..%2f..%2fetc%2fpasswd.dzi",
    "/slides/%2e%2e/%2e%2e/etc/passwd",
    "/slides/case1/../../../etc/passwd",
    "/slides/%2Fetc%2Fpasswd.dzi",
    "/slides/case1%00.dzi",
    "/slides/nope.dzi",
    "/slides/case1_files/13/0_0.jpeg",  # past max_level (12)
    "/slides/case1_files/99/0_0.jpeg",
    "/slides/case1_files/12/13_0.jpeg",  # 13 columns: 0..12
    "/slides/case1_files/12/0_11.jpeg",
    "/slides/case1_files/12/99999999_0.jpeg",
    "/slides/case1_files/12/-1_0.jpeg",
    "/slides/case1_files/12/0_0.png",
    "/slides/case1_files/12/0_0.jpeg.exe",
    "/slides/case1_files/1e9/0_0.jpeg",
    "/slides/case1_files/12/0_0",
    "/slides/case1/layers/nothing.dzi",
    "/slides/case1/layers/nosuch.dzi",  # no such layer
    "/slides/case1/layers/attention_files/13/0_0.png",
    "/slides/case1/layers/attention_files/0/5_5.png",
    "/slides/case1/tile?x=-1&y=5",
    "/slides/case1/tile?x=nan&y=5",
    "/slides/case1/tile?x=inf&y=5",
    "/slides/case1/tile?x=1e30&y=5",
    "/slides/case1/tile?x=abc&y=5",
    "/slides/case1/tile",
    "/slides/case1/top?k=0",
    "/slides/case1/top?k=100000",
    "/slides/case1/tiles/9999.jpeg",
    "/slides/case1/tiles/-1.jpeg",
    "/static/../serve/_app.py",
    "/static/%2e%2e/_app.py",
    "/static/openseadragon/../../_config.py",
    "/etc/passwd",
)


@pytest.fixture(scope="module")
def client(served: Served) -> TestClient:
    return TestClient(create_app(served.config()), raise_server_exceptions=False)


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_requests_get_4xx(client: TestClient, url: str) -> None:
    response = client.get(url)
    assert 400 <= response.status_code < 500, (url, response.status_code, response.text[:200])


@pytest.mark.parametrize(
    "body",
    [
        b"", b"not json", b"[]", b'{"slide": "case1"}', b'{"slide": 1, "model": "tiny"}',
        b'{"slide": "case1", "model": "../models/tiny"}', b'{"slide": "case1", "model": ".."}',
        b'{"slide": "case1", "model": "/etc"}', b'{"slide": "nope", "model": "tiny"}',
        b'{"slide": "case1", "model": "missing"}', b'{"slide": "../case1", "model": "tiny"}',
        b'{"slide": "case1", "model": "' + b"a" * 20000 + b'"}',
    ],
)  # fmt: skip
def test_bad_predict_bodies_get_4xx(client: TestClient, body: bytes) -> None:
    response = client.post("/predict", content=body)
    assert 400 <= response.status_code < 500, (body[:60], response.status_code, response.text)


def test_symlinks_out_of_a_root_are_not_served(served: Served, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(served.slides / "case1.tiff", outside / "secret.tiff")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(served.slides / "case1.tiff", root / "mine.tiff")
    (root / "linked.tiff").symlink_to(outside / "secret.tiff")
    (root / "loop.tiff").symlink_to(root / "loop.tiff")
    client = TestClient(create_app(ServeConfig(slide_dirs=(root,))))
    ids = [row["id"] for row in client.get("/slides").json()["slides"]]
    assert ids == ["mine"]
    for name in ("linked", "secret", "loop"):
        assert client.get(f"/slides/{name}.dzi").status_code == 404


def test_a_feature_file_linked_out_of_its_root_is_refused(served: Served, tmp_path: Path) -> None:
    features = tmp_path / "features"
    features.mkdir()
    (features / "case1.h5").symlink_to(served.features / "case1.h5")  # another folder
    client = TestClient(create_app(served.config(features_dir=features, predictions_dir=None)))
    response = client.post("/predict", json={"slide": "case1", "model": "tiny"})
    assert response.status_code == 403


def test_a_model_linked_out_of_its_root_is_refused(served: Served, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny").symlink_to(served.models / "tiny")
    client = TestClient(create_app(served.config(models_dir=models, predictions_dir=None)))
    response = client.post("/predict", json={"slide": "case1", "model": "tiny"})
    assert response.status_code == 403


def test_an_unreadable_slide_is_4xx(served: Served, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    root.mkdir()
    (root / "bad.svs").write_bytes(b"not a slide at all")
    client = TestClient(create_app(ServeConfig(slide_dirs=(root,))), raise_server_exceptions=False)
    (row,) = client.get("/slides").json()["slides"]
    assert row["id"] == "bad" and row["error"]
    assert client.get("/slides/bad.dzi").status_code == 422
    assert client.get("/slides/bad_files/0/0_0.jpeg").status_code == 422


def test_configuration_mistakes_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        create_app(ServeConfig(slide_dirs=(tmp_path / "missing",)))
    with pytest.raises(ConfigError, match="predictions"):
        create_app(ServeConfig(slide_dirs=(tmp_path,), predictions_dir=tmp_path))
    with pytest.raises(ConfigError, match="tile_size"):
        ServeConfig(slide_dirs=(tmp_path,), tile_size=3)
    with pytest.raises(ConfigError, match="at least one"):
        ServeConfig(slide_dirs=())
