"""``POST /predict`` runs a saved model on a slide's feature file with mil's predict and returns
the decision with its uncertainty, as ``histoguard predict`` gives them; nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from histoguard.serve import create_app
from tests.serve.conftest import Served


def _tree(*roots: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for root in roots for p in sorted(root.rglob("*"))}


def test_predict_returns_what_predict_wrote(served: Served) -> None:
    before = _tree(served.slides, served.features, served.models)
    client = TestClient(create_app(served.config(predictions_dir=None)))
    assert client.get("/slides").json()["slides"][0]["prediction"] is None
    assert client.get("/slides/case1/layers").status_code == 404
    response = client.post("/predict", json={"slide": "case1", "model": "tiny"})
    assert response.status_code == 200, response.text
    body = response.json()
    written = json.loads((served.predictions / "predictions.json").read_text())["slides"][0]
    assert body["model"] == "tiny" and body["source"] == "predict"
    for key in ("decision", "reason", "predicted", "prediction_set"):
        assert body[key] == written[key], key
    assert body["ood_p_value"] == pytest.approx(written["ood_p_value"])
    assert body["ood_alpha"] == 0.05
    assert body["out_of_distribution"] == (written["ood_p_value"] <= 0.05)
    for name, value in written["probabilities"].items():
        assert body["probabilities"][name] == pytest.approx(value)
    assert body["uncertainty"]["entropy"] == pytest.approx(written["uncertainty"]["entropy"])
    # The prediction now shows, with each tile's class probability as an extra layer.
    assert set(body["layers"]) == {"attention", "probability", "uncertainty", "set_size",
                                   "abstention", "ood"}  # fmt: skip
    listed = client.get("/slides").json()["slides"][0]["prediction"]
    assert listed["decision"] == written["decision"]
    x, y = served.coords[0] + 10
    info = client.get(f"/slides/case1/tile?x={x}&y={y}").json()
    assert sum(info["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert client.get("/slides/case1/layers/probability_files/8/0_0.png").status_code == 200
    # The map is the one predict would write: the same tiles, the same attention.
    geojson = client.get("/slides/case1/geojson").json()
    saved = json.loads((served.predictions / "case1.attention.geojson").read_text())
    ours = [f["properties"]["measurements"]["attention"] for f in geojson["features"]]
    theirs = [f["properties"]["measurements"]["attention"] for f in saved["features"]]
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert _tree(served.slides, served.features, served.models) == before


def test_predict_needs_models_and_features(served: Served) -> None:
    client = TestClient(create_app(served.config(models_dir=None, predictions_dir=None)))
    response = client.post("/predict", json={"slide": "case1", "model": "tiny"})
    assert response.status_code == 409 and "--models" in response.json()["error"]
