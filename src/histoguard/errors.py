"""Every error histoguard raises on purpose.

    HistoguardError
    ├── SlideError                  a slide file cannot be used; `.path` names it
    │   ├── SlideNotFoundError      no file at that path
    │   ├── UnsupportedFormatError  no back-end can read this kind of file
    │   ├── CorruptSlideError       the file claims a format but its content is broken
    │   ├── SlideTooLargeError      the dimensions exceed the configured pixel limit
    │   ├── MissingMppError         no usable microns-per-pixel in the metadata
    │   └── RegionReadError         one region failed to decode (the rest may be fine)
    ├── TilingError                 the tiling request cannot be met for this slide
    ├── OutputError                 an output file is incomplete or not what was written
    ├── EncoderError                an encoder cannot be built or loaded
    │   ├── UnknownEncoderError     no encoder registered under that name
    │   └── WeightsError            a weights file is missing, corrupt or does not fit
    │       └── UnsafeWeightsError  a pickled checkpoint, refused without explicit consent
    └── AuditDataError              a table or dataset given to the robustness audit is unusable

Messages always name the file and say what to do about it.
"""

from __future__ import annotations

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


class TilingError(HistoguardError):
    """A tiling request cannot be met for a slide (for example it would need upsampling)."""


class OutputError(HistoguardError):
    """An output file is missing, incomplete, or differs from what was written."""


class EncoderError(HistoguardError):
    """An encoder cannot be built or loaded."""


class UnknownEncoderError(EncoderError, KeyError):
    """No encoder is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(EncoderError):
    """A weights file is missing, corrupt, or does not fit the encoder."""


class UnsafeWeightsError(WeightsError):
    """A pickled checkpoint, refused unless the user explicitly allows pickle loading."""


class AuditDataError(HistoguardError):
    """A table, tile dataset or embedding set given to the robustness audit cannot be used
    (missing columns, unknown files, too few classes or centers for a metric)."""
