"""The `attacks` probe: L-inf FGSM and PGD over an ε grid, the minimal ε per image, gradient-masking self-checks.

Start with probe.py (the Probe: parameters, the sweep over the grid, the report's rows); engine.py
is the batched PGD/FGSM loop and the bisection, gradient_masking.py the checks on the attack
itself, figures.py the plots and the gallery.
"""

from auditor.probes.attacks.probe import AttacksProbe, parse_eps

__all__ = ["AttacksProbe", "parse_eps"]
