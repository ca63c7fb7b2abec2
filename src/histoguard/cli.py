"""The ``histoguard`` command line. Each command is one call into the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from histoguard._batch import BatchReport

from histoguard._version import __version__

app = typer.Typer(
    name="histoguard",
    help="Whole-slide-image models that hold up across hospitals, and audits for any encoder.\n\n"
    "Coordinates are level-0 pixels; resolution is micrometres per pixel (mpp).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

MppOverride = Annotated[
    float | None,
    typer.Option(
        "--mpp-override",
        help="Micrometres per level-0 pixel, for slides whose metadata lacks it "
        "(typically 0.25 at 40x, 0.5 at 20x).",
        min=0.0,
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
TargetMpp = Annotated[float, typer.Option(help="Target resolution of the tiles, µm/px.", min=0.0)]
TileSize = Annotated[int, typer.Option(help="Tile side in pixels at --mpp.", min=1)]
MinTissue = Annotated[
    float, typer.Option(help="Keep tiles whose tissue coverage is at least this.", min=0, max=1)
]
Backend = Annotated[
    str | None,
    typer.Option(
        help="Force a slide back-end: openslide, tiffslide or image. "
        "Default: try them in that order."
    ),
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"histoguard {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Whole-slide-image models that hold up across hospitals, and audits for any encoder."""


@app.command()
def tile(
    slides: Annotated[
        list[Path], typer.Argument(help="Slide files and/or folders of slides.", show_default=False)
    ],
    out: OutDir,
    mpp: TargetMpp = 0.5,
    tile_size: TileSize = 224,
    overlap: Annotated[
        int, typer.Option(help="Pixels (at --mpp) shared by neighbours.", min=0)
    ] = 0,
    min_tissue: MinTissue = 0.5,
    mpp_override: MppOverride = None,
    backend: Backend = None,
    threads: Annotated[int, typer.Option(help="Decoding threads per slide.", min=1)] = 2,
    thumbnail_size: Annotated[
        int, typer.Option(help="Longest side (px) of the tissue-detection thumbnail.", min=64)
    ] = 2048,
    quiet: Quiet = False,
) -> None:
    """Detect tissue and tile slides into OUT/<slide>.h5 (coords + tile QC), with a thumbnail
    PNG showing the tissue outline and tile grid, and the tissue as QuPath GeoJSON.

    Resumable: slides whose verified output exists with the same settings are skipped. Failures
    are isolated per slide and listed in OUT/tiling_summary.csv; the exit code is 1 if any
    slide failed.
    """
    from histoguard.slide import TilingConfig, tile_slides

    try:
        config = TilingConfig(
            mpp=mpp,
            tile_size=tile_size,
            overlap=overlap,
            min_tissue_fraction=min_tissue,
            mpp_override=mpp_override,
            backend=backend,
            threads=threads,
            thumbnail_size=thumbnail_size,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    report = tile_slides(slides, out, config, show_progress=not quiet)
    _print_report(report)
    if report.failed:
        raise typer.Exit(code=1)


@app.command()
def extract(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Slide files, folders of slides, or folders of tile images (one slide each).",
            show_default=False,
        ),
    ],
    encoder: Annotated[str, typer.Option(help="Encoder name; `histoguard encoders` lists them.")],
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
    mpp_override: MppOverride = None,
    backend: Backend = None,
    stain_normalize: Annotated[
        str | None, typer.Option(help="Normalise stains before encoding: macenko or reinhard.")
    ] = None,
    stain_reference: Annotated[
        Path | None, typer.Option(help="Reference H&E image for --stain-normalize.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Tiles per encoder call.", min=1)] = 64,
    readers: Annotated[
        int, typer.Option(help="Reader processes per slide (0: read in the main process).", min=0)
    ] = 2,
    device: Annotated[str, typer.Option(help="Torch device: cpu, cuda, cuda:1, ...")] = "cpu",
    workers: Annotated[
        int | None,
        typer.Option(
            help="Run on a local Dask cluster of N worker processes (one slide per task)."
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Run on an existing Dask scheduler, e.g. tcp://host:8786 (Slurm: dask-jobqueue)."
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Extract tile features into OUT/<slide>.h5 (features N×D float32, coords, provenance).

    Reuses tiling output (--tiles-dir) or tiles on the fly into OUT/tiles. Resumable and
    isolated per slide like `tile`; the summary is OUT/extraction_summary.csv; exit code 1 if
    any slide failed.
    """
    from histoguard.features import ExtractionConfig, extract_features
    from histoguard.slide import TilingConfig

    try:
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
            ),
            tiles_dir=tiles_dir,
            stain_normalize=stain_normalize,
            stain_reference=stain_reference,
            batch_size=batch_size,
            readers=readers,
            device=device,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    from histoguard._exceptions import EncoderError

    try:
        report = extract_features(
            inputs, out, config, scheduler=scheduler, dask_workers=workers, show_progress=not quiet
        )
    except EncoderError as error:  # nothing can run without the encoder: say why, no traceback
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    _print_report(report)
    if report.failed:
        raise typer.Exit(code=1)


@app.command()
def train(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="YAML settings (cohort, features, out, model, split, ...).", show_default=False
        ),
    ] = None,
    cohort: Annotated[
        Path | None,
        typer.Option(help="Cohort table: slide_id, label[, patient_id, center, split]."),
    ] = None,
    features: Annotated[
        Path | None, typer.Option(help="Folder of <slide_id>.h5 feature files.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="MIL model: abmil, clam-sb, clam-mb, transmil, dsmil, topk, mean-pool, max-pool."
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="kfold (patient-grouped, stratified), leave-one-center-out, or given."),
    ] = None,
    k: Annotated[int | None, typer.Option(help="Folds for kfold.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs per split.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience (epochs).")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay.")] = None,
    max_instances: Annotated[
        int | None, typer.Option(help="Subsample bags to at most this many tiles per step.")
    ] = None,
    class_balanced: Annotated[
        bool | None,
        typer.Option(
            "--class-balanced/--no-class-balanced", help="Inverse-frequency loss weights."
        ),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Decision threshold for sensitivity/specificity.")
    ] = None,
    n_boot: Annotated[int | None, typer.Option(help="Bootstrap resamples for CIs.")] = None,
    model_kwargs: Annotated[
        str | None, typer.Option(help="Model settings as JSON, e.g. '{\"hidden_dim\": 256}'.")
    ] = None,
) -> None:
    """Train a MIL model from slide labels on every split of the chosen design; writes models
    (safetensors + JSON), predictions, and per-fold and per-center metrics with bootstrap CIs.
    """
    from histoguard._exceptions import HistoguardError
    from histoguard.mil import load_train_config
    from histoguard.mil import train as run_training

    try:
        settings = load_train_config(
            config, cohort=cohort, features=features, out=out, model=model, split=split, k=k,
            epochs=epochs, seed=seed, patience=patience, lr=lr, weight_decay=weight_decay,
            max_instances=max_instances, class_balanced=class_balanced, threshold=threshold,
            n_boot=n_boot, model_kwargs=json.loads(model_kwargs) if model_kwargs else None,
        )  # fmt: skip
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    try:
        result = run_training(settings, log=typer.echo)
    except HistoguardError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    from histoguard.mil import format_table

    typer.echo(format_table(result.report))
    typer.echo(f"outputs: {result.out}")


@app.command()
def predict(
    feature_files: Annotated[
        list[Path], typer.Argument(help="Per-slide feature files.", show_default=False)
    ],
    model: Annotated[
        Path,
        typer.Option(
            help="A `histoguard train` output folder (folds are averaged) or one fold_i folder."
        ),
    ],
    out: OutDir,
    no_heatmaps: Annotated[
        bool, typer.Option("--no-heatmaps", help="Skip attention heatmaps.")
    ] = False,
) -> None:
    """Predict slides: OUT/predictions.csv (one row per slide) and attention heatmaps (PNG
    overlay, top-tile gallery, QuPath GeoJSON measurement map)."""
    from histoguard._exceptions import HistoguardError
    from histoguard.mil import predict as run_prediction

    try:
        results = run_prediction(model, feature_files, out, heatmaps=not no_heatmaps)
    except (HistoguardError, FileNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    for r in results:
        typer.echo(
            f"{r.slide}: {r.predicted} "
            + " ".join(f"{k}={v:.3f}" for k, v in r.probabilities.items())
        )
    typer.echo(f"predictions: {out / 'predictions.csv'}")


@app.command()
def compare(
    random_run: Annotated[Path, typer.Argument(help="A `train` output with split kfold.")],
    site_run: Annotated[Path, typer.Argument(help="A `train` output with leave-one-center-out.")],
) -> None:
    """Show random-split and site-aware estimates side by side, with the difference: how much a
    random split overestimates performance at a new hospital."""
    from histoguard.mil import compare_designs

    reports = [json.loads((run / "metrics.json").read_text()) for run in (random_run, site_run)]
    typer.echo(compare_designs(reports[0], reports[1]))


@app.command()
def audit(
    out: OutDir,
    features: Annotated[
        Path | None, typer.Option(help="Folder of <slide_id>.h5 feature files (with --cohort).")
    ] = None,
    cohort: Annotated[
        Path | None,
        typer.Option(help="Cohort table: slide_id, label, center (applied to all its tiles)."),
    ] = None,
    tiles: Annotated[
        Path | None,
        typer.Option(
            help="Tile table: path (or PathoROB patch_id), label, center, slide_id "
            "(with --encoder). The PathoROB layout is accepted as is."
        ),
    ] = None,
    encoder: Annotated[
        str | None, typer.Option(help="Encoder to audit on --tiles; `histoguard encoders`.")
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Encoder weights file or model folder.")
    ] = None,
    image_root: Annotated[
        Path | None, typer.Option(help="Folder the tile table's images are in (default: its own).")
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="A `histoguard train` model folder: stress-tests and attacks it too."),
    ] = None,
    ood_center: Annotated[
        list[str] | None,
        typer.Option(help="A center never trained on in APD (repeatable; default: OOD rows)."),
    ] = None,
    parts: Annotated[
        str, typer.Option(help="Comma-separated subset of the measurements to run.")
    ] = "robustness_index,apd,clustering_score,stress,adversarial",
    k: Annotated[
        int | None,
        typer.Option(
            help="Neighbours for the robustness index (default: best kNN accuracy).", min=1
        ),
    ] = None,
    max_k: Annotated[int, typer.Option(help="Largest k of the RI(k) curve.", min=1)] = 100,
    tolerance: Annotated[
        float, typer.Option(help="Accuracy drop a perturbation may cause and still pass.", min=0)
    ] = 0.05,
    eps: Annotated[
        str, typer.Option(help="PGD L-inf budgets, comma-separated, in 0-255 pixel units.")
    ] = "1,2,4,8",
    transfer_encoder: Annotated[
        list[str] | None,
        typer.Option(help="Encoder the universal perturbation is transferred to (repeatable)."),
    ] = None,
    slide_fraction: Annotated[
        float, typer.Option(help="Share of each slide's tiles the slide attack perturbs.", min=0)
    ] = 0.001,
    max_tiles_per_slide: Annotated[
        int, typer.Option(help="Embeddings read per slide from feature files.", min=1)
    ] = 256,
    seed: Annotated[int, typer.Option(help="Seeds every random choice of the audit.")] = 0,
    quiet: Quiet = False,
) -> None:
    """Audit an encoder or its embeddings: does it see biology or the hospital?

    Writes OUT/audit.json (robustness_index, apd, clustering_score, stress, adversarial) and
    OUT/audit.html (plots, each with a one-line reading). From feature files only the
    representation metrics run; stress tests and attacks need --tiles and --encoder.
    Attack budgets are reported in the 0-1 pixel scale.
    """
    from histoguard._exceptions import HistoguardError
    from histoguard.robustness import (
        AttackSettings,
        AuditConfig,
        RobustnessIndexConfig,
        StressConfig,
        run_audit,
    )

    try:
        config = AuditConfig(
            parts=tuple(p.strip() for p in parts.split(",") if p.strip()),
            robustness_index=RobustnessIndexConfig(k=k, max_k=max_k),
            stress=StressConfig(tolerance=tolerance),
            attacks=AttackSettings(
                pgd_eps=tuple(float(e) / 255 for e in eps.split(",")),
                transfer_encoders=tuple(transfer_encoder or ()),
                slide_fraction=slide_fraction,
            ),
            max_tiles_per_slide=max_tiles_per_slide,
            seed=seed,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    try:
        outputs = run_audit(
            out, features=features, cohort=cohort, tiles=tiles, encoder=encoder, weights=weights,
            image_root=image_root, model=model, ood_centers=tuple(ood_center or ()),
            config=config, progress=not quiet, log=None if quiet else typer.echo,
        )  # fmt: skip
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    except HistoguardError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    typer.echo(f"audit: {outputs.json_path}\nreport: {outputs.html_path}")


@app.command()
def encoders(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the registered encoders with their embedding size, input size and licence."""
    from histoguard.encoders import list_encoders

    infos = [info.to_dict() for info in list_encoders()]
    if as_json:
        typer.echo(json.dumps(infos, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "dim", "input", "weights", "licence", "description")
    for info in infos:
        needs = (
            "needs file" + (" (gated)" if info["gated"] else "") if info["needs_weights"] else "-"
        )
        table.add_row(
            info["name"], str(info["embed_dim"]), str(info["input_size"]), needs,
            info["licence"], info["description"],
        )  # fmt: skip
    Console().print(table)


@app.command()
def info(
    slide: Annotated[Path, typer.Argument(help="A slide file.", show_default=False)],
    mpp_override: MppOverride = None,
    backend: Backend = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show a slide's levels, resolution (mpp), vendor and associated images."""
    from histoguard._exceptions import SlideError
    from histoguard.slide import slide_info

    try:
        facts = slide_info(slide, backend=backend, mpp_override=mpp_override)
    except SlideError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for key, value in facts.items():
        if key == "mpp" and value is None:
            value = "[red]unknown: pass --mpp-override[/red]"
        table.add_row(f"[bold]{key}[/bold]", str(value))
    Console().print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "histoguard-demo"
    ),
    slides: Annotated[
        list[Path] | None,
        typer.Option("--slides", help="Use these slides instead of the default one (repeatable)."),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Run the whole current pipeline offline: tissue detection, tiling at 0.5 µm/px, features
    from the built-in hand-crafted encoder, an ABMIL model trained from slide labels with its
    predictions and heatmaps, and a robustness audit of the built-in CNN on a simulated
    two-center cohort.

    Uses the real CMU-1 sample slide from the shared data when present ($HISTOGUARD_TEST_DATA
    or ../shared/data), otherwise a generated pyramidal TIFF; says which one ran.
    """
    from histoguard._demo import DEMO_ENCODER, run_demo

    result = run_demo(out, slides=slides or (), show_progress=not quiet)
    label = {
        "given": "the slides you gave",
        "real": "a real slide from the shared data",
        "generated": "a generated pyramidal TIFF (no real slide found)",
    }[result.source]
    typer.echo(f"Demo ran on {label}: {', '.join(str(s) for s in result.slides)}")
    typer.echo("Tiling:")
    _print_report(result.report)
    typer.echo(f"Features ({DEMO_ENCODER}):")
    _print_report(result.features_report)
    from histoguard.mil import format_table

    tiles = {"real": "real LC25000 lung tiles", "generated": "generated tiles"}
    typer.echo(
        f"Model: ABMIL, 3-fold patient-grouped cross-validation on pseudo-slides of "
        f"{tiles[result.training_source]} (tumour vs normal):"
    )
    typer.echo(format_table(result.training_report))
    for prediction in result.predictions:
        probabilities = " ".join(f"{k}={v:.3f}" for k, v in prediction.probabilities.items())
        typer.echo(
            f"Prediction for {prediction.slide}: {prediction.predicted} ({probabilities}); "
            "a lung model on this slide shows the mechanics, not a diagnosis"
        )
    audit = result.audit.audit
    ri = audit["robustness_index"]
    typer.echo(
        f"Audit of {audit['metadata']['subject']}: robustness index "
        + (f"{ri['value']:.2f} (1 = biology only, 0 = center only)" if "value" in ri else "skipped")
        + f"; report: {result.audit.html_path}"
    )
    for stem, paths in result.outputs().items():
        typer.echo(f"{stem}:")
        for kind, path in paths.items():
            typer.echo(f"  {kind:<10} {path}")
    if result.report.failed or result.features_report.failed:
        raise typer.Exit(code=1)


def _print_report(report: BatchReport) -> None:
    counts = report.counts()
    typer.echo(
        f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed, "
        f"{counts['flagged']} flagged; summary: {report.summary_path}"
    )
    for result in report.results:
        if result.status == "failed":
            typer.echo(f"  FAILED  {result.message}", err=True)
        elif result.flagged:
            typer.echo(
                f"  FLAGGED {result.slide}: {result.n_unreadable} unreadable tiles left out; "
                f"first error: {result.message}",
                err=True,
            )


def main() -> None:
    """Console entry point."""
    app()
