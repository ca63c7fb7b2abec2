"""The ``audit`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoguard.cli._app import (
    SEED_MAX,
    OutDir,
    Quiet,
    RegistryHelpCommand,
    app,
)
from histoguard.errors import ConfigError


@app.command(cls=RegistryHelpCommand)
def audit(
    out: OutDir,
    features: Annotated[
        Path | None, typer.Option(help="Folder of <slide_id>.h5 feature files (with --cohort).")
    ] = None,
    cohort: Annotated[
        Path | None,
        typer.Option(help="Cohort table: slide_id, label, center (applied to all its tiles)."),
    ] = None,
    compare: Annotated[
        tuple[Path, Path] | None,
        typer.Option(
            help="Two folders of feature files of the same slides (e.g. before and after "
            "`histoguard harmonize`), with --cohort: writes OUT/comparison.json and "
            "OUT/comparison.html instead of an audit.",
            metavar="BEFORE AFTER",
        ),
    ] = None,
    tiles: Annotated[
        Path | None,
        typer.Option(
            help="Tile table: path (or PathoROB patch_id), label, center, slide_id "
            "(with --encoder). The PathoROB layout is accepted as is."
        ),
    ] = None,
    encoder: Annotated[
        str | None, typer.Option(help="Encoder to audit on --tiles: {encoders}.")
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
    ] = "robustness_index,apd,clustering_score,site_probe,stress,adversarial",
    k: Annotated[
        int | None,
        typer.Option(
            help="Neighbours for the robustness index (default: best kNN accuracy).", min=1
        ),
    ] = None,
    max_k: Annotated[int, typer.Option(help="Largest k of the RI(k) curve.", min=1)] = 100,
    tolerance: Annotated[
        float,
        typer.Option(
            help="Accuracy drop (fraction, 0-1) a perturbation may cause and still pass.",
            min=0,
            max=1,
        ),
    ] = 0.05,
    eps: Annotated[
        str, typer.Option(help="PGD L-inf budgets, comma-separated, in 0-255 pixel units.")
    ] = "1,2,4,8",
    transfer_encoder: Annotated[
        list[str] | None,
        typer.Option(
            help="Encoder the universal perturbation is transferred to (repeatable; names as "
            "for --encoder)."
        ),
    ] = None,
    slide_fraction: Annotated[
        float,
        typer.Option(
            help="Share (0-1) of each slide's tiles the slide attack perturbs.", min=0, max=1
        ),
    ] = 0.001,
    max_tiles_per_slide: Annotated[
        int, typer.Option(help="Embeddings read per slide from feature files.", min=1)
    ] = 256,
    seed: Annotated[
        int, typer.Option(help="Seeds every random choice of the audit.", min=0, max=SEED_MAX)
    ] = 0,
    quiet: Quiet = False,
) -> None:
    """Audit an encoder or its embeddings: does it see biology or the hospital?

    Writes OUT/audit.json (schema_version, metadata, robustness_index, apd, clustering_score,
    site_probe, stress, adversarial) and OUT/audit.html (plots, each with a one-line reading
    that says "inconclusive" when a confidence interval spans its threshold). The site probe is
    the out-of-fold AUROC (0.5 = chance, 1 = the center is always recognised) of a linear probe
    predicting the center, cross-validated with folds grouped by slide. From feature files only
    the representation metrics run; stress tests and attacks need --tiles and --encoder.
    --compare BEFORE AFTER puts RI, site-probe AUROC, APD, clustering score and the biological
    task's balanced accuracy (slide-grouped linear probe) before and after side by side, each
    with its 95 % interval and the change (paired slide bootstrap for the two probes).
    A k-fold --model is used as the average of its folds, as `histoguard predict` does.
    Attack budgets are reported in the 0-1 pixel scale.
    """
    from histoguard.report import write_audit_page
    from histoguard.robustness import (
        AUDIT_JSON,
        AttackSettings,
        AuditConfig,
        RobustnessIndexConfig,
        StressConfig,
        run_audit,
    )

    try:
        budgets = tuple(float(e) / 255 for e in eps.split(","))
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated numbers such as 1,2,4,8, got {eps!r}", param_hint="--eps"
        ) from None
    config = AuditConfig(
        parts=tuple(p.strip() for p in parts.split(",") if p.strip()),
        robustness_index=RobustnessIndexConfig(k=k, max_k=max_k),
        stress=StressConfig(tolerance=tolerance),
        attacks=AttackSettings(
            pgd_eps=budgets,
            transfer_encoders=tuple(transfer_encoder or ()),
            slide_fraction=slide_fraction,
        ),
        max_tiles_per_slide=max_tiles_per_slide,
        seed=seed,
    )
    if compare is not None:
        from histoguard.report import write_comparison_page
        from histoguard.robustness import COMPARISON_JSON, run_comparison

        if cohort is None or features is not None or tiles is not None:
            raise ConfigError("--compare BEFORE AFTER takes --cohort, and no --features / --tiles")
        comparison = run_comparison(compare[0], compare[1], cohort, out, config=config)
        page = write_comparison_page(comparison, out / "comparison.html")
        typer.echo(f"comparison: {out / COMPARISON_JSON}\nreport: {page}")
        return
    result = run_audit(
        out, features=features, cohort=cohort, tiles=tiles, encoder=encoder, weights=weights,
        image_root=image_root, model=model, ood_centers=tuple(ood_center or ()),
        config=config, progress=not quiet,
    )  # fmt: skip
    page = write_audit_page(result, out / "audit.html")
    typer.echo(f"audit: {out / AUDIT_JSON}\nreport: {page}")
