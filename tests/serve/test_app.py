"""Every endpoint of the slide server through Starlette's TestClient, on a generated slide with
known tissue and a prediction made by ``histoguard predict``."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from histoguard.report import LAYER_NAMES
from histoguard.serve import DeepZoomGeometry, create_app
from histoguard.slide import open_slide
from tests.serve.conftest import TILE0, TISSUE, Served


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    with TestClient(create_app(served.config())) as test_client:
        yield test_client


def _image(response: object) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)))  # type: ignore[attr-defined]


def test_slide_list_has_the_decision_and_flags(client: TestClient, served: Served) -> None:
    body = client.get("/slides").json()
    assert body["models"] == ["tiny"]
    (row,) = body["slides"]
    assert (row["id"], row["width"], row["height"]) == ("case1", 3072, 2560)
    written = json.loads((served.predictions / "predictions.json").read_text())["slides"][0]
    prediction = row["prediction"]
    assert prediction["decision"] == written["decision"]
    assert prediction["prediction_set"] == written["prediction_set"]
    assert prediction["ood_p_value"] == pytest.approx(written["ood_p_value"])
    if written["decision"] == "review":
        assert f"review: {written['reason']}" in prediction["flags"]
    # predict's tiles.csv gives each tile's class probabilities: the probability layer too.
    assert set(prediction["layers"]) == {
        "attention",
        "probability",
        "uncertainty",
        "set_size",
        "abstention",
        "ood",
    }


def test_dzi_describes_the_slide(client: TestClient) -> None:
    response = client.get("/slides/case1.dzi")
    assert response.status_code == 200
    image = ET.fromstring(response.text)
    size = image[0]
    assert (size.get("Width"), size.get("Height")) == ("3072", "2560")
    assert (image.get("TileSize"), image.get("Overlap"), image.get("Format")) == (
        "254",
        "1",
        "jpeg",
    )


def test_full_resolution_tile_equals_the_slide_pixels(client: TestClient, served: Served) -> None:
    geometry = DeepZoomGeometry(3072, 2560, 254, 1)
    level = geometry.max_level
    x, y, w, h = geometry.tile_box(level, 4, 4)
    tile = _image(client.get(f"/slides/case1_files/{level}/4_4.jpeg"))
    assert tile.shape == (h, w, 3)
    with open_slide(served.slides / "case1.tiff") as slide:
        truth = slide.read_region(x, y, w, h, 0).astype(float)
        shifted = slide.read_region(x + 3, y, w, h, 0).astype(float)
    error = np.abs(tile.astype(float) - truth).mean()  # JPEG twice (the slide's, the tile's)
    assert error < 10 and error < 0.6 * np.abs(tile.astype(float) - shifted).mean()


def test_edge_tiles_are_cropped_and_coarse_levels_shrink(client: TestClient) -> None:
    geometry = DeepZoomGeometry(3072, 2560, 254, 1)
    level = geometry.max_level
    cols, rows = geometry.tile_counts(level)
    edge = _image(client.get(f"/slides/case1_files/{level}/{cols - 1}_{rows - 1}.webp"))
    assert edge.shape[:2] == (2560 - (rows - 1) * 254 + 1, 3072 - (cols - 1) * 254 + 1)
    whole = _image(client.get("/slides/case1_files/8/0_0.jpeg"))  # 2^(12-8) = 16x smaller
    assert whole.shape[:2] == (160, 192)
    # The tissue rectangle is darker than the glass around it, in the right place.
    inside = whole[
        TISSUE.y0 // 16 + 4 : TISSUE.y1 // 16 - 4, TISSUE.x0 // 16 + 4 : TISSUE.x1 // 16 - 4
    ]
    assert inside.mean() < whole[:20, :20].mean() - 20


def test_layer_tiles_paint_the_scored_tiles_only(client: TestClient) -> None:
    legends = client.get("/slides/case1/layers").json()["layers"]
    assert [layer["name"] for layer in legends] == ["attention", "probability", "uncertainty",
                                                    "set_size", "abstention", "ood"]  # fmt: skip
    for legend in legends:
        assert len(legend["colors"]) == 16 and legend["title"] and len(legend["captions"]) == 3
        dzi = client.get(f"/slides/case1/layers/{legend['name']}.dzi")
        assert 'Format="png"' in dzi.text
        rgba = _image(client.get(f"/slides/case1/layers/{legend['name']}_files/8/0_0.png"))
        assert rgba.shape == (160, 192, 4)
        painted = rgba[..., 3] > 0
        expected = np.zeros((160, 192), bool)
        expected[TISSUE.y0 // 16 : TISSUE.y1 // 16, TISSUE.x0 // 16 : TISSUE.x1 // 16] = True
        assert (painted == expected).mean() > 0.99, legend["name"]


def test_attention_layer_is_red_where_attention_is_highest(client: TestClient) -> None:
    top = client.get("/slides/case1/top?k=1").json()["tiles"][0]
    assert top["attention_rank"] == 1
    rgba = _image(client.get("/slides/case1/layers/attention_files/8/0_0.png")).astype(int)
    cx, cy = int(top["x"] + TILE0 / 2) // 16, int(top["y"] + TILE0 / 2) // 16
    red, _, blue, _ = rgba[cy, cx]
    assert red > 100 and red > blue  # turbo's top end is dark red


def test_click_gives_the_tile_scores(client: TestClient, served: Served) -> None:
    x, y = served.coords[5] + TILE0 // 2
    info = client.get(f"/slides/case1/tile?x={x}&y={y}").json()
    assert info["index"] == 5 and (info["x"], info["y"]) == tuple(map(float, served.coords[5]))
    assert 1 <= info["attention_rank"] <= len(served.coords)
    assert 0 <= info["entropy_nats"] <= np.log(2) + 1e-6
    # The tile's class probabilities are predict's own (tiles.csv, same tile).
    rows = list(csv.DictReader((served.predictions / "tiles.csv").open()))
    assert info["probabilities"] == {
        c: pytest.approx(float(rows[5][f"tile_p_{c}"]), abs=1e-6) for c in info["probabilities"]
    }
    assert client.get("/slides/case1/tile?x=10&y=10").status_code == 404  # glass, no tile


def test_top_gallery_and_tile_pictures(client: TestClient) -> None:
    tiles = client.get("/slides/case1/top?k=4").json()["tiles"]
    assert [t["attention_rank"] for t in tiles] == [1, 2, 3, 4]
    assert tiles[0]["attention"] >= tiles[-1]["attention"]
    picture = _image(client.get(f"/slides/case1/tiles/{tiles[0]['index']}.jpeg"))
    assert picture.shape == (160, 160, 3)


def test_geojson_is_the_qupath_file(client: TestClient, served: Served) -> None:
    response = client.get("/slides/case1/geojson")
    assert response.status_code == 200
    assert response.content == (served.predictions / "case1.attention.geojson").read_bytes()


def test_viewer_page_and_vendored_openseadragon(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "openseadragon.min.js" in page.text
    script = client.get("/static/openseadragon/openseadragon.min.js")
    assert script.status_code == 200 and "OpenSeadragon" in script.text[:500]
    assert client.get("/static/openseadragon/images/zoomin_rest.png").status_code == 200
    assert "Redistribution" in client.get("/static/openseadragon/LICENSE.txt").text


def test_only_reads(client: TestClient) -> None:
    for method in ("put", "delete", "patch"):
        assert getattr(client, method)("/slides/case1.dzi").status_code == 405
    assert client.post("/slides/case1.dzi").status_code == 405


def test_all_layer_names_have_styles() -> None:
    from histoguard.report import layer_style

    for name in LAYER_NAMES:
        style = layer_style(name, ["normal", "tumour"], "tumour")
        assert style.name == name and style.legend()["colors"]
