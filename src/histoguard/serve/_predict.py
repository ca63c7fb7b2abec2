"""``POST /predict``: one slide through a saved model with :func:`histoguard.mil.predict`.

The model is a sub-folder of ``--models`` named in the request, the features the slide's file
``<slide stem>.h5`` under ``--features``; both are resolved under their roots. ``predict``'s
tables go to a temporary folder that is deleted afterwards: the served folders are never
written.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

from histoguard.core._names import feature_file
from histoguard.errors import RequestError
from histoguard.serve._config import inside
from histoguard.serve._scores import SlideScores, from_prediction

if TYPE_CHECKING:
    from histoguard.serve._app import ServerState


def predict_slide(state: ServerState, slide_id: str, model: str) -> SlideScores:
    """Run model ``model`` on the slide's feature file and return what the viewer shows.

    Args:
        state: the server (its roots and catalogue).
        slide_id: a served slide.
        model: the name of a sub-folder of the models root (a ``train`` output).

    Returns:
        The slide's scores: decision, conformal set, abstention and OOD verdict as
        :func:`histoguard.mil.predict` gives them, and per tile attention, entropy and class
        probabilities.

    Raises:
        RequestError: 409 when the server has no models or features folder, 404 for an unknown
            model or a slide without a feature file, 403 for one outside its root.
        ModelMismatchError: the features do not fit the model.
        OutputError: the feature file cannot be read.
    """
    from histoguard.mil import load_trust, predict

    if state.models_root is None or state.features_root is None:
        raise RequestError(409, "start the server with --models and --features to predict")
    slide_path = state.pool.path(slide_id)
    model_dir = inside(state.models_root, state.models_root / model)
    if not model_dir.is_dir():
        raise RequestError(404, f"no model {model!r}")
    features = inside(state.features_root, feature_file(state.features_root, slide_path.stem))
    with tempfile.TemporaryDirectory(prefix="histoguard-serve-") as out:
        try:
            (result,) = predict(model_dir, [features], out, slides=[slide_path])
        except FileNotFoundError as error:
            raise RequestError(404, f"{model}: not a trained model ({error})") from None
    trust = load_trust(model_dir)
    labels = list(result.raw_probabilities or result.probabilities)
    ood_alpha = None if trust is None else trust.settings.ood_alpha
    return from_prediction(slide_id, result, labels, ood_alpha)
