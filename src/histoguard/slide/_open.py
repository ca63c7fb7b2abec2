"""Opening a slide: preflight checks, then the registered back-ends in priority order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from histoguard.errors import SlideError, UnsupportedFormatError
from histoguard.slide._preflight import DEFAULT_MAX_PIXELS, PreflightResult, preflight
from histoguard.slide._reader import SlideReader
from histoguard.slide._registry import BackendInfo, get_backend, list_backends


def open_slide(
    path: str | Path,
    *,
    backend: str | None = None,
    mpp_override: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    require_mpp: bool = True,
) -> SlideReader:
    """Open a whole-slide image with the first back-end that can read it.

    The file is first checked by a cheap preflight (existence, magic bytes, TIFF directory
    chain, declared size), so hostile or broken files fail fast with a typed error before any
    native library touches them.

    Args:
        path: the slide file.
        backend: force one back-end by name (``"openslide"``, ``"tiffslide"``, ``"image"``);
            by default they are tried in priority order.
        mpp_override: micrometres per level-0 pixel, replacing the metadata.
        max_pixels: largest level-0 width x height accepted (pixels).
        require_mpp: raise :class:`MissingMppError` now if the slide has no usable mpp.

    Returns:
        An open :class:`SlideReader`; close it, or use it as a context manager.

    Raises:
        SlideNotFoundError, CorruptSlideError, UnsupportedFormatError, SlideTooLargeError,
        MissingMppError: see :mod:`histoguard.errors`.
        UnknownNameError: ``backend`` is not a registered back-end (see :func:`list_backends`).
    """
    return _open_checked(path, backend, mpp_override, max_pixels, require_mpp)[0]


def _open_checked(
    path: str | Path,
    backend: str | None,
    mpp_override: float | None,
    max_pixels: int,
    require_mpp: bool,
) -> tuple[SlideReader, PreflightResult]:
    """:func:`open_slide`, also returning what the preflight found."""
    path = Path(path)
    forced = None if backend is None else get_backend(backend)  # a wrong name fails first
    checked = preflight(path, max_pixels=max_pixels)
    candidates: list[BackendInfo]
    if forced is not None:
        candidates = [forced]
    else:
        candidates = [info for info in list_backends() if checked.kind in info.kinds]
    if not candidates:
        raise UnsupportedFormatError(
            path, f"no slide back-end reads {checked.kind} files", _formats_hint()
        )
    errors: list[SlideError] = []
    for info in candidates:
        try:
            reader = info.reader(path, mpp_override=mpp_override)
        except SlideError as error:
            errors.append(error)
            continue
        if require_mpp:
            try:
                reader.mpp  # noqa: B018 - evaluated for its check
            except SlideError:
                reader.close()
                raise
        return reader, checked
    if len(errors) == 1:
        raise errors[0]
    tried = "; ".join(
        f"{info.name}: {err.problem}" for info, err in zip(candidates, errors, strict=True)
    )
    raise type(errors[-1])(path, f"no back-end could open it ({tried})", errors[-1].fix)


def slide_info(
    path: str | Path, *, backend: str | None = None, mpp_override: float | None = None
) -> dict[str, Any]:
    """Open a slide (without requiring mpp) and return :meth:`SlideReader.summary`, plus
    ``sparse_tiles``: tiles or strips the file stores as empty (offset or byte count 0), which
    back-ends show as blank (OpenSlide: transparent, drawn white) and no tile check can tell
    from glass.

    Raises:
        SlideError: as :func:`open_slide`, except for a missing mpp, which shows as None.
    """
    reader, checked = _open_checked(path, backend, mpp_override, DEFAULT_MAX_PIXELS, False)
    with reader:
        facts = reader.summary()
    facts["sparse_tiles"] = sum(page.sparse_blocks for page in checked.tiff_pages)
    return facts


def _formats_hint() -> str:
    return "Supported: " + "; ".join(f"{info.name}: {info.formats}" for info in list_backends())
