"""Feature commands: ``extract`` and ``encoders``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from histoguard.cli._app import (
    SEED_MAX,
    Anonymize,
    AnonymizeMap,
    AnonymizeSalt,
    Backend,
    EdgeMode,
    MinTissue,
    MppOverride,
    OutDir,
    Quiet,
    RegistryHelpCommand,
    TargetMpp,
    TileSize,
    _print_report,
    anonymize_settings,
    app,
)


@app.command(cls=RegistryHelpCommand)
def extract(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Slide files, folders of slides, or folders of tile images (one slide each).",
            show_default=False,
        ),
    ],
    encoder: Annotated[
        str, typer.Option(help="Encoder: {encoders}. `histoguard encoders` shows their metadata.")
    ],
    out: OutDir,
    weights: Annotated[
        Path | None, typer.Option(help="Local weights file or model directory for the encoder.")
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Accept a pickled checkpoint (.pt/.pth/.bin). Pickles can run code; even with "
            "this flag they load with torch.load(weights_only=True).",
        ),
    ] = False,
    tiles_dir: Annotated[
        Path | None,
        typer.Option(help="Reuse `histoguard tile` output from this folder instead of tiling."),
    ] = None,
    mpp: TargetMpp = 0.5,
    tile_size: TileSize = 224,
    min_tissue: MinTissue = 0.5,
    edge: EdgeMode = "pad",
    mpp_override: MppOverride = None,
    backend: Backend = None,
    stain_normalize: Annotated[
        str | None, typer.Option(help="Normalise stains before encoding: {stain_methods}.")
    ] = None,
    stain_reference: Annotated[
        Path | None, typer.Option(help="Reference H&E image for --stain-normalize.")
    ] = None,
    augment: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME[:SEV]",
            help="A perturbation of each augmented view, after stain normalisation; repeat "
            "to chain them in order: {perturbations}. SEV is the severity, 1-5 (D4 transforms: "
            "1); default 2. Needs --views.",
        ),
    ] = None,
    views: Annotated[
        int,
        typer.Option(
            help="K augmented views embedded per tile (0: none). View k of tile i is seeded by "
            "(--seed, k) and i: reruns are identical. Time grows with K + 1.",
            min=0,
            max=64,
        ),
    ] = 0,
    views_mode: Annotated[
        Literal["store", "mean"],
        typer.Option(
            help="store: write the views' embeddings as /views (K, N, D) beside the features; "
            "mean: features become the mean of the plain and the K augmented embeddings."
        ),
    ] = "store",
    seed: Annotated[
        int, typer.Option(help="Seed of the augmented views.", min=0, max=SEED_MAX)
    ] = 0,
    batch_size: Annotated[
        int,
        typer.Option(help="Tiles per encoder call (memory grows with it).", min=1, max=4096),
    ] = 64,
    readers: Annotated[
        int,
        typer.Option(
            help="Reader processes per slide (0: read in the main process).", min=0, max=64
        ),
    ] = 2,
    device: Annotated[str, typer.Option(help="Torch device: cpu, cuda, cuda:1, ...")] = "cpu",
    workers: Annotated[
        int | None,
        typer.Option(
            help="Run on a local Dask cluster of N worker processes (one slide per task).",
            min=1,
            max=256,
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Run on an existing Dask scheduler, e.g. tcp://host:8786 (Slurm: dask-jobqueue)."
        ),
    ] = None,
    anonymize: Anonymize = False,
    anonymize_salt: AnonymizeSalt = None,
    anonymize_map: AnonymizeMap = None,
    quiet: Quiet = False,
) -> None:
    """Extract tile features into OUT/<slide>.h5 (features N×D float32, coords, provenance).

    With --views K and --augment, each tile is also embedded K times augmented (stain,
    scanner or D4 perturbations): stored as views K×N×D or averaged into the features.
    Reuses tiling output (--tiles-dir) or tiles on the fly into OUT/tiles. Resumable and
    isolated per slide like `tile`; the summary is OUT/extraction_summary.csv; exit code 1 if
    any slide failed or the inputs hold no slide. A folder whose sub-folders hold tile images
    is one slide per sub-folder, named after it. With --anonymize (the same salt as `tile`
    when reusing --tiles-dir), every output names a slide by its anon id only.
    """
    from histoguard.core._device import check_device
    from histoguard.features import ExtractionConfig, extract_features
    from histoguard.slide import TilingConfig

    check_device(device)  # before any slide is tiled: cuda on a CPU-only torch is refused here

    config = ExtractionConfig(
        encoder=encoder,
        weights=weights,
        allow_pickle=allow_pickle,
        tiling=TilingConfig(
            mpp=mpp,
            tile_size=tile_size,
            min_tissue_fraction=min_tissue,
            mpp_override=mpp_override,
            backend=backend,
            edge=edge,
            **anonymize_settings(anonymize, anonymize_salt, anonymize_map),
        ),
        tiles_dir=tiles_dir,
        stain_normalize=stain_normalize,
        stain_reference=stain_reference,
        batch_size=batch_size,
        readers=readers,
        device=device,
        augment=tuple(augment or ()),
        views=views,
        views_mode=views_mode,
        seed=seed,
    )
    report = extract_features(
        inputs, out, config, scheduler=scheduler, dask_workers=workers, progress=not quiet
    )
    _print_report(report)
    if report.failed:
        raise typer.Exit(code=1)


@app.command()
def encoders(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the registered encoders with their embedding size, input size and licence."""
    from histoguard.encoders import ResizePolicy, list_encoders

    infos = [info.to_dict() for info in list_encoders()]
    if as_json:
        typer.echo(json.dumps(infos, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "dim", "input", "resize", "weights", "licence", "description")
    for info in infos:
        needs = (
            "needs file" + (" (gated)" if info["gated"] else "") if info["needs_weights"] else "-"
        )
        table.add_row(
            info["name"], str(info["embed_dim"]), str(info["input_size"]),
            ResizePolicy.from_dict(info["resize"]).describe(), needs,
            info["licence"], info["description"],
        )  # fmt: skip
    Console().print(table)
