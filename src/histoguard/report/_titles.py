"""The one-line titles above a prediction's maps: what was decided, and on what evidence.

Pure functions of a :class:`~histoguard.mil.SlidePrediction`, kept apart from the drawing so
the wording can be read and tested on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from histoguard.mil import SlidePrediction

#: How each ``SlidePrediction.reason`` reads in a title.
_REASON_TEXT = {
    "out-of-distribution": "out of distribution",
    "batch drift": "batch drift",
    "uncertain": "uncertain",
}


def _set_text(prediction_set: tuple[str, ...]) -> str:
    return f"set {{{', '.join(prediction_set)}}}" if prediction_set else "empty set"


def _review_text(prediction: SlidePrediction) -> str:
    """``"review"``, then why and the evidence: the gate's p-value or the prediction set."""
    reason = prediction.reason
    if not reason:
        return "review"
    text = f"review: {_REASON_TEXT.get(reason, reason)}"
    if reason == "out-of-distribution" and prediction.ood_p_value is not None:
        return f"{text} (p = {prediction.ood_p_value:.2g})"
    if reason == "uncertain":
        return f"{text} ({_set_text(prediction.prediction_set)})"
    return text


def prediction_title(prediction: SlidePrediction) -> str:
    """The title of a prediction's attention map.

    Without a decision (``decision == ""``, a model without the trust readings):
    ``"<slide>: predicted <class> (p = 0.93)"``. With one:

    - a class: ``"<slide>: tumour (p = 0.97; set {tumour})"``, the class's (calibrated)
      probability and the conformal set when the model has one;
    - ``"review"``: ``"<slide>: review: out of distribution (p = 0.003)"`` (the gate's
      p-value), ``"<slide>: review: uncertain (set {normal, tumour})"`` (or ``empty set``),
      ``"<slide>: review: batch drift"``.
    """
    slide, decision = prediction.slide, prediction.decision
    if not decision:
        probability = prediction.probabilities[prediction.predicted]
        return f"{slide}: predicted {prediction.predicted} (p = {probability:.2f})"
    if decision == "review":
        return f"{slide}: {_review_text(prediction)}"
    evidence = []
    if decision in prediction.probabilities:
        evidence.append(f"p = {prediction.probabilities[decision]:.2f}")
    if prediction.prediction_set:
        evidence.append(_set_text(prediction.prediction_set))
    return f"{slide}: {decision} ({'; '.join(evidence)})" if evidence else f"{slide}: {decision}"


def uncertainty_title(prediction: SlidePrediction) -> str:
    """The title of a prediction's tile-uncertainty map: ``"<slide>: tile uncertainty"``, with
    the slide's predictive entropy when known (``"(slide entropy 0.41 nats)"``)."""
    title = f"{prediction.slide}: tile uncertainty"
    entropy = prediction.uncertainty.get("entropy")
    return title if entropy is None else f"{title} (slide entropy {entropy:.2f} nats)"
