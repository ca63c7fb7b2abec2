"""The ``histoguard`` command line: every command is one library call."""

# Command modules register their commands on ``app`` when imported; the order here is the order
# of ``histoguard --help``.
# isort: off
from histoguard.cli import _slides as _slides
from histoguard.cli import _features as _features
from histoguard.cli import _train_encoder as _train_encoder
from histoguard.cli import _harmonize as _harmonize
from histoguard.cli import _mil as _mil
from histoguard.cli import _end_to_end as _end_to_end
from histoguard.cli import _audit as _audit
from histoguard.cli import _report as _report
from histoguard.cli import _serve as _serve
from histoguard.cli import _demo as _demo

# isort: on
from histoguard.cli._app import app, main

__all__ = ["app", "main"]
