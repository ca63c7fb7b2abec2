"""The slide server: a Starlette app over the slides, their predictions and the viewer.

Every URL names things by id (a slide, a layer, a model under ``--models``), never by path;
what a request may name is parsed by one pattern per route and anything else is a 404, so path
traversal, absurd levels and out-of-range tiles get a 4xx answer before any file is touched.
The app only reads: GET (and HEAD) everywhere, and ``POST /predict``, which runs a model in
memory and writes nothing under the served folders.

Endpoints (``{id}`` is a slide id from ``/slides``):

- ``/`` the viewer; ``/static/...`` its files.
- ``/slides``: every slide with its size and, where predictions exist, decision and flags.
- ``/slides/{id}.dzi`` and ``/slides/{id}_files/{level}/{col}_{row}.{jpeg|webp}``: DeepZoom.
- ``/slides/{id}/layers``: the overlay layers and their legends;
  ``/slides/{id}/layers/{layer}.dzi`` and ``..._files/{level}/{col}_{row}.png``: their tiles.
- ``/slides/{id}/tile?x=&y=``: the scored tile at a level-0 point; ``/slides/{id}/top?k=``
  the top-k tiles by attention; ``/slides/{id}/tiles/{index}.jpeg`` a scored tile's pixels.
- ``/slides/{id}/geojson``: the QuPath measurement map.
- ``/models``; ``POST /predict`` with ``{"slide": id, "model": name}``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from histoguard.errors import (
    ConfigError,
    HistoguardError,
    ModelMismatchError,
    RequestError,
    SlideError,
)
from histoguard.report._tile_layers import LAYER_NAMES, LayerName, layer_tile, png_bytes
from histoguard.serve._config import ServeConfig, catalogue, child_name, inside, resolve_root
from histoguard.serve._deepzoom import (
    DeepZoomGeometry,
    SlidePool,
    TileCache,
    TileFormat,
    encode,
    read_view,
)
from histoguard.serve._scores import SlideScores, load_predictions

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
_ID = r"(?P<id>[A-Za-z0-9._-]{1,200})"
_TILE = r"(?P<level>\d{1,2})/(?P<col>\d{1,7})_(?P<row>\d{1,7})"
_LAYER = "(?P<layer>" + "|".join(LAYER_NAMES) + ")"
#: Largest JSON body ``POST /predict`` reads, in bytes.
_MAX_BODY = 16_384
#: Side in pixels of a scored tile's picture in the top-k gallery.
_GALLERY_PX = 160
_MIME = {"jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass
class ServerState:
    """What the app holds: the catalogue, open slides, caches, pools and predictions."""

    config: ServeConfig
    slides: dict[str, Path]
    pool: SlidePool
    cache: TileCache
    workers: ThreadPoolExecutor
    predictor: ThreadPoolExecutor
    scores: dict[str, SlideScores] = field(default_factory=dict)
    scores_lock: threading.Lock = field(default_factory=threading.Lock)
    models_root: Path | None = None
    features_root: Path | None = None

    def geometry(self, slide_id: str) -> DeepZoomGeometry:
        width, height = self.pool.dimensions(slide_id)
        return DeepZoomGeometry(width, height, self.config.tile_size, self.config.overlap)

    def scores_of(self, slide_id: str) -> SlideScores:
        self.pool.path(slide_id)  # 404 for an unknown slide first
        with self.scores_lock:
            found = self.scores.get(slide_id)
        if found is None:
            raise RequestError(404, f"{slide_id}: no prediction yet (POST /predict makes one)")
        return found

    def models(self) -> list[str]:
        if self.models_root is None:
            return []
        return sorted(p.name for p in self.models_root.iterdir() if p.is_dir())


def build_state(config: ServeConfig) -> ServerState:
    """Resolve the roots, list the slides and load the predictions.

    Raises:
        ConfigError: a folder that does not exist, or a predictions folder without
            ``predictions.json``.
    """
    slides = catalogue(config.slide_dirs)
    state = ServerState(
        config=config,
        slides=slides,
        pool=SlidePool(slides, max_open=config.max_open_slides, per_slide=config.workers),
        cache=TileCache(config.tile_cache_mb * 1024 * 1024),
        workers=ThreadPoolExecutor(config.workers, thread_name_prefix="histoguard-tile"),
        predictor=ThreadPoolExecutor(1, thread_name_prefix="histoguard-predict"),
    )
    if config.models_dir is not None:
        state.models_root = resolve_root(config.models_dir, "models")
    if config.features_dir is not None:
        state.features_root = resolve_root(config.features_dir, "features")
    if config.predictions_dir is not None:
        root = resolve_root(config.predictions_dir, "predictions")
        state.scores.update(load_predictions(root, set(slides)))
    return state


Handler = Callable[[ServerState, Request, dict[str, str]], Awaitable[Response]]


async def _in_pool(state: ServerState, fn: Callable[[], Any], *, predict: bool = False) -> Any:
    pool = state.predictor if predict else state.workers
    return await asyncio.get_running_loop().run_in_executor(pool, fn)


async def _slide_list(state: ServerState, request: Request) -> Response:
    with state.scores_lock:
        scores = dict(state.scores)
    rows = []
    for slide_id, path in state.slides.items():
        row: dict[str, Any] = {"id": slide_id, "name": path.name}
        try:
            row["width"], row["height"] = await _in_pool(
                state, functools.partial(state.pool.dimensions, slide_id)
            )
        except SlideError as error:
            row["error"] = error.problem
        row["prediction"] = scores[slide_id].summary() if slide_id in scores else None
        rows.append(row)
    return JSONResponse({"slides": rows, "models": state.models()})


async def _dzi(state: ServerState, request: Request, m: dict[str, str]) -> Response:
    geometry = await _in_pool(state, lambda: state.geometry(m["id"]))
    return Response(geometry.dzi("jpeg"), media_type="application/xml")


async def _tile(state: ServerState, request: Request, m: dict[str, str]) -> Response:
    slide_id, fmt = m["id"], cast(TileFormat, "jpeg" if m["fmt"] == "jpg" else m["fmt"])
    level, col, row = int(m["level"]), int(m["col"]), int(m["row"])
    key = ("slide", slide_id, level, col, row, fmt)
    data = state.cache.get(key)
    if data is None:

        def render() -> bytes:
            geometry = state.geometry(slide_id)
            x, y, w, h = geometry.tile_box(level, col, row)
            ds = geometry.downsample(level)
            pixels = read_view(state.pool, slide_id, (x * ds, y * ds, w * ds, h * ds), (w, h))
            return encode(pixels, fmt, state.config.jpeg_quality)

        data = await _in_pool(state, render)
        state.cache.put(key, data)
    return Response(data, media_type=_MIME[fmt], headers={"Cache-Control": "max-age=3600"})


async def _layers(state: ServerState, request: Request, m: dict[str, str]) -> Response:
    scores = state.scores_of(m["id"])
    legends = [scores.style(name).legend() for name in scores.layers()]
    return JSONResponse({"slide": m["id"], "layers": legends, "prediction": scores.summary()})


def _layer_of(scores: SlideScores, name: str) -> LayerName:
    layer = cast(LayerName, name)
    if layer not in scores.layers():
        raise RequestError(404, f"{scores.slide}: this prediction has no {name} layer")
    return layer


async def _layer_dzi(state: ServerState, request: Request, m: dict[str, str]) -> Response:
    _layer_of(state.scores_of(m["id"]), m["layer"])
    geometry = await _in_pool(state, lambda: state.geometry(m["id"]))
    return Response(geometry.dzi("png"), media_type="application/xml")


async def _layer_tile(state: ServerState, request: Request, m: dict[str, str]) -> Response:
    scores = state.scores_of(m["id"])
    layer = _layer_of(scores, m["layer"])
    level, col, row = int(m["level"]), int(m["col"]), int(m["row"])
    key = ("layer", m["id"], id(scores), layer, level, col, row)
    data = state.cache.get(key)
    if data is None:

        def render() -> bytes:
            geometry = state.geometry(m["id"])
            x, y, w, h = geometry.tile_box(level, col, row)
            ds = geometry.downsample(level)
            style = scores.style(layer)
            values = scores.values(layer)
            assert values is not None  # layers() lists only layers with values
            rgba = layer_tile(
                scores.coords, scores.tile_size0, style.scale(values), origin=(x * ds, y * ds),
                downsample=ds, size=(w, h), colormap=style.colormap,
            )  # fmt: skip
            return png_bytes(rgba)

        data = await _in_pool(state, render)
        state.cache.put(key, data)
    return Response(data, media_type="image/png")


def _number(request: Request, name: str, low: float, high: float) -> float:
    raw = request.query_params.get(name)
    try:
        value = float(raw) if raw is not None else float("nan")
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # NaN fails too
        raise RequestError(400, f"?{name}= must be a number in [{low:g}, {high:g}], got {raw!r}")
    return value


async def _tile_at(state: ServerState, request: Request, m: dict[str, str]) -> Response:
    scores = state.scores_of(m["id"])
    width, height = await _in_pool(state, lambda: state.pool.dimensions(m["id"]))
    x, y = _number(request, "x", 0, width), _number(request, "y", 0, height)
    return JSONResponse(scores.tile_report(scores.tile_at(x, y)))


async def _top(state: ServerState, request: Request, m: dict[str, str]) -> Response:
    scores = state.scores_of(m["id"])
    k = int(_number(request, "k", 1, 64)) if "k" in request.query_params else 8
    return JSONResponse({"slide": m["id"], "tiles": scores.top(k)})


async def _scored_tile(state: ServerState, request: Request, m: dict[str, str]) -> Response:
    scores = state.scores_of(m["id"])
    report = scores.tile_report(int(m["index"]))
    box = (report["x"], report["y"], scores.tile_size0, scores.tile_size0)
    pixels = await _in_pool(
        state, lambda: read_view(state.pool, m["id"], box, (_GALLERY_PX, _GALLERY_PX))
    )
    return Response(encode(pixels, "jpeg", state.config.jpeg_quality), media_type="image/jpeg")


async def _geojson(state: ServerState, request: Request, m: dict[str, str]) -> Response:
    from histoguard.report import attention_geojson

    scores = state.scores_of(m["id"])
    if scores.geojson is not None and state.config.predictions_dir is not None:
        root = resolve_root(state.config.predictions_dir, "predictions")
        return FileResponse(inside(root, scores.geojson), media_type="application/geo+json")
    if scores.attention is None:
        raise RequestError(404, f"{m['id']}: the prediction has no attention to map")
    document = attention_geojson(
        scores.coords, scores.tile_size0, scores.attention, tile_uncertainty=scores.uncertainty
    )
    return Response(json.dumps(document, allow_nan=False), media_type="application/geo+json")


_ROUTES: tuple[tuple[re.Pattern[str], Handler], ...] = tuple(
    (re.compile(pattern), handler)
    for pattern, handler in (
        (rf"{_ID}\.dzi", _dzi),
        (rf"{_ID}_files/{_TILE}\.(?P<fmt>jpeg|jpg|webp)", _tile),
        (rf"{_ID}/layers", _layers),
        (rf"{_ID}/layers/{_LAYER}\.dzi", _layer_dzi),
        (rf"{_ID}/layers/{_LAYER}_files/{_TILE}\.png", _layer_tile),
        (rf"{_ID}/tile", _tile_at),
        (rf"{_ID}/top", _top),
        (rf"{_ID}/tiles/(?P<index>\d{{1,9}})\.jpeg", _scored_tile),
        (rf"{_ID}/geojson", _geojson),
    )
)


async def _slides_route(request: Request) -> Response:
    state: ServerState = request.app.state.histoguard
    rest = request.path_params.get("rest", "")
    if not rest:
        return await _slide_list(state, request)
    for pattern, handler in _ROUTES:
        match = pattern.fullmatch(rest)
        if match:
            return await handler(state, request, match.groupdict())
    raise RequestError(404, "no such resource")


async def _index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


async def _models(request: Request) -> Response:
    state: ServerState = request.app.state.histoguard
    return JSONResponse({"models": state.models()})


async def _predict(request: Request) -> Response:
    state: ServerState = request.app.state.histoguard
    body = await request.body()
    if len(body) > _MAX_BODY:
        raise RequestError(413, f"the request body is over {_MAX_BODY} bytes")
    try:
        query = json.loads(body or b"null")
    except ValueError:
        raise RequestError(400, 'the body must be JSON: {"slide": id, "model": name}') from None
    if not (
        isinstance(query, dict)
        and isinstance(query.get("slide"), str)
        and isinstance(query.get("model"), str)
    ):
        raise RequestError(400, 'the body must be JSON: {"slide": id, "model": name}')
    from histoguard.serve._predict import predict_slide

    slide_id, model = query["slide"], child_name(query["model"])
    state.pool.path(slide_id)
    scores = await _in_pool(state, lambda: predict_slide(state, slide_id, model), predict=True)
    with state.scores_lock:
        state.scores[slide_id] = scores
    return JSONResponse({"slide": slide_id, "model": model, **scores.summary()})


_STATUS_OF: tuple[tuple[type[HistoguardError], int], ...] = (
    (ModelMismatchError, 409),
    (ConfigError, 400),
    (SlideError, 422),
)


async def _request_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RequestError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)
    status = next((code for kind, code in _STATUS_OF if isinstance(exc, kind)), 422)
    return JSONResponse({"error": str(exc)}, status_code=status)


def create_app(config: ServeConfig) -> Starlette:
    """The slide server as an ASGI app (run it with uvicorn, or test it with TestClient).

    Args:
        config: what to serve.

    Returns:
        A Starlette app; its worker pools and slide handles are released at shutdown.

    Raises:
        ConfigError: a folder that does not exist or a predictions folder that is not one.
    """
    state = build_state(config)

    def lifespan(app: Starlette) -> AbstractAsyncContextManager[None]:
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def span() -> Any:
            try:
                yield
            finally:
                state.workers.shutdown(wait=False, cancel_futures=True)
                state.predictor.shutdown(wait=False, cancel_futures=True)
                state.pool.close()

        return cast("AbstractAsyncContextManager[None]", span())

    app = Starlette(
        routes=[
            Route("/", _index),
            Route("/slides", _slides_route),
            Route("/slides/{rest:path}", _slides_route),
            Route("/models", _models),
            Route("/predict", _predict, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={HistoguardError: _request_error},
        lifespan=lifespan,
    )
    app.state.histoguard = state
    return app
