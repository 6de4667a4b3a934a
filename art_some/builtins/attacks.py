"""The built-in attack recipes of the audit (``register_attacks``), each bounded (an L2 budget) or not."""
from art_some.hookspecs import hookimpl


@hookimpl
def register_attacks(register):
    from art_some.evaluation import attacks

    every = ("l1", "l2", "linf")
    register("pgd", attacks.pgd, bounded=True, norms=every,
             description="ART ProjectedGradientDescent, L1/L2/L-inf, EOT gradients (SmoothAdv)")
    register("apgd", attacks.apgd, bounded=True, norms=every,
             description="ART AutoProjectedGradientDescent, L1/L2/L-inf, EOT gradients")
    register("square", attacks.square, bounded=True, norms=("l2", "linf"),
             description="ART SquareAttack, L2/L-inf, on the smoothed vote counts")
    register("carlini", attacks.carlini, bounded=False, description="ART CarliniL2Method on the smoothed soft scores")
    register("deepfool", attacks.deepfool, bounded=False, description="ART DeepFool (L2) on the smoothed soft scores")
    register("hopskipjump", attacks.hopskipjump, bounded=False, norms=("l2", "linf"),
             description="ART HopSkipJump (L2/L-inf) on the smoothed decision")
    register("boundary", attacks.boundary, bounded=False, description="ART BoundaryAttack on the smoothed decision")
