"""GeoJSON export for QuPath: tissue annotations and tiles with measurements."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from histoguard.slide import Polygon, TissueMask, tile_geojson, tissue_geojson


def _ring_area(ring: list[list[float]]) -> float:
    x, y = np.array(ring).T
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


@pytest.fixture
def polygons() -> list[Polygon]:
    mask = np.zeros((30, 40), dtype=bool)
    mask[2:20, 3:25] = True
    mask[8:14, 10:18] = False  # a hole
    mask[24:29, 30:38] = True  # a second part
    return TissueMask(mask=mask, downsample=3.7).polygons()


def test_tissue_geojson_is_a_feature_collection_that_survives_json(
    polygons: list[Polygon],
) -> None:
    doc = tissue_geojson(polygons)
    assert json.loads(json.dumps(doc)) == doc
    assert doc["type"] == "FeatureCollection"
    assert len(doc["features"]) == len(polygons) == 2
    for feature, poly in zip(doc["features"], polygons, strict=True):
        assert feature["type"] == "Feature"
        geometry = feature["geometry"]
        assert geometry["type"] == "Polygon"
        assert len(geometry["coordinates"]) == 1 + len(poly.holes)


def test_rings_are_closed_rounded_and_oriented(polygons: list[Polygon]) -> None:
    doc = tissue_geojson(polygons)
    holes = 0
    for feature in doc["features"]:
        exterior, *inner = feature["geometry"]["coordinates"]
        for ring in [exterior, *inner]:
            assert len(ring) >= 4 and ring[0] == ring[-1]
            for x, y in ring:
                assert isinstance(x, float) and isinstance(y, float)
                assert round(x, 2) == x and round(y, 2) == y
        assert _ring_area(exterior) > 0
        assert all(_ring_area(ring) < 0 for ring in inner)
        holes += len(inner)
    assert holes == 1


def test_tissue_geojson_carries_qupath_properties(polygons: list[Polygon]) -> None:
    doc = tissue_geojson(polygons, name="Tumour", color=(200, 0, 10))
    for feature in doc["features"]:
        assert feature["properties"] == {
            "objectType": "annotation",
            "classification": {"name": "Tumour", "color": [200, 0, 10]},
            "isLocked": False,
        }
    default = tissue_geojson(polygons)["features"][0]["properties"]["classification"]
    assert default == {"name": "Tissue", "color": [0, 160, 0]}


def test_no_polygons_give_an_empty_collection() -> None:
    assert tissue_geojson([]) == {"type": "FeatureCollection", "features": []}


def test_tile_geojson_squares_and_measurements() -> None:
    coords = np.array([[0, 0], [448, 0], [896, 448]], dtype=np.int64)
    scores = np.array([0.25, 0.5, 1.0], dtype=np.float32)
    doc: dict[str, Any] = tile_geojson(coords, 448.0, {"tissue": scores, "label": [0, 1, 1]})
    assert json.loads(json.dumps(doc)) == doc
    assert [f["properties"]["objectType"] for f in doc["features"]] == ["tile"] * 3
    first, _, last = doc["features"]
    assert first["geometry"]["coordinates"] == [
        [[0.0, 0.0], [448.0, 0.0], [448.0, 448.0], [0.0, 448.0], [0.0, 0.0]]
    ]
    ring = last["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] == [896.0, 448.0] and ring[2] == [1344.0, 896.0]
    assert _ring_area(ring) > 0
    assert last["properties"]["measurements"] == {"tissue": 1.0, "label": 1.0}
    assert all(isinstance(v, float) for v in first["properties"]["measurements"].values())


def test_tile_geojson_writes_missing_values_as_null() -> None:
    doc = tile_geojson(np.array([[0, 0], [5, 0]]), 5.0, {"score": np.array([np.nan, 2.0])})
    assert [f["properties"]["measurements"]["score"] for f in doc["features"]] == [None, 2.0]
    json.dumps(doc, allow_nan=False)  # strict JSON


def test_tile_geojson_without_values_or_tiles() -> None:
    doc = tile_geojson(np.array([[10, 20]]), 5.0)
    assert doc["features"][0]["properties"] == {"objectType": "tile", "measurements": {}}
    assert tile_geojson(np.zeros((0, 2), dtype=np.int64), 5.0)["features"] == []


@pytest.mark.parametrize(
    ("coords", "size0", "values"),
    [
        (np.zeros((2, 3)), 5.0, None),
        (np.zeros((2, 2)), 0.0, None),
        (np.zeros((2, 2)), 5.0, {"score": np.zeros(3)}),
    ],
)
def test_tile_geojson_rejects_bad_arguments(
    coords: np.ndarray, size0: float, values: dict[str, np.ndarray] | None
) -> None:
    with pytest.raises(ValueError):
        tile_geojson(coords, size0, values)
