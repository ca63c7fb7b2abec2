"""Distribution shifts: stress tests of an encoder or a slide model under the stain, scanner and
geometric perturbations of :mod:`histoguard.augment`, and simulated multi-center cohorts."""
