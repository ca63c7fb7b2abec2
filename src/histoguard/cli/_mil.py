"""Slide-model commands: ``train``, ``predict``, ``evaluate`` and ``compare``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from histoguard.cli._app import (
    SEED_MAX,
    OutDir,
    Quiet,
    RegistryHelpCommand,
    app,
)
from histoguard.cli._bounds import writable_out_dir


@app.command(cls=RegistryHelpCommand)
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
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Output folder (must be writable).", callback=writable_out_dir
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="MIL model: {mil_models}."),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="kfold (patient-grouped, stratified), leave-one-center-out, or given."),
    ] = None,
    k: Annotated[int | None, typer.Option(help="Folds for kfold.", min=2, max=100)] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Maximum epochs per split.", min=1, max=100000)
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.", min=0, max=SEED_MAX)] = None,
    patience: Annotated[
        int | None, typer.Option(help="Early-stopping patience (epochs).", min=1, max=100000)
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help="AdamW learning rate.", min=0, max=10),
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="AdamW weight decay.", min=0, max=10)
    ] = None,
    max_instances: Annotated[
        int | None, typer.Option(help="Subsample bags to at most this many tiles per step.", min=1)
    ] = None,
    class_balanced: Annotated[
        bool | None,
        typer.Option(
            "--class-balanced/--no-class-balanced", help="Inverse-frequency loss weights."
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Decision threshold on the positive-class probability for "
            "sensitivity/specificity (strictly between 0 and 1).",
            min=0,
            max=1,
        ),
    ] = None,
    n_boot: Annotated[
        int | None, typer.Option(help="Bootstrap resamples for CIs.", min=1, max=100000)
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            help="Models per split with seeds seed, seed+1, ... (ensemble).", min=1, max=100
        ),
    ] = None,
    calibration_fraction: Annotated[
        float | None,
        typer.Option(
            help="Share of slides (whole patients) held out from every split for calibration, "
            "conformal sets and the out-of-distribution gate (default 0.2; 0 = none; below 1).",
            min=0,
            max=1,
        ),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(
            help="Conformal miscoverage: sets hold the truth with prob. >= 1 - alpha "
            "(strictly between 0 and 1).",
            min=0,
            max=1,
        ),
    ] = None,
    mondrian: Annotated[
        str | None,
        typer.Option(help="Conformal guarantee per 'class' (default), per 'center', or 'none'."),
    ] = None,
    ood_alpha: Annotated[
        float | None,
        typer.Option(
            help="Gate level: a slide with p-value <= this is out of distribution "
            "(strictly between 0 and 1).",
            min=0,
            max=1,
        ),
    ] = None,
    harmonize: Annotated[
        str | None,
        typer.Option(
            help="Remove center effects from the features first: none (default), combat or "
            "covbat; fitted per split on its training slides (needs a center column), saved "
            "with the model, applied by predict."
        ),
    ] = None,
    adversarial_weight: Annotated[
        float | None,
        typer.Option(
            help="Center-adversarial training: lambda_max of a gradient-reversed center head "
            "on the bag embedding (DANN schedule; default 0 = off; needs >= 2 training centers).",
            min=0,
            max=100,
        ),
    ] = None,
    adversarial_unlabelled: Annotated[
        bool | None,
        typer.Option(
            "--adversarial-unlabelled",
            help="The center adversary also sees each split's held-out test slides as "
            "unlabelled bags of their centers (features only, labels never read; transductive; "
            "lets leave-one-center-out use it). Needs --adversarial-weight > 0.",
        ),
    ] = None,
    contrastive_weight: Annotated[
        float | None,
        typer.Option(
            help="Weight of a supervised-contrastive loss pulling same-class bags of other "
            "centers together (default 0 = off).",
            min=0,
            max=100,
        ),
    ] = None,
    contrastive_temperature: Annotated[
        float | None,
        typer.Option(
            help="Temperature of the contrastive loss, on cosine similarities (default 0.1).",
            min=0.001,
            max=100,
        ),
    ] = None,
    bags_per_step: Annotated[
        int | None,
        typer.Option(
            help="Bags averaged into one optimiser step (default 1; 8 with a contrastive loss; "
            "memory grows with it).",
            min=1,
            max=1024,
        ),
    ] = None,
    pad_batches: Annotated[
        bool | None,
        typer.Option(
            "--pad-batches",
            help="Run each step's --bags-per-step bags as one zero-padded batch (one forward "
            "and backward pass; the batch loss is the class-weighted mean).",
        ),
    ] = None,
    model_kwargs: Annotated[
        str | None, typer.Option(help="Model settings as JSON, e.g. '{\"hidden_dim\": 256}'.")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Train a MIL model from slide labels on every split of the chosen design; writes models
    (safetensors + JSON), predictions, and per-fold and per-center metrics with bootstrap CIs.
    Calibration slides held out from every split fit temperature scaling, conformal prediction
    sets and the out-of-distribution gate (trust.json); metrics then report calibration,
    coverage per class and center, and selective accuracy on the test slides. Optional
    training-time robustness: --adversarial-weight, --contrastive-weight (docs/robustify.md).
    """
    from histoguard.mil import load_train_config
    from histoguard.mil import train as run_training

    settings = load_train_config(
        config, cohort=cohort, features=features, out=out, model=model, split=split, k=k,
        epochs=epochs, seed=seed, patience=patience, lr=lr, weight_decay=weight_decay,
        max_instances=max_instances, class_balanced=class_balanced, threshold=threshold,
        n_boot=n_boot, model_kwargs=_json_mapping("--model-kwargs", model_kwargs), seeds=seeds,
        calibration_fraction=calibration_fraction, alpha=alpha, mondrian=mondrian,
        ood_alpha=ood_alpha, harmonize=harmonize, adversarial_weight=adversarial_weight,
        adversarial_unlabelled=adversarial_unlabelled, contrastive_weight=contrastive_weight,
        contrastive_temperature=contrastive_temperature, bags_per_step=bags_per_step,
        pad_batches=pad_batches,
    )  # fmt: skip
    if out is None:  # the folder named in the settings file gets the check --out has had
        try:
            writable_out_dir(settings.out)
        except typer.BadParameter as error:
            raise typer.BadParameter(error.message, param_hint=f"out in {config}") from None
    result = run_training(settings, log=typer.echo, progress=not quiet)
    typer.echo(result.table)
    typer.echo(f"outputs: {result.out}")


def _json_mapping(option: str, text: str | None) -> dict[str, Any] | None:
    """The JSON object given to ``option``, or None when it was not given."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise typer.BadParameter(
            f"not valid JSON ({error.msg} at column {error.colno}); "
            "write an object such as '{\"hidden_dim\": 256}'",
            param_hint=option,
        ) from None
    if not isinstance(value, dict):
        raise typer.BadParameter(f"expected a JSON object, got {text!r}", param_hint=option)
    return value


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
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Predict even from features of another encoder, weights, mpp or tile size "
            "than the model was trained on.",
        ),
    ] = False,
    slide: Annotated[
        list[Path] | None,
        typer.Option(
            "--slide",
            help="A slide, matched to its feature file by stem (repeatable): for heatmaps of "
            "CLAM/TRIDENT files, which do not record their slide, and of --anonymize features "
            "(matched by anon id, with --anonymize-salt).",
        ),
    ] = None,
    anonymize_salt: Annotated[
        Path | None,
        typer.Option(
            "--anonymize-salt",
            help="The salt file of an --anonymize extraction (never created here): each "
            "--slide is matched to its feature file by its anon id, and messages name it by "
            "that id only.",
            show_default=False,
        ),
    ] = None,
    top_k: Annotated[int, typer.Option(help="Tiles in the top-tile gallery.", min=0)] = 16,
    centers: Annotated[
        Path | None,
        typer.Option(
            help="CSV with slide_id and center columns (a cohort table will do), for a model "
            "calibrated per center; required by a model trained with --harmonize."
        ),
    ] = None,
    mc_dropout: Annotated[
        int,
        typer.Option(
            help="Extra MC-dropout passes per model for the uncertainty.", min=0, max=1000
        ),
    ] = 0,
    batch_test: Annotated[
        bool,
        typer.Option(
            "--batch-test/--no-batch-test",
            help="Test the whole batch for drift from the training slides (>= 5 slides).",
        ),
    ] = True,
    tta: Annotated[
        bool,
        typer.Option(
            "--tta/--no-tta",
            help="Test-time augmentation: average the probabilities over the augmented views "
            "stored in the feature files (extract --views K --views-mode store).",
        ),
    ] = False,
) -> None:
    """Predict slides and say which predictions to trust: OUT/predictions.csv and .json (the
    decision, class or review with its reason, prediction set, calibrated probabilities,
    out-of-distribution p-value, uncertainty), OUT/tiles.csv (one row per tile: name or
    coordinates, attention and its rank, tile entropy and probabilities) and heatmaps of
    attention and tile uncertainty (PNG overlays, top-tile gallery, QuPath GeoJSON measurement
    map; for tile folders galleries of the most and least attended tiles). Refuses features
    from another encoder or scale than the model's unless --force."""
    from histoguard.core._privacy import Anonymizer
    from histoguard.core._tables import read_slide_centers
    from histoguard.mil import predict as run_prediction

    anonymizer = Anonymizer.load(anonymize_salt, create=False) if anonymize_salt else None
    results = run_prediction(
        model, feature_files, out, force=force, slides=slide or (),
        centers=read_slide_centers(centers) if centers else None, mc_dropout=mc_dropout,
        batch_test=batch_test, tta=tta, anonymizer=anonymizer,
    )  # fmt: skip
    for r in results:
        typer.echo(f"{r.slide}: {r.summary()}")
        for warning in r.warnings:
            typer.echo(f"  warning: {warning}", err=True)
    typer.echo(f"predictions: {out / 'predictions.csv'}, predictions.json and tiles.csv")
    if not no_heatmaps:
        from histoguard.report import write_prediction_heatmaps

        drawn = write_prediction_heatmaps(results, out, top_k=top_k)
        for warning in drawn.warnings:
            typer.echo(f"  warning: {warning}", err=True)
        n_files = sum(len(paths) for paths in drawn.paths.values())
        typer.echo(f"heatmaps: {n_files} files for {len(drawn.paths)} slides in {out}")
    from histoguard.mil._prediction import PREDICTIONS_JSON

    # predict lists the slides it could not read in its JSON; the CLI reports them from there.
    failed = json.loads((out / PREDICTIONS_JSON).read_text())["failed"]
    for entry in failed:
        typer.echo(f"histoguard predict: error: {entry['reason']}", err=True)
    if failed:
        typer.echo(f"{len(failed)} of {len(results) + len(failed)} slides failed (decision "
                   f"'failed' in {out / 'predictions.csv'})", err=True)  # fmt: skip
        raise typer.Exit(1)


@app.command()
def evaluate(
    model: Annotated[
        Path, typer.Option(help="A `histoguard train` output folder or one fold_i folder.")
    ],
    cohort: Annotated[
        Path, typer.Option(help="Labelled slides the model never saw: slide_id, label[, center].")
    ],
    features: Annotated[Path, typer.Option(help="Folder of <slide_id>.h5 feature files.")],
    out: OutDir,
    force: Annotated[
        bool, typer.Option("--force", help="Accept features of another provenance.")
    ] = False,
    ood: Annotated[
        list[Path] | None,
        typer.Option(
            help="Feature file of a slide known to come from elsewhere (repeatable): adds the "
            "gate's AUROC, detection rate and batch test against the cohort's slides."
        ),
    ] = None,
    n_boot: Annotated[
        int, typer.Option(help="Bootstrap resamples for CIs.", min=1, max=100000)
    ] = 1000,
) -> None:
    """How far a model can be trusted on labelled slides: calibration (ECE, Brier, NLL)
    before and after scaling, conformal coverage per class and center with Clopper-Pearson
    intervals, selective accuracy and the gate's false alarms. Writes OUT/evaluation.json,
    evaluation.txt, reliability.png and the predictions."""
    from histoguard.mil import evaluate as run_evaluation
    from histoguard.mil import format_trust_report
    from histoguard.report import write_reliability_diagram
    from histoguard.uncertainty import reliability_diagram

    result = run_evaluation(
        model, cohort, features, out, force=force, ood_features=ood or (), n_boot=n_boot
    )
    typer.echo(format_trust_report(result.report))
    ev = result.evaluation
    diagram = write_reliability_diagram(
        {
            "before scaling": reliability_diagram(ev.raw_probabilities, ev.labels),
            "after scaling": reliability_diagram(ev.probabilities, ev.labels),
        },
        out / "reliability.png",
        title=f"{model.name}: {len(ev.labels)} slides of {cohort.name}",
    )
    typer.echo(f"evaluation: {out / 'evaluation.json'}, {diagram}")


@app.command()
def compare(
    random_run: Annotated[Path, typer.Argument(help="A `train` output with split kfold.")],
    site_run: Annotated[Path, typer.Argument(help="A `train` output with leave-one-center-out.")],
) -> None:
    """Show random-split and site-aware estimates side by side, with the difference: how much a
    random split overestimates performance at a new hospital."""
    from histoguard.mil import compare_designs
    from histoguard.mil._compare import read_run_for_comparison

    random_report, _ = read_run_for_comparison(random_run)
    site_report, training = read_run_for_comparison(site_run)
    typer.echo(compare_designs(random_report, site_report, training_slides=training))
