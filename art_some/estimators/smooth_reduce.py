"""
SmoothReduceClassifier: randomized smoothing of a patch-aggregating base classifier (Smooth-Reduce, Joshi et al.),
with certificates that hold.

The vote for one noisy input: crop P patches, run the base model on all of them in one forward pass, reduce the P
score vectors class-wise (max, mean, or a plugin's rule), take the argmax. Where the noise goes decides what the
vote counts certify:

- ``noise_mode="shared"`` (default): one Gaussian draw on the whole (resized) input, then crop. The vote is a fixed
  function of the noisy input, so Cohen et al.'s radius sigma * Phi^-1(pA_lower) holds as is.
- ``noise_mode="independent"``: a draw per patch (the official code). Cohen's radius then holds in the space of
  stacked patches, and mapping back divides it by sqrt(m_max), the largest number of patches covering one pixel.
- ``unsound_paper_radius=True``: independent noise with the uncorrected radius, as the paper reports; it overstates
  radii by up to sqrt(P) and warns on every use. For reproducing published numbers only.
- ``certificate="vote_average"``: the vote-averaged Smooth-Mean, p^c = mean over patches of P(patch votes c), a
  Gaussian smoothing of a [0, 1]-valued function in either noise mode, so sigma * Phi^-1 of its lower bound
  (Hoeffding or empirical Bernstein) is a sound radius without any coverage correction.

A resize of the whole input before the noise (the paper's 32 to 36) puts the certificate in the resized space;
``radius_space="input"`` (default) divides by the resize's operator norm, computed from the resize itself.

| Paper link: https://arxiv.org/abs/2205.06154
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

import numpy as np

from art_some.core.errors import UnsoundCertificateWarning, warn_unsound  # noqa: F401 (re-exported)
from art_some.core.noise import INVALID, argmax_votes
from art_some.core.rules import ABSTAIN, CertificateRule, CohenRule, ScaledRule, Tally, certifies
from art_some.core.smoothing import Smooth
from art_some.core.stats import bernstein_lower, hoeffding_lower
from art_some.core.validate import choice, probability
from art_some.estimators.smoothed import SmoothedClassifier
from art_some.patches import RESIZE_MODES, PatchLayout, make_layout, resize, resize_operator_norm

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

NOISE_MODES = ("shared", "independent")
SCORES = ("softmax", "logits")
CERTIFICATES = ("votes", "vote_average")
BOUNDS = ("bernstein", "hoeffding")
RADIUS_SPACES = ("input", "resized")


PAPER_RULE_WARNING = (
    "unsound_paper_radius=True: independent noise per patch with the uncorrected radius sigma * Phi^-1(pA_lower), "
    "as Smooth-Reduce reports; these radii can exceed the true robust radius by up to sqrt(m_max) = {factor:.2f}x "
    "and are not certificates. Use them only to reproduce published numbers."
)


class SmoothReduceClassifier(SmoothedClassifier):
    """
    Gaussian smoothing of the patch-aggregating classifier h(z) = argmax_c agg_i s(f(T_i z))_c, where T_i crops patch
    i (and optionally resizes it to the model's input size) and s is the softmax (or the identity on logits).

    | Paper link: https://arxiv.org/abs/2205.06154

    The constructor takes :class:`SmoothedClassifier`'s arguments (``input_shape`` is the full input, ``(C, H, W)``
    or a video's ``(C, T, H, W)``; ``model`` maps one patch batch ``(B, C, *patch)`` to logits), then:

    :param patches: A :class:`~art_some.patches.PatchLayout` in the noise space (after ``resize``), or a dict
                    ``{"layout": "grid" | "random" | "corners", "size": ..., **options}`` (grid: ``stride``,
                    ``num_patches``; random: ``num_patches``, ``seed``, ``replace``). ``size`` is one int for a square
                    patch or one entry per non-channel axis, None spanning an axis (a video window is
                    ``(L, None, None)``).
    :param aggregation: A registered aggregation name (``max``, ``mean``, ``min``, or a plugin's) or a callable
                        ``(B, P, C) -> (B, C)``.
    :param noise_mode: ``"shared"`` (one draw, then crop; default) or ``"independent"`` (a draw per patch).
    :param resize: Spatial size the whole input is resized to before the noise (the paper: 36 for CIFAR-10, 256
                   for ImageNet), or None.
    :param patch_resize: Spatial size each noisy patch is resized to before the model (the paper's v2), or None.
    :param resize_mode: ``"linear"`` (bilinear/trilinear, default), ``"nearest"`` or ``"cubic"``.
    :param scores: Reduce per-patch ``"softmax"`` probabilities (the paper) or raw ``"logits"``.
    :param certificate: ``"votes"`` (Cohen's certificate on the aggregated votes) or ``"vote_average"`` (the
                        vote-averaged Smooth-Mean with a ``bound`` on a mean of [0, 1] variables).
    :param bound: ``"bernstein"`` (empirical Bernstein, default) or ``"hoeffding"``, for ``vote_average``.
    :param radius_space: Report radii in the ``"input"`` space (divided by the resize's operator norm; default)
                          or in the ``"resized"`` space the noise lives in.
    :param unsound_paper_radius: Independent noise with the paper's uncorrected radius in the resized space.
                                 Unsound; warns on every certificate. With a ``resize`` it sets ``radius_space`` to
                                 ``"resized"`` (the space its radii are in), which stays so if the flag is later
                                 turned off.
    """

    estimator_params = SmoothedClassifier.estimator_params + [
        "patches",
        "aggregation",
        "noise_mode",
        "resize",
        "patch_resize",
        "resize_mode",
        "scores",
        "certificate",
        "bound",
        "radius_space",
        "unsound_paper_radius",
    ]
    _patch_params = frozenset(estimator_params[len(SmoothedClassifier.estimator_params):])

    def __init__(
        self,
        model,
        loss,
        input_shape,
        nb_classes,
        *args,
        patches: PatchLayout | dict | None = None,
        aggregation: str | Callable = "mean",
        noise_mode: str = "shared",
        resize: int | tuple | None = None,
        patch_resize: int | tuple | None = None,
        resize_mode: str = "linear",
        scores: str = "softmax",
        certificate: str = "votes",
        bound: str = "bernstein",
        radius_space: str = "input",
        unsound_paper_radius: bool = False,
        **kwargs,
    ):
        super().__init__(model, loss, input_shape, nb_classes, *args, **kwargs)
        if len(self.input_shape) not in (3, 4):
            raise ValueError(f"input_shape must be (C, H, W) or a video's (C, T, H, W), got {self.input_shape}")
        self.patches, self.aggregation, self.noise_mode = patches, aggregation, noise_mode
        self.resize, self.patch_resize, self.resize_mode = resize, patch_resize, resize_mode
        self.scores, self.certificate, self.bound = scores, certificate, bound
        self.radius_space, self.unsound_paper_radius = radius_space, bool(unsound_paper_radius)
        self._configure()

    def set_params(self, **kwargs) -> None:
        """
        Set estimator parameters. Patch settings are validated and the geometry recomputed; if they are invalid the
        previous settings stay in force (a failed call never leaves radii computed with stale norms).
        """
        watched = self._patch_params | {"model", "postprocessing_defences"}
        previous = {key: getattr(self, key) for key in kwargs if key in self._patch_params}
        super().set_params(**kwargs)
        if watched & kwargs.keys():
            try:
                self._configure()
            except Exception:
                for key, value in previous.items():
                    setattr(self, key, value)
                self._configure()
                raise

    # ----------------------------------------------------------------------------------------------------------
    # Configuration: validate everything once, early, and compute the geometry behind the certificate. Nothing is
    # assigned until every check has passed.
    # ----------------------------------------------------------------------------------------------------------
    def _configure(self) -> None:
        from art_some.plugins import get

        choice("noise_mode", self.noise_mode, NOISE_MODES)
        choice("scores", self.scores, SCORES)
        choice("certificate", self.certificate, CERTIFICATES)
        choice("bound", self.bound, BOUNDS)
        choice("radius_space", self.radius_space, RADIUS_SPACES)
        choice("resize_mode", self.resize_mode, RESIZE_MODES)
        if not isinstance(self.unsound_paper_radius, (bool, np.bool_)):
            raise ValueError(f"unsound_paper_radius must be True or False, got {self.unsound_paper_radius!r}")
        if self.postprocessing_defences:
            raise ValueError("postprocessing_defences are not supported by SmoothReduceClassifier (votes come from "
                             "aggregated patch scores)")
        spatial = tuple(self.input_shape[1:])
        noise_size = self._size("resize", self.resize, spatial) if self.resize is not None else spatial
        aggregate = get("aggregations", self.aggregation) if isinstance(self.aggregation, str) else self.aggregation
        if not callable(aggregate):
            raise ValueError(f"aggregation must be a registered name or a callable, got {self.aggregation!r}")
        layout = self._layout(self.patches, noise_size)
        model_size = (
            self._size("patch_resize", self.patch_resize, layout.patch_size)
            if self.patch_resize is not None else layout.patch_size
        )
        if self.certificate == "vote_average" and self.aggregation != "mean":
            raise ValueError("certificate='vote_average' certifies the vote-averaged Smooth-Mean; use "
                             "aggregation='mean'")
        if self.unsound_paper_radius and (self.noise_mode != "independent" or self.certificate != "votes"):
            raise ValueError("unsound_paper_radius=True is the paper's rule: it needs noise_mode='independent' and "
                             "certificate='votes'")
        self._check_model(model_size)
        if self.unsound_paper_radius and self.radius_space == "input" and self.resize is not None:
            # The paper's radii are in the resized space; say so where users read it, not only in the records.
            self.radius_space = "resized"
        # Operator norms of the linear map from the input to the noise space (computed, not assumed).
        resize_norm = resize_operator_norm(spatial, noise_size, self.resize_mode, device=self._device)
        stack_norm = (
            float(np.sqrt(layout.max_coverage)) if self.noise_mode == "independent" and self.certificate == "votes"
            else 1.0
        )
        self._noise_size, self._aggregate, self.layout, self._model_size = noise_size, aggregate, layout, model_size
        self.resize_norm, self.stack_norm = resize_norm, stack_norm
        self.certificate_rule.check_noise(self.make_noise(self.scale))  # a noise the rule does not hold for
        if self.unsound_paper_radius:
            warn_unsound(PAPER_RULE_WARNING.format(factor=self.stack_norm))

    def _size(self, name: str, value, like: tuple) -> tuple[int, ...]:
        """One int resizes the spatial axes (H, W) and keeps a video's T; a tuple gives every non-channel axis."""
        if np.isscalar(value):
            size = tuple(like[:-2]) + (int(value),) * min(2, len(like))
        else:
            size = tuple(int(v) for v in value)
        if len(size) != len(like) or min(size) < 1:
            raise ValueError(f"{name} must be one positive size or {len(like)} of them, got {value!r}")
        return size

    def _layout(self, patches, noise_size: tuple[int, ...]) -> PatchLayout:
        if isinstance(patches, PatchLayout):
            layout = patches
        elif isinstance(patches, dict):
            options = dict(patches)
            kind = options.pop("layout", "grid")
            if "size" not in options:
                raise ValueError("patches needs a 'size' (one int, or one entry per non-channel axis)")
            layout = make_layout(kind, noise_size, options.pop("size"), **options)
        else:
            raise ValueError("patches is required: a PatchLayout or a dict such as {'layout': 'grid', 'size': 32, "
                             f"'stride': 2}}, got {patches!r}")
        if layout.input_size != noise_size:
            raise ValueError(
                f"the patch layout is for inputs of size {layout.input_size}, but the noise space has size "
                f"{noise_size} (input_shape {tuple(self.input_shape)}, resize {self.resize!r})"
            )
        return layout

    def _check_model(self, model_size: tuple[int, ...]) -> None:
        """One forward pass on a zero patch, so a model that does not fit the patches fails here, not mid-run."""
        import torch

        probe = torch.zeros((1, self.input_shape[0], *model_size), device=self._device)
        try:
            with torch.inference_mode():
                out = self.logits(probe)
        except RuntimeError as err:
            raise ValueError(f"the model cannot take patches of shape {tuple(probe.shape[1:])}: {err}") from None
        if tuple(out.shape) != (1, self.nb_classes):
            raise ValueError(f"the model must return (batch, {self.nb_classes}) logits per patch, got "
                             f"{tuple(out.shape)}")

    # ----------------------------------------------------------------------------------------------------------
    # The three parts: noise space, vote function, certificate rule.
    # ----------------------------------------------------------------------------------------------------------
    @property
    def num_patches(self) -> int:
        return self.layout.num_patches

    @property
    def radius_divisor(self) -> float:
        """What Cohen's radius in the noise space is divided by to give the reported radius."""
        if self.unsound_paper_radius:
            return 1.0
        return self.stack_norm * (self.resize_norm if self.radius_space == "input" else 1.0)

    @property
    def radii_in_input_space(self) -> bool:
        """True unless radii are reported in the resized space (``radius_space="resized"``, the paper's rule)."""
        return self.radius_space == "input"

    def to_noise_space(self, x: "torch.Tensor") -> "torch.Tensor":
        """Resize the clean input (if asked), then, for independent noise, stack its patches ``(N, P, C, ...)``."""
        z = resize(x, self._noise_size, self.resize_mode) if self.resize is not None else x
        return self.layout.crop(z) if self.noise_mode == "independent" else z

    def patch_scores(self, z: "torch.Tensor", training_mode: bool = False) -> "torch.Tensor":
        """
        Per-patch scores ``(B, P, nb_classes)`` of noisy inputs ``z`` (noise-space tensors): all B * P patches go
        through the model in one forward pass; softmax probabilities or logits per ``scores``.
        """
        import torch

        patches = self.layout.crop(z) if self.noise_mode == "shared" else z
        flat = patches.reshape(-1, *patches.shape[2:])
        if self.patch_resize is not None:
            flat = resize(flat, self._model_size, self.resize_mode)
        out = self.logits(flat, training_mode=training_mode).float().view(len(z), self.num_patches, -1)
        return torch.softmax(out, dim=-1) if self.scores == "softmax" else out

    def vote(self, z: "torch.Tensor") -> "torch.Tensor":
        """
        The argmax of the aggregated patch scores; for ``certificate="vote_average"`` instead the tally of the
        patches' own votes, ``(B, nb_classes)`` integers summing to P.
        """
        import torch

        scores = self.patch_scores(z)
        if self.certificate == "vote_average":
            tallies = torch.nn.functional.one_hot(scores.argmax(dim=-1), self.nb_classes).sum(dim=1)
            bad = ~torch.isfinite(scores.flatten(1)).all(dim=1)
            return torch.where(bad[:, None], torch.full_like(tallies, INVALID), tallies)
        aggregated = self._aggregate(scores)
        bad = ~torch.isfinite(scores.flatten(1)).all(dim=1)  # a max over patches can hide one NaN patch
        return argmax_votes(torch.where(bad[:, None], torch.full_like(aggregated, float("nan")), aggregated))

    def soft_scores(self, z: "torch.Tensor", training_mode: bool = False) -> "torch.Tensor":
        """Aggregated scores made a distribution (normalised for softmax scores, softmax for logits); for EOT."""
        import torch

        aggregated = self._aggregate(self.patch_scores(z, training_mode=training_mode))
        if self.scores == "logits":
            return torch.softmax(aggregated, dim=1)
        return aggregated / aggregated.sum(dim=1, keepdim=True).clamp_min(1e-12)

    def smoothing(self, x=None, indices=None, **settings) -> Smooth:
        """The aggregated patch votes, Gaussian noise in the noise space, and :attr:`certificate_rule`."""
        return self.smooth(self.vote, self.make_noise(self.scale), self.certificate_rule, soft=self.soft_scores,
                           **settings)

    @property
    def certificate_rule(self) -> CertificateRule:
        """
        ``votes``: Cohen's Clopper-Pearson bound on the aggregated votes, radius sigma * Phi^-1(pA_lower) in the noise
        space divided by :attr:`radius_divisor` (sqrt(m_max) for independent noise, the resize norm for input-space
        radii); the paper's rule (``unsound_paper_radius``) divides by nothing and warns on every use.
        ``vote_average``: :class:`VoteAverageRule`.

        Guarantee (all but the paper's rule): with probability at least 1 - alpha, the returned class is the
        smoothed classifier's prediction everywhere within the returned L2 radius in ``radius_space``.
        """
        if self.certificate == "votes":
            rule = ScaledRule(CohenRule(), self.radius_divisor, sound=not self.unsound_paper_radius,
                              warning=PAPER_RULE_WARNING.format(factor=self.stack_norm))
            rule.noises, rule.norms = ("gaussian",), ("l2",)  # the patch geometry is worked out for L2 only
            return rule
        return VoteAverageRule(self.num_patches, self.bound, self.nb_classes, self.radius_divisor)

    def certificate_info(self) -> dict:
        """Noise mode, aggregation, certificate, radius space and the divisor, the layout, and whether it is sound."""
        return {
            "noise_mode": self.noise_mode,
            "aggregation": self.aggregation if isinstance(self.aggregation, str) else repr(self.aggregation),
            "scores": self.scores,
            "certificate": self.certificate if self.certificate == "votes" else f"vote_average/{self.bound}",
            "radius_space": "resized" if self.unsound_paper_radius else self.radius_space,
            "radius_divisor": self.radius_divisor,
            "resize_norm": self.resize_norm,
            **self.layout.describe(),
            "sound": not self.unsound_paper_radius,
        }


class VoteAverageRule(CertificateRule):
    """
    The vote-averaged Smooth-Mean's certificate: p^c = mean over the P patches of P(patch votes c) is a Gaussian
    smoothing of a [0, 1]-valued function, so sigma * Phi^-1 of a lower confidence bound on it (Hoeffding, or
    empirical Bernstein from the squared tallies) is a sound radius in the noise space, with no coverage correction.

    CERTIFY: the class with the most selection patch votes, abstain unless its bound exceeds 1/2, radius divided
    by ``divisor`` (the resize norm for input-space radii). PREDICT: the class with the most patch votes when its
    bound at alpha / nb_classes (a union over the classes that could be chosen from the same draws) exceeds 1/2;
    its scores are patch-vote fractions summed over draws (rows sum to the number of draws).
    """

    needs_squares = True
    sequence_bounds = ("union-cp",)  # a draw's vote is a fraction of patches, not one Bernoulli vote
    # Its radius is an L2 radius in the patches' space, divided by an L2 operator norm; and Gaussian (Salman et al.).
    noises, norms = ("gaussian",), ("l2",)

    def __init__(self, num_patches: int, bound: str, nb_classes: int, divisor: float = 1.0):
        self.num_patches, self.bound, self.nb_classes, self.divisor = int(num_patches), bound, nb_classes, divisor

    def _moments(self, tally: Tally, classes: np.ndarray):
        """The draws, the mean patch-vote fraction of ``classes`` and its unbiased variance, per row."""
        rows = np.arange(len(tally))
        draws = tally.counts.sum(axis=1) / self.num_patches
        mean = tally.counts[rows, classes] / (draws * self.num_patches)
        if tally.squares is None:
            return draws, mean, None
        second = tally.squares[rows, classes] / float(self.num_patches) ** 2 / draws
        return draws, mean, np.maximum(second - mean**2, 0.0) * draws / np.maximum(draws - 1, 1)

    def _bound(self, mean, variance, draws, alpha) -> np.ndarray:
        if self.bound == "hoeffding":
            return hoeffding_lower(mean, draws, alpha)
        return bernstein_lower(mean, variance, draws, alpha)

    def lower_bound(self, tally, classes, alpha):
        """Lower confidence bound on the ``classes``' mean patch-vote fraction (Hoeffding or empirical Bernstein)."""
        draws, mean, variance = self._moments(tally, classes)
        return self._bound(mean, variance, draws, alpha)

    def upper_bound(self, tally, classes, alpha):
        """The same bound on the complement's mean: an upper bound on the mean patch-vote fraction."""
        draws, mean, variance = self._moments(tally, classes)
        return 1.0 - self._bound(1.0 - mean, variance, draws, alpha)

    def projected_lower_bound(self, tally, classes, n, alpha_now, alpha_final):
        """The bound after ``n`` draws if the mean were at its upper bound and the variance stayed as it is."""
        _, _, variance = self._moments(tally, classes)
        return self._bound(self.upper_bound(tally, classes, alpha_now), variance, float(n), alpha_final)

    def radius(self, p_lower, noise):
        return noise.radius(p_lower) / self.divisor

    def predict(self, tally, alpha):
        top = tally.counts.argmax(axis=1)
        p_lower = self.lower_bound(tally, top, probability("alpha", alpha) / self.nb_classes)
        return np.where(certifies(p_lower), top, ABSTAIN).astype(np.int64)

    def scores(self, counts):
        return counts / self.num_patches
