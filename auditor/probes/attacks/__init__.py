"""The `attacks` probe: an attack ensemble (APGD-CE, APGD-T, Square; per image the worst case) over an ε grid,
the minimal ε per image, gradient-masking self-checks that make the verdict SUSPECT.

Start with probe.py (the Probe: parameters, the report's rows and metrics); ensemble.py runs the members
on a batch (apgd.py, square.py are the attacks), sweep.py runs the ensemble over the grid and bisects the
minimal ε, engine.py is FGSM, the classic PGD and the bisection, gradient_masking.py the checks on the
attack itself, figures.py the plots and the gallery.
"""

from auditor.probes.attacks.probe import AttacksProbe, parse_eps

__all__ = ["AttacksProbe", "parse_eps"]
