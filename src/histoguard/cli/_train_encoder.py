"""The ``train-encoder`` command: :func:`histoguard.encoders.train_encoder` on tiles read by the
robustness loaders (class folders, a tile table, or for SimCLR any folder of tiles)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from histoguard.cli._app import SEED_MAX, OutDir, Quiet, RegistryHelpCommand, app
from histoguard.errors import ConfigError


@app.command("train-encoder", cls=RegistryHelpCommand)
def train_encoder_command(
    tiles: Annotated[
        Path,
        typer.Argument(
            help="A folder of class folders (TILES/<class>/<tile> or "
            "TILES/<center>/<class>/<tile>), or a tile table (CSV/TSV: path or PathoROB "
            "patch_id, label, center, slide_id). With --objective simclr: any folder of tiles "
            "(every image below it; labels are not read) or a tile table.",
            show_default=False,
        ),
    ],
    encoder: Annotated[str, typer.Option(help="Encoder to train (a torch encoder): {encoders}.")],
    out: OutDir,
    objective: Annotated[
        Literal["supervised", "simclr"],
        typer.Option(
            help="supervised: cross-entropy on the tile classes. simclr: self-supervised "
            "(two augmented views of each tile, NT-Xent on a projection head; no labels), a "
            "warm start: pass its OUT/encoder.safetensors as --weights of a supervised run, or "
            "to extract.",
        ),
    ] = "supervised",
    weights: Annotated[
        Path | None, typer.Option(help="Initial weights (default: the seeded random init).")
    ] = None,
    epochs: Annotated[
        int, typer.Option(help="Most passes over the training tiles.", min=1, max=100000)
    ] = 10,
    batch_size: Annotated[
        int,
        typer.Option(help="Tiles per optimisation step (memory grows with it).", min=2, max=4096),
    ] = 32,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.", min=0, max=10)] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.", min=0, max=10)] = 1e-4,
    seed: Annotated[
        int,
        typer.Option(help="Seeds the split, batch order and augmentation.", min=0, max=SEED_MAX),
    ] = 0,
    val_fraction: Annotated[
        float,
        typer.Option(
            help="Share of the slides held out for early stopping (0: none, keep the last "
            "epoch). Validation never shares a slide with training.",
            min=0,
            max=0.99,
        ),
    ] = 0.2,
    patience: Annotated[
        int,
        typer.Option(
            help="Epochs without a better validation balanced accuracy.", min=1, max=100000
        ),
    ] = 3,
    augment: Annotated[
        list[str] | None,
        typer.Option(
            help="Training augmentation NAME or NAME:S (repeatable; each step applied to half "
            "the tiles at a severity drawn from 1..S): {perturbations}. Default: hed_jitter:3, "
            "colour_response:2, blur:2, jpeg:2, plus mirror/rot90/rot180 for encoders not "
            "already rotation-invariant. `--augment none`: no augmentation.",
        ),
    ] = None,
    contrastive_weight: Annotated[
        float,
        typer.Option(
            help="Weight of a supervised-contrastive loss whose positives are same-class tiles "
            "from another center (0: off).",
            min=0,
            max=100,
        ),
    ] = 0.0,
    temperature: Annotated[
        float,
        typer.Option(
            help="Softmax temperature of the contrastive losses (--contrastive-weight's and "
            "SimCLR's), on cosine similarities.",
            min=0.001,
            max=100,
        ),
    ] = 0.1,
    max_tiles: Annotated[
        int | None,
        typer.Option(help="Train on a seeded random subset of this many tiles.", min=1),
    ] = None,
    tile_size: Annotated[
        int | None,
        typer.Option(
            help="Side in pixels tiles are trained at (default: the encoder's input size, what "
            "`extract` feeds it). Smaller trains faster on a CPU.",
            min=8,
            max=8192,
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="Torch device (cpu, cuda, cuda:1).")] = "cpu",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run checkpointed in --out.")
    ] = False,
    image_root: Annotated[
        Path | None, typer.Option(help="Folder a tile table's images are in (default: its own).")
    ] = None,
    center: Annotated[
        str | None,
        typer.Option(help="Center of a one-level class-folder layout (default: its name)."),
    ] = None,
    slide_pattern: Annotated[
        str | None,
        typer.Option(
            help="Regex whose first group, in a class folder's file names, is the slide id "
            "(default: each tile its own slide)."
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Train an encoder from tile labels; its weights load with `extract --weights`.

    A linear head on the embedding is trained with class-weighted cross-entropy (plus the
    optional contrastive term), AdamW, and early stopping on the balanced accuracy of
    validation slides. Writes OUT/encoder.safetensors (the encoder's own weights: `histoguard
    extract --encoder NAME --weights OUT/encoder.safetensors`), OUT/encoder.json (data
    SHA-256, classes, centers, augmentation, config, per-epoch history, best epoch) and, after
    every epoch, OUT/checkpoint.safetensors + OUT/checkpoint.json for --resume. hg-d4 stays
    exactly invariant to 90° rotations and flips for any weights.
    """
    from histoguard.encoders import EncoderTrainingConfig, train_encoder
    from histoguard.robustness import load_class_folders, load_tile_table, load_unlabelled_tiles

    specs = tuple(augment) if augment is not None else None
    if specs is not None and [s.lower() for s in specs] == ["none"]:
        specs = ()
    config = EncoderTrainingConfig(
        encoder=encoder, objective=objective, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, seed=seed, val_fraction=val_fraction, patience=patience,
        augment=specs, contrastive_weight=contrastive_weight, temperature=temperature,
        max_tiles=max_tiles, tile_size=tile_size, device=device,
    )  # fmt: skip
    if tiles.is_dir():
        if image_root is not None:
            raise ConfigError("--image-root is for a tile table; TILES is a folder")
        load_folder = load_unlabelled_tiles if objective == "simclr" else load_class_folders
        dataset = load_folder(tiles, center=center, slide_pattern=slide_pattern)
    elif tiles.is_file():
        if center is not None or slide_pattern is not None:
            raise ConfigError(
                "--center and --slide-pattern are for class folders; a tile table has columns"
            )
        dataset = load_tile_table(tiles, image_root=image_root)
    else:
        raise ConfigError(f"{tiles}: no such folder or tile table; check the path")
    result = train_encoder(
        dataset, config, out, weights=weights, resume=resume, progress=not quiet,
        log=None if quiet else typer.echo,
    )  # fmt: skip
    accuracy, loss = result.val_balanced_accuracy, result.val_loss
    typer.echo(
        f"encoder: {result.weights} (epoch {result.best_epoch}"
        + ("" if accuracy is None else f", validation balanced accuracy {accuracy:.3f}")
        + ("" if accuracy is not None or loss is None else f", validation loss {loss:.4f}")
        + f")\nprovenance: {result.provenance}"
    )
