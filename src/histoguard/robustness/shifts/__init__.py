"""Distribution shifts: stain, scanner and geometric perturbations with severities, stress tests
of an encoder or a slide model under them, and simulated multi-center cohorts."""

# Imported for its registration side effect: the built-in perturbations fill the registry (the
# registry itself imports none of them).
from histoguard.robustness.shifts import _perturbations  # noqa: F401
