"""The one-line titles above a prediction's maps: what was decided, and on what evidence.

Pure functions of a :class:`~histoguard.mil.SlidePrediction`, kept apart from the drawing; the
decision's wording is the prediction's own (:meth:`~histoguard.mil.SlidePrediction.summary`),
so the console and the maps say the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from histoguard.mil import SlidePrediction


def prediction_title(prediction: SlidePrediction) -> str:
    """The title of a prediction's attention map: ``"<slide>: "`` and the decision with its
    evidence, worded as :meth:`~histoguard.mil.SlidePrediction.summary` (brief), e.g.
    ``"s1: tumour (p = 0.97; set {tumour})"`` or
    ``"s1: review: out of distribution (gate p = 0.003)"``."""
    return f"{prediction.slide}: {prediction.summary(brief=True)}"


def uncertainty_title(prediction: SlidePrediction) -> str:
    """The title of a prediction's tile-uncertainty map: ``"<slide>: tile uncertainty"``, with
    the slide's predictive entropy when known (``"(slide entropy 0.41 nats)"``)."""
    title = f"{prediction.slide}: tile uncertainty"
    entropy = prediction.uncertainty.get("entropy")
    return title if entropy is None else f"{title} (slide entropy {entropy:.2f} nats)"
