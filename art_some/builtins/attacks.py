"""The built-in attack recipes of the audit (``register_attacks``), each bounded (an L2 budget) or not."""
from art_some.hookspecs import hookimpl


@hookimpl
def register_attacks(register):
    from art_some.evaluation import attacks

    register("pgd", attacks.pgd, bounded=True,
             description="ART ProjectedGradientDescent, L2, EOT gradients (SmoothAdv)")
    register("apgd", attacks.apgd, bounded=True, description="ART AutoProjectedGradientDescent, L2, EOT gradients")
    register("square", attacks.square, bounded=True, description="ART SquareAttack, L2, on the smoothed vote counts")
    register("carlini", attacks.carlini, bounded=False, description="ART CarliniL2Method on the smoothed soft scores")
    register("deepfool", attacks.deepfool, bounded=False, description="ART DeepFool on the smoothed soft scores")
    register("hopskipjump", attacks.hopskipjump, bounded=False,
             description="ART HopSkipJump on the smoothed decision")
    register("boundary", attacks.boundary, bounded=False, description="ART BoundaryAttack on the smoothed decision")
