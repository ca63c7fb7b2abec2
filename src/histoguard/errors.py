"""Every error histoguard raises on purpose.

    HistoguardError
    ├── SlideError                  a slide file cannot be used; `.path` names it
    │   ├── SlideNotFoundError      no file at that path
    │   ├── UnsupportedFormatError  no back-end can read this kind of file
    │   ├── CorruptSlideError       the file claims a format but its content is broken
    │   ├── SlideTooLargeError      the dimensions exceed the configured pixel limit
    │   ├── MissingMppError         no usable microns-per-pixel in the metadata
    │   └── RegionReadError         one region failed to decode (the rest may be fine)
    ├── NotNative                   internal: a region the direct TIFF-tile path does not
    │                               serve; the back-end reads it instead (never reaches a user)
    ├── NoSlidesError               the inputs of a batch hold no slide at all
    ├── TilingError                 the tiling request cannot be met for this slide
    ├── OutputError                 an output file is incomplete or not what was written
    ├── EncoderError                an encoder cannot be built or loaded
    │   ├── UnknownEncoderError     no encoder registered under that name
    │   └── WeightsError            a weights file is missing, corrupt or does not fit
    │       └── UnsafeWeightsError  a pickled checkpoint, refused without explicit consent
    ├── AuditDataError              a table or dataset given to the robustness audit is unusable
    ├── ImageError (ValueError)     an image (tile, reference) cannot be decoded or fitted; `.path`
    │   └── ImageTooLargeError      more pixels than the explicit limit
    ├── CohortError                 a cohort table, or a split drawn from it, is unusable
    ├── ModelMismatchError          features do not fit a trained model (encoder, scale, size)
    ├── ModelFileError              a saved model folder is missing, malformed or not finite
    ├── RequestError                a request to the slide server asks for what does not exist
    │                               or is not allowed; `.status` is its HTTP status (4xx)
    ├── ConfigError (ValueError)    a configuration value or file is invalid
    │   ├── UnknownCenterError      features of a center the harmoniser was not fitted on
    │   └── TooFewSlidesError       too few slides to estimate a new center's batch effect
    ├── ConformanceError (AssertionError)  an encoder or MIL model breaks its contract
    └── UnknownNameError (KeyError) no registry entry under that name; lists the known ones
        └── UnknownEncoderError     ... in the encoder registry (also an EncoderError)

Messages always name the file and say what to do about it. The command line maps usage and
configuration errors (``ConfigError``, ``UnknownNameError``) to exit code 2 and every other
``HistoguardError`` to exit code 1, printing the message without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path


class HistoguardError(Exception):
    """Base class of all errors raised by histoguard."""


class SlideError(HistoguardError):
    """A slide file cannot be used.

    Args:
        path: the slide file.
        problem: what is wrong, in one clause.
        fix: what the user can do about it.
    """

    def __init__(self, path: str | Path, problem: str, fix: str = "") -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        message = f"{self.path}: {problem}"
        if fix:
            message += f". {fix}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[SlideError], tuple[Path, str, str]]:
        # Keep the exception picklable so it can cross process boundaries intact.
        return (type(self), (self.path, self.problem, self.fix))


class SlideNotFoundError(SlideError):
    """No file exists at the given path."""


class UnsupportedFormatError(SlideError):
    """The file is not a format any installed back-end can read."""


class CorruptSlideError(SlideError):
    """The file claims a known format but its content is broken (empty, truncated, looping)."""


class SlideTooLargeError(SlideError):
    """The slide's declared dimensions exceed the configured pixel limit."""


class MissingMppError(SlideError):
    """The slide has no usable microns-per-pixel in its metadata and none was given."""


class RegionReadError(SlideError):
    """A region of an otherwise readable slide failed to decode."""


class NotNative(HistoguardError):
    """A region (or tile) is not on the direct TIFF-tile path: a tile is missing, does not
    decode there, or has an unexpected shape. Caught inside the slide readers, which then read
    the region through the back-end (whose own errors are what a user sees)."""


class NoSlidesError(HistoguardError):
    """The inputs of a batch command hold no slide at all (an empty or mistaken folder).

    Args:
        inputs: the files and folders given.
        looked_for: what counts as a slide there, e.g. the file extensions searched.
        fix: what the user can do about it.
    """

    def __init__(self, inputs: Sequence[str | Path], looked_for: str, fix: str = "") -> None:
        self.inputs = tuple(Path(item) for item in inputs)
        self.looked_for = looked_for
        self.fix = fix
        listed = ", ".join(str(item) for item in self.inputs) or "(no inputs given)"
        message = f"no slides found in {listed}: looked for {looked_for}"
        if fix:
            message += f". {fix}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[NoSlidesError], tuple[tuple[Path, ...], str, str]]:
        # Keep the exception picklable so it can cross process boundaries intact.
        return (type(self), (self.inputs, self.looked_for, self.fix))


class TilingError(HistoguardError):
    """A tiling request cannot be met for a slide (for example it would need upsampling)."""


class OutputError(HistoguardError):
    """An output file is missing, incomplete, or differs from what was written."""


class EncoderError(HistoguardError):
    """An encoder cannot be built or loaded."""


class WeightsError(EncoderError):
    """A weights file is missing, corrupt, or does not fit the encoder."""


class UnsafeWeightsError(WeightsError):
    """A pickled checkpoint, refused unless the user explicitly allows pickle loading."""


class AuditDataError(HistoguardError):
    """A table, tile dataset or embedding set given to the robustness audit cannot be used
    (missing columns, unknown files, too few classes or centers for a metric)."""


class ImageError(HistoguardError, ValueError):
    """An image (a tile file, a stain reference, a tile batch) cannot be decoded, or does not fit
    the encoder's resize policy.

    Also a :class:`ValueError`, so code that caught decoding errors that way keeps working.

    Args:
        path: the image file, or a name for an in-memory image.
        problem: what is wrong, in one clause.
        fix: what the user can do about it.
    """

    def __init__(self, path: str | Path, problem: str, fix: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}" + (f". {fix}" if fix else ""))

    def __reduce__(self) -> tuple[type[ImageError], tuple[str, str, str]]:
        return (type(self), (self.path, self.problem, self.fix))


class ImageTooLargeError(ImageError):
    """An image has more pixels than the explicit limit it was decoded under."""


class CohortError(HistoguardError):
    """A cohort table, or a split drawn from it, cannot be used as it is.

    Args:
        message: what is wrong and what to do, naming the file, rows or slides.
        problems: the individual problems, one line each (all of them, even when the message
            lists only the first few).
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        self.problems = tuple(problems)
        super().__init__(message)

    def __reduce__(self) -> tuple[type[CohortError], tuple[str, tuple[str, ...]]]:
        # Keep the exception picklable so it can cross process boundaries intact.
        return (type(self), (str(self), self.problems))


class ModelMismatchError(HistoguardError):
    """Features do not fit a trained model: another encoder, weights, scale or tile size."""


class ModelFileError(HistoguardError):
    """A saved MIL model folder is missing a file, or its ``model.json`` or weights are
    malformed, out of bounds, inconsistent with each other or not finite."""


class RequestError(HistoguardError):
    """A request to ``histoguard serve`` names a slide, layer, tile or file that does not exist
    or lies outside the served folders.

    Args:
        status: the HTTP status the server answers with (400, 403, 404, 409 ...).
        message: what is wrong, in one sentence.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self) -> tuple[type[RequestError], tuple[int, str]]:
        return type(self), (self.status, self.message)


class ConfigError(HistoguardError, ValueError):
    """A configuration value or configuration file is invalid.

    Also a :class:`ValueError`, so code that validated arguments with ``except ValueError``
    keeps working.
    """


class UnknownCenterError(ConfigError):
    """Features come from a center the harmoniser was not fitted on.

    Args:
        center: the center asked for.
        known: the centers the harmoniser knows.
    """

    def __init__(self, center: str, known: Iterable[str]) -> None:
        self.center = center
        self.known = tuple(known)
        listed = ", ".join(self.known) if self.known else "(none)"
        super().__init__(
            f"center {center!r} was not seen when the harmoniser was fitted (known: {listed}). "
            f"Fit it label-free from its own unlabelled slides first: "
            f"harmonizer.fit_new_center(features, {center!r})"
        )

    def __reduce__(self) -> tuple[type[UnknownCenterError], tuple[str, tuple[str, ...]]]:
        return (type(self), (self.center, self.known))


class TooFewSlidesError(ConfigError):
    """Too few slides of a new center to estimate its batch effect label-free.

    Args:
        center: the new center.
        n_slides: how many slides were given.
        minimum: how many are needed.
    """

    def __init__(self, center: str, n_slides: int, minimum: int) -> None:
        self.center = center
        self.n_slides = n_slides
        self.minimum = minimum
        super().__init__(
            f"center {center!r}: {n_slides} slides given, at least {minimum} are needed to "
            f"estimate its location and scale label-free. Collect more slides of this center, "
            f"or lower min_slides knowingly (fewer slides give noisier estimates)"
        )

    def __reduce__(self) -> tuple[type[TooFewSlidesError], tuple[str, int, int]]:
        return (type(self), (self.center, self.n_slides, self.minimum))


def closest_name(name: str, known: Iterable[str]) -> str | None:
    """The one of ``known`` closest to ``name`` (a likely typo), or None when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return close[0] if close else None


class UnknownNameError(HistoguardError, KeyError):
    """No entry is registered under the requested name.

    Args:
        kind: what the registry holds, e.g. ``"encoder"``.
        name: the name asked for.
        known: every registered name.

    The message lists the known names and the closest match.
    """

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = tuple(sorted(known))
        close = closest_name(name, self.known)
        hint = f" Did you mean {close!r}?" if close else ""
        listed = ", ".join(self.known) if self.known else "(none registered)"
        super().__init__(f"unknown {kind} {name!r}.{hint} Known: {listed}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[type[UnknownNameError], tuple[str, str, tuple[str, ...]]]:
        return (type(self), (self.kind, self.name, self.known))


class UnknownEncoderError(UnknownNameError, EncoderError):
    """No encoder is registered under the requested name."""


class ConformanceError(HistoguardError, AssertionError):
    """An encoder or a MIL model breaks a property of its contract.

    Attributes:
        subject: what was checked (encoder or model name).
        prop: the property that failed, e.g. ``"batch independence"``.
    """

    def __init__(self, subject: str, prop: str, detail: str) -> None:
        self.subject = subject
        self.prop = prop
        super().__init__(f"{subject}: {prop} fails: {detail}")


__all__ = [
    "AuditDataError",
    "CohortError",
    "ConfigError",
    "ConformanceError",
    "CorruptSlideError",
    "EncoderError",
    "HistoguardError",
    "ImageError",
    "ImageTooLargeError",
    "MissingMppError",
    "ModelFileError",
    "ModelMismatchError",
    "NoSlidesError",
    "NotNative",
    "OutputError",
    "RegionReadError",
    "RequestError",
    "SlideError",
    "SlideNotFoundError",
    "SlideTooLargeError",
    "TilingError",
    "TooFewSlidesError",
    "UnknownCenterError",
    "UnknownEncoderError",
    "UnknownNameError",
    "UnsafeWeightsError",
    "UnsupportedFormatError",
    "WeightsError",
]
