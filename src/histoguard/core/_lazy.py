"""Names a package imports on first use: its ``__getattr__`` and ``__dir__`` from one table.

A room re-exports a few names whose modules pull in heavy libraries (torch, matplotlib); they
stay in ``__all__`` and in ``dir()``, are typed through ``TYPE_CHECKING`` imports, and are
imported when first asked for, so ``import histoguard.<room>`` stays cheap.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_attributes(
    package: str, table: Mapping[str, str], public: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``.

    Args:
        package: the package's ``__name__``.
        table: public name -> the module that defines it (imported on first use).
        public: the package's ``__all__`` (listed by ``dir()`` before they are imported).
    """

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *public})

    return __getattr__, __dir__
