"""
Attack recipes for the attack-vs-certificate audit: ART's own attacks, configured to attack the *smoothed*
classifier (its Monte-Carlo gradients, its vote-count scores or its decision), registered through the
``register_attacks`` hook so that plugins can add theirs.

A recipe is ``recipe(estimator, eps=None, norm="l2", **budget) -> art.attacks.EvasionAttack``. Budgeted recipes
(``bounded``) search within a ball of radius ``eps`` in ``norm`` and the audit runs them on a grid of radii;
minimal-perturbation recipes ignore ``eps`` and return their own smallest adversarial point. Each registration
says the norms its recipe attacks in; the audit runs only those of the certificate's norm.
"""
from __future__ import annotations

import numpy as np

# ART's name for each norm.
ART_NORMS = {"l1": 1, "l2": 2, "linf": np.inf}


def vote_counts(estimator):
    """
    The estimator whose ``predict`` the attacks read: the vote counts, not ART's one-hot rows (APGD refuses scores
    that sum to one as probabilities; Square, Carlini-Wagner and DeepFool need scores that move). A shallow copy
    when the estimator gives one-hot rows (the caller's is left as it is); the audit's attack view already counts.
    """
    if estimator.predict_output == "counts":
        return estimator
    # Not copy.copy: ART's __getstate__ would save the network to files and load a second one.
    view = object.__new__(type(estimator))
    view.__dict__.update(estimator.__dict__)
    view.predict_output = "counts"
    return view


def pgd(estimator, eps: float, max_iter: int = 20, eps_step: float | None = None, num_random_init: int = 0,
        batch_size: int = 32, norm: str = "l2"):
    """PGD on the smoothed cross-entropy -log G_y (the SmoothAdv attack of Salman et al.; EOT gradients)."""
    from art.attacks.evasion import ProjectedGradientDescent

    return ProjectedGradientDescent(vote_counts(estimator), norm=ART_NORMS[norm], eps=eps,
                                    eps_step=eps_step or 2.5 * eps / max_iter, max_iter=max_iter,
                                    num_random_init=num_random_init, batch_size=batch_size, verbose=False)


def apgd(estimator, eps: float, max_iter: int = 20, nb_random_init: int = 1, batch_size: int = 32,
         norm: str = "l2"):
    """
    Auto-PGD on the smoothed classifier's EOT loss and gradients. ``loss_type=None`` on purpose: with a named
    loss ART replaces a PyTorchClassifier by a plain one around ``estimator.model``, the noise-free base network.
    """
    from art.attacks.evasion import AutoProjectedGradientDescent

    return AutoProjectedGradientDescent(vote_counts(estimator), norm=ART_NORMS[norm], eps=eps,
                                        eps_step=2 * eps / max_iter, max_iter=max_iter, nb_random_init=nb_random_init,
                                        batch_size=batch_size, loss_type=None, verbose=False)


def square(estimator, eps: float, max_iter: int = 100, nb_restarts: int = 1, batch_size: int = 32,
           norm: str = "l2"):
    """Square attack on the smoothed vote counts (the scores the audit's attack view's ``predict`` returns)."""
    from art.attacks.evasion import SquareAttack

    return SquareAttack(vote_counts(estimator), norm=ART_NORMS[norm], eps=eps, max_iter=max_iter,
                        nb_restarts=nb_restarts, batch_size=batch_size, verbose=False)


def carlini(estimator, eps=None, max_iter: int = 10, binary_search_steps: int = 5, learning_rate: float = 0.05,
            initial_const: float = 0.1, batch_size: int = 16):
    """Carlini-Wagner L2 on the smoothed soft scores (``class_gradient``)."""
    from art.attacks.evasion import CarliniL2Method

    return CarliniL2Method(vote_counts(estimator), confidence=0.0, learning_rate=learning_rate,
                           binary_search_steps=binary_search_steps, max_iter=max_iter, initial_const=initial_const,
                           batch_size=batch_size, verbose=False)


def deepfool(estimator, eps=None, max_iter: int = 20, epsilon: float = 0.02, batch_size: int = 16):
    """DeepFool (L2) on the smoothed soft scores (``class_gradient``)."""
    from art.attacks.evasion import DeepFool

    return DeepFool(vote_counts(estimator), max_iter=max_iter, epsilon=epsilon, nb_grads=estimator.nb_classes,
                    batch_size=batch_size, verbose=False)


def hopskipjump(estimator, eps=None, max_iter: int = 5, max_eval: int = 200, init_eval: int = 20,
                init_size: int = 20, batch_size: int = 64, norm: str = "l2"):
    """HopSkipJump on the smoothed decision (the argmax of the vote counts)."""
    from art.attacks.evasion import HopSkipJump

    return HopSkipJump(vote_counts(estimator), norm=ART_NORMS[norm], max_iter=max_iter, max_eval=max_eval,
                       init_eval=init_eval, init_size=init_size, batch_size=batch_size, verbose=False)


def boundary(estimator, eps=None, max_iter: int = 50, num_trial: int = 10, sample_size: int = 10,
             init_size: int = 20, batch_size: int = 64):
    """The Boundary attack on the smoothed decision."""
    from art.attacks.evasion import BoundaryAttack

    return BoundaryAttack(vote_counts(estimator), targeted=False, max_iter=max_iter, num_trial=num_trial,
                          sample_size=sample_size, init_size=init_size, batch_size=batch_size, verbose=False)
