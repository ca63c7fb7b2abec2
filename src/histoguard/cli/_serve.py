"""The ``serve`` command: the slide server and viewer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoguard.cli._app import app
from histoguard.errors import ConfigError


@app.command()
def serve(
    slides: Annotated[
        list[Path], typer.Argument(help="Folders of slides to serve.", show_default=False)
    ],
    models: Annotated[
        Path | None,
        typer.Option(
            help="Folder of `histoguard train` outputs (one sub-folder per model) that "
            "POST /predict may run.",
            file_okay=False,
        ),
    ] = None,
    features: Annotated[
        Path | None,
        typer.Option(
            help="The slides' feature files (<slide>.h5), for POST /predict.", file_okay=False
        ),
    ] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(
            help="A `histoguard predict` --out folder: its decisions and heatmap maps are "
            "shown from the start.",
            file_okay=False,
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on.", min=1, max=65535)] = 8000,
    workers: Annotated[
        int, typer.Option(help="Threads reading and encoding tiles.", min=1, max=64)
    ] = 4,
    cache_mb: Annotated[
        int, typer.Option(help="Memory for encoded tiles, MB (0: no cache).", min=0)
    ] = 256,
) -> None:
    """Serve slides and their predictions to the viewer at http://HOST:PORT/ (read-only).

    DeepZoom tiles over histoguard's readers, overlay layers of each prediction (attention,
    class probability, tile uncertainty, conformal-set size, abstention, OOD verdict), QuPath
    GeoJSON, and POST /predict to run a model on a slide's feature file. Only files under the
    folders named here are served. Runs until interrupted (Ctrl-C).
    """
    try:
        from histoguard.serve import ServeConfig
        from histoguard.serve import serve as run_server
    except ImportError as error:
        raise ConfigError(
            f"histoguard serve needs the serve extra ({error.name} is missing): "
            "pip install 'histoguard[serve]'"
        ) from None
    config = ServeConfig(
        slide_dirs=tuple(slides), models_dir=models, features_dir=features,
        predictions_dir=predictions, host=host, port=port, workers=workers,
        tile_cache_mb=cache_mb,
    )  # fmt: skip
    run_server(config)
