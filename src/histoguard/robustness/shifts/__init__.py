"""Distribution shifts: stain, scanner and geometric perturbations with severities, stress tests
of an encoder or a slide model under them, and simulated multi-center cohorts."""
