"""Adversarial attacks: PGD per tile, universal perturbations, and the slide-level attack on the
most attended tiles of a MIL model."""
