"""``train-end-to-end``: an encoder and a MIL head trained jointly from slide labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoguard.cli._app import SEED_MAX, OutDir, Quiet, RegistryHelpCommand, app
from histoguard.cli._mil import _json_mapping


@app.command("train-end-to-end", cls=RegistryHelpCommand)
def train_end_to_end(
    cohort: Annotated[
        Path, typer.Option(help="Cohort table: slide_id, label[, patient_id, center, split].")
    ],
    tiles: Annotated[
        Path,
        typer.Option(
            help="Folder with one folder of tile images per slide_id (TILES/<slide_id>/)."
        ),
    ],
    out: OutDir,
    encoder: Annotated[
        str, typer.Option(help="Trainable encoder (torch parameters), e.g. hg-d4, hg-cnn.")
    ] = "hg-d4",
    weights: Annotated[
        Path | None, typer.Option(help="Encoder weights to start from (default: random init).")
    ] = None,
    model: Annotated[str, typer.Option(help="MIL head: {mil_models}.")] = "abmil",
    model_kwargs: Annotated[
        str | None, typer.Option(help="MIL head settings as JSON, e.g. '{\"hidden_dim\": 64}'.")
    ] = None,
    split: Annotated[
        str, typer.Option(help="kfold (patient-grouped; one fold trained) or given (split column).")
    ] = "kfold",
    k: Annotated[int, typer.Option(help="Folds of kfold.", min=2, max=100)] = 5,
    fold: Annotated[
        int,
        typer.Option(
            help="Which kfold fold to train (0 to --k minus 1); its test part is held out.",
            min=0,
            max=99,
        ),
    ] = 0,
    epochs: Annotated[
        int,
        typer.Option(help="Maximum epochs (one step per training slide).", min=1, max=100000),
    ] = 10,
    patience: Annotated[
        int, typer.Option(help="Early-stopping patience (epochs).", min=1, max=100000)
    ] = 3,
    lr_encoder: Annotated[
        float, typer.Option(help="AdamW learning rate of the encoder.", min=0, max=10)
    ] = 1e-4,
    lr_head: Annotated[
        float, typer.Option(help="AdamW learning rate of the MIL head.", min=0, max=10)
    ] = 2e-4,
    tiles_with_grad: Annotated[
        int,
        typer.Option(
            help="Tiles per step re-encoded with gradient (half most-attended, half random); "
            "the rest of the bag is encoded without gradient. Sets the encoder's memory.",
            min=1,
        ),
    ] = 32,
    max_tiles_per_bag: Annotated[
        int | None,
        typer.Option(
            help="Random subset of at most this many tiles per training step (default: all).",
            min=1,
        ),
    ] = None,
    checkpointing: Annotated[
        bool,
        typer.Option(
            "--checkpointing/--no-checkpointing",
            help="Recompute the gradient tiles' activations in the backward pass, a micro-batch "
            "at a time, instead of keeping them.",
        ),
    ] = True,
    device: Annotated[
        str, typer.Option(help="Torch device: cpu, cuda, cuda:1 (bfloat16 AMP on CUDA).")
    ] = "cpu",
    seed: Annotated[int, typer.Option(help="Random seed.", min=0, max=SEED_MAX)] = 0,
    n_boot: Annotated[
        int, typer.Option(help="Bootstrap resamples for the metrics' CIs.", min=1, max=100000)
    ] = 1000,
    quiet: Quiet = False,
) -> None:
    """Train an encoder and a MIL head jointly from slide labels (one split), with memory that
    does not grow with the bag: each step encodes all tiles without gradient, picks
    --tiles-with-grad of them by attention (top half) and at random, and back-propagates
    through those only. Writes the trained encoder (encoder.safetensors + encoder.json; load it
    with `extract --encoder NAME --weights OUT/encoder.safetensors`), the head as `train`
    does (fold_<i>/, usable by `predict` on those features), predictions.csv and metrics of the
    held-out test slides.
    """
    from histoguard.mil import EndToEndConfig
    from histoguard.mil import train_end_to_end as run

    settings = EndToEndConfig(
        cohort=cohort, tiles=tiles, out=out, encoder=encoder, encoder_weights=weights,
        model=model, model_kwargs=_json_mapping("--model-kwargs", model_kwargs) or {},
        split=split, k=k, fold=fold, epochs=epochs, patience=patience, lr_encoder=lr_encoder,  # type: ignore[arg-type]
        lr_head=lr_head, tiles_with_grad=tiles_with_grad, max_tiles_per_bag=max_tiles_per_bag,
        checkpointing=checkpointing, device=device, seed=seed, n_boot=n_boot,
    )  # fmt: skip
    result = run(settings, log=None if quiet else typer.echo)
    typer.echo(result.table)
    typer.echo(f"outputs: {result.out}")
