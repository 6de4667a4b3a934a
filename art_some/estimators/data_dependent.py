"""
Input-dependent randomized smoothing: G(x) = g_{sigma(x)}(x), the Gaussian smoothed classifier at a sigma chosen
for each input, with two sigma rules and two certificates.

- ``sigma_rule="optimize"``: DDRS (Alfarra et al., UAI 2022), sigma(x) by gradient ascent on the soft radius.
- ``sigma_rule="knn"``: Sukenik et al. (ICML 2022), sigma(x) = sigma_b exp(r (mean kNN distance - m)), whose log
  is r-Lipschitz by construction.
- ``certificate="input_dependent"`` (default, sound): Sukenik et al.'s certificate of G itself, valid for a sigma
  rule with a known log-Lipschitz rate r (the kNN rule, or a callable with a ``rate`` attribute).
- ``certificate="fixed_sigma"``: DDRS's per-input certificate, Cohen's radius at sigma(x). It certifies the
  fixed-sigma classifier g_{sigma(x)} around x, *not* G: inside the ball G re-chooses sigma and may answer
  differently. It exists for comparison with the paper, warns, and says so in every record.
- :meth:`DataDependentSmoothedClassifier.certify_with_memory`: DDRS's memory-based certifier, an explicit stateful
  and order-dependent :class:`~art_some.estimators.memory.MemoryCertifier` over the fixed-sigma certificates.

| Paper link: https://arxiv.org/abs/2012.04351
| Paper link: https://arxiv.org/abs/2110.05365
"""
from __future__ import annotations

import hashlib
import math
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from art_some.core.certify import CertifyResult
from art_some.core.noise import seed_for
from art_some.core.rules import CertificateRule, CohenRule, certifies
from art_some.core.smoothing import Smooth
from art_some.core.streams import SIGMA_SEARCH
from art_some.estimators.input_dependent import KNNSigma, semi_elastic_radius
from art_some.estimators.sigma_search import optimize_sigma
from art_some.estimators.smoothed import SmoothedClassifier

if TYPE_CHECKING:
    import torch

SIGMA_RULES = ("optimize", "knn")
CERTIFICATES = ("input_dependent", "fixed_sigma")
# The optimize rule's test-time ascent settings: the ANCER/ddsmoothing package's and the DDRS scripts' (spec A.1).
SIGMA_SEARCH_PRESETS = {
    "ancer": {"sigma_lr": 0.04, "sigma_steps": 900, "sigma_samples": 100, "prob_clamp": (0.001, 0.999)},
    "ddrs": {"sigma_lr": 1e-4, "sigma_steps": 100, "sigma_samples": 1, "prob_clamp": (0.02, 0.98)},
}
FIXED_SIGMA_NOTE = ("certificate of the fixed-sigma smoothed classifier g_sigma_x at this input, not of the "
                    "input-dependent classifier")
INPUT_DEPENDENT_NOTE = "certificate of the input-dependent classifier (Sukenik et al.: log-Lipschitz sigma)"


class DataDependentSmoothedClassifier(SmoothedClassifier):
    """
    Gaussian smoothing with a sigma per input, G(x) = argmax_c P(f(x + sigma(x) delta) = c). PREDICT and CERTIFY
    first compute sigma(x) and then count votes at it on the shared engine; the EOT gradients treat sigma(x) as a
    constant. ``scale`` is sigma0 (the optimiser's start) or sigma_b (the kNN rule's base level).

    The optimised sigma is made reproducible per input: its ascent draws come from a stream keyed by
    ``(seed, stage 5, input index)``, independent of the certification draws (as the official ``certify_ds.py``).

    | Paper link: https://arxiv.org/abs/2012.04351

    :param sigma_rule: ``"knn"`` (default; needs ``reference``), ``"optimize"`` (DDRS) or a callable mapping
                       raw inputs (a tensor) to one sigma per input; give it a ``rate`` attribute (its
                       log-Lipschitz constant) to certify it with the input-dependent certificate.
    :param certificate: ``"input_dependent"`` (sound) or ``"fixed_sigma"`` (DDRS; warns).
    :param reference: Training inputs for the kNN rule.
    :param rate: r, the kNN rule's log-Lipschitz rate.
    :param knn_k: k of the kNN rule.
    :param knn_offset: m of the kNN rule (default: the median mean-kNN distance of the reference points).
    :param sigma_search: Settings of the optimize rule's ascent, by name (:data:`SIGMA_SEARCH_PRESETS`):
                         ``"ancer"`` (default; the ddsmoothing/ANCER package's ``run_optimization_dataset.py``: lr
                         0.04, 900 steps, 100 draws, probabilities clamped to [0.001, 0.999]) or ``"ddrs"`` (the DDRS
                         paper's scripts, which reproduce its tables: lr 1e-4, 100 steps, 1 draw, clamp [0.02,
                         0.98]). The ``sigma_*`` and ``prob_clamp`` arguments below override single settings.
    :param sigma_lr: Ascent step size of the optimize rule (default: the preset's).
    :param sigma_steps: Ascent steps (default: the preset's).
    :param sigma_samples: Draws per ascent step (default: the preset's).
    :param sigma_range: The optimised sigma is clamped to this range.
    :param prob_clamp: Clamp of the soft probabilities before Phi^-1 (default: the preset's).
    :param radius_steps: Grid points of the input-dependent radius search (up to Cohen's radius).
    :param sigma_steps_grid: Grid points of the worst-case sigma search of the input-dependent certificate.

    All other arguments are :class:`~art_some.SmoothedClassifier`'s.
    """

    estimator_params = SmoothedClassifier.estimator_params + [
        "sigma_rule", "certificate", "sigma_search", "sigma_lr", "sigma_steps", "sigma_samples", "sigma_range",
        "prob_clamp", "radius_steps", "sigma_steps_grid",
    ]

    def __init__(self, model, loss, input_shape, nb_classes, *args, sigma_rule="knn", certificate="input_dependent",
                 reference=None, rate: float = 0.01, knn_k: int = 20, knn_offset: float | None = None,
                 sigma_search: str = "ancer", sigma_lr: float | None = None, sigma_steps: int | None = None,
                 sigma_samples: int | None = None, sigma_range=(1e-3, 2.0), prob_clamp=None, radius_steps: int = 100,
                 sigma_steps_grid: int = 41, **kwargs):
        super().__init__(model, loss, input_shape, nb_classes, *args, **kwargs)
        if sigma_search not in SIGMA_SEARCH_PRESETS:
            raise ValueError(f"sigma_search must be one of {tuple(SIGMA_SEARCH_PRESETS)}, got {sigma_search!r}")
        preset = SIGMA_SEARCH_PRESETS[sigma_search]
        sigma_lr = preset["sigma_lr"] if sigma_lr is None else sigma_lr
        sigma_steps = preset["sigma_steps"] if sigma_steps is None else sigma_steps
        sigma_samples = preset["sigma_samples"] if sigma_samples is None else sigma_samples
        prob_clamp = preset["prob_clamp"] if prob_clamp is None else prob_clamp
        self.sigma_search = sigma_search
        if certificate not in CERTIFICATES:
            raise ValueError(f"certificate must be one of {CERTIFICATES}, got {certificate!r}")
        if isinstance(sigma_rule, str) and sigma_rule not in SIGMA_RULES:
            raise ValueError(f"sigma_rule must be one of {SIGMA_RULES} or a callable, got {sigma_rule!r}")
        if sigma_rule == "knn":
            if reference is None:
                raise ValueError("sigma_rule='knn' needs reference=... (training inputs the kNN distance is taken to)")
            sigma_rule = KNNSigma(np.asarray(reference, dtype=np.float32), self.scale, rate, k=knn_k,
                                  offset=knn_offset)
        elif sigma_rule == "optimize":
            _check_search(sigma_lr, sigma_steps, sigma_samples, sigma_range, prob_clamp)
        elif not callable(sigma_rule):
            raise ValueError(f"sigma_rule must be one of {SIGMA_RULES} or a callable, got {sigma_rule!r}")
        self.rate = getattr(sigma_rule, "rate", None) if sigma_rule != "optimize" else None
        if certificate == "input_dependent" and self.rate is None:
            raise ValueError(
                "certificate='input_dependent' needs a sigma rule with a known log-Lipschitz rate (sigma_rule='knn' "
                "or a callable with a `rate` attribute); the optimised DDRS sigma has none. "
                "certificate='fixed_sigma' gives DDRS's certificate of g_sigma_x instead (not of this classifier)"
            )
        self.sigma_rule = sigma_rule
        self.certificate = certificate
        self.sigma_lr, self.sigma_steps, self.sigma_samples = float(sigma_lr), int(sigma_steps), int(sigma_samples)
        self.sigma_range, self.prob_clamp = tuple(sigma_range), tuple(prob_clamp)
        self.radius_steps, self.sigma_steps_grid = int(radius_steps), int(sigma_steps_grid)
        self.certificate_rule.check_noise(self.make_noise(self.scale))  # Gaussian, L2: refuse another at once

    def set_params(self, **kwargs) -> None:
        """ART's ``set_params``; a new ``scale`` is the kNN rule's sigma_b (or the optimiser's start) from then on."""
        super().set_params(**kwargs)
        if "scale" in kwargs and isinstance(self.sigma_rule, KNNSigma):
            self.sigma_rule.sigma_base = float(self.scale)

    # ----------------------------------------------------------------------------------------------------------
    # sigma(x), the noise model at it, and the certificate rule
    # ----------------------------------------------------------------------------------------------------------
    def sigma_of(self, x: "torch.Tensor", indices=None) -> np.ndarray:
        """sigma(x) per input (raw inputs on the device; ``indices`` key the optimiser's draws, default 0..N-1)."""
        import torch

        if self.sigma_rule != "optimize":
            with torch.no_grad():  # kNN in float64: the certificate's r-Lipschitz assumption is about these values
                sigma = self.sigma_rule(x.double() if isinstance(self.sigma_rule, KNNSigma) else x)
            return np.asarray(sigma.detach().cpu().numpy() if isinstance(sigma, torch.Tensor) else sigma,
                              dtype=np.float64).reshape(len(x))
        indices = np.arange(len(x)) if indices is None else np.asarray(indices)
        # The search is as costly as a certificate; PREDICT, CERTIFY and the memory pass of the same inputs reuse it.
        key = (hashlib.sha1(x.detach().cpu().numpy().tobytes()).hexdigest(), indices.tobytes(), self.seed,
               self.sigma_lr, self.sigma_steps, self.sigma_samples, self.sigma_range, self.prob_clamp, self.scale,
               self._weights_checksum())
        if self._sigma_cache is not None and self._sigma_cache[0] == key:
            return self._sigma_cache[1].copy()
        sigma = self._search_sigma(x, indices)
        self._sigma_cache = (key, sigma)
        return sigma.copy()

    _sigma_cache = None

    def _weights_checksum(self) -> tuple:
        """A cheap fingerprint of the model's weights, so that a cached sigma is never reused after training."""
        import torch

        with torch.no_grad():
            tensors = [t.detach().double() for t in (*self.model.parameters(), *self.model.buffers())]
            return id(self.model), tuple(round(float(f(t)), 12) for t in tensors for f in (torch.sum, torch.norm))

    def _search_sigma(self, x: "torch.Tensor", indices: np.ndarray) -> np.ndarray:
        """DDRS's ascent per input, each input on its own stream keyed by its index."""
        import torch

        generators = [torch.Generator(device=x.device).manual_seed(seed_for(self.seed, SIGMA_SEARCH, int(i)))
                      for i in indices]
        out = []
        # Inputs are optimised in chunks, each with its own stream, so sigma(x_i) does not depend on the batch.
        chunk = max(1, self.noise_batch_size // self.sigma_samples)
        for start in range(0, len(x), chunk):
            xs, gens = x[start:start + chunk], generators[start:start + chunk]
            sigma = torch.full((len(xs),), float(self.scale), device=x.device)
            for _ in range(self.sigma_steps):
                eps = torch.stack([torch.randn((self.sigma_samples, *xs.shape[1:]), generator=g, device=x.device)
                                   for g in gens], dim=1)
                sigma = optimize_sigma(lambda z: self.logits(z), xs, sigma, lr=self.sigma_lr, num_steps=1,
                                       num_samples=self.sigma_samples, prob_clamp=self.prob_clamp,
                                       sigma_range=self.sigma_range, eps=eps)
            out.append(sigma.cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    @property
    def certificate_rule(self) -> CertificateRule:
        """
        ``"fixed_sigma"``: Cohen's rule at each input's sigma (a certificate of g_sigma_x, not of G; warns on every
        use). ``"input_dependent"``: :class:`InputDependentRule`, Sukenik et al.'s certificate of G.
        """
        if self.certificate == "fixed_sigma":
            return FixedSigmaRule()
        return InputDependentRule(self.rate, self.dimension, self.radius_steps, self.sigma_steps_grid)

    @property
    def dimension(self) -> int:
        """d, the dimension of the noise (the raw input size)."""
        return int(math.prod(self.input_shape))

    def certificate_info(self) -> dict:
        rule = self.sigma_rule if isinstance(self.sigma_rule, str) else type(self.sigma_rule).__name__
        note = FIXED_SIGMA_NOTE if self.certificate == "fixed_sigma" else INPUT_DEPENDENT_NOTE
        return {"sigma_rule": rule, "certificate": self.certificate, "certifies": note,
                "rate": self.rate if self.rate is not None else float("nan")}

    # ----------------------------------------------------------------------------------------------------------
    # PREDICT, CERTIFY and gradients at sigma(x)
    # ----------------------------------------------------------------------------------------------------------
    def smoothing(self, x: "torch.Tensor", indices: np.ndarray | None = None, *, rule: CertificateRule | None = None,
                  **settings) -> Smooth:
        """
        The base classifier's votes under N(0, sigma(x_i)^2 I) for each raw input x_i (``indices`` key the optimize
        rule's search draws), certified by :attr:`certificate_rule` (or ``rule``).
        """
        return self.smooth(self.vote, self.make_noise(self.sigma_of(x, indices)),
                           self.certificate_rule if rule is None else rule, soft=self.soft_scores, **settings)

    def certify_with_memory(self, x, n: int, memory, order=None, **kwargs) -> CertifyResult:
        """
        DDRS's memory-enhanced certification: the fixed-sigma certificates of ``x``, then ``memory`` (a
        :class:`~art_some.estimators.memory.MemoryCertifier`, kept by the caller across calls) adjusts each answer so
        that no earlier memorised ball is contradicted, processing inputs in ``order`` (default: index order).

        What is guaranteed: only that answers issued later never contradict a memorised certificate; an input
        queried first takes over its region, results depend on the order, and every past input is kept. This is
        not a certificate of a stateless classifier.

        :return: The :class:`CertifyResult` with adjusted ``predict`` and ``radius``, ``extra["memory_changed"]``.
        """
        result = self._certify_with(x, n, **kwargs, smoothing=partial(self.smoothing, rule=FixedSigmaRule()))
        flat = np.asarray(self._as_input_tensor(x).cpu().numpy(), dtype=np.float64).reshape(len(result), -1)
        labels, radii, changed = memory.process(flat, result.predict, result.radius, order=order)
        result.predict, result.radius = labels.astype(np.int64), radii.astype(np.float64)
        result.extra.update(memory_changed=changed, certificate="memory",
                            certifies="memory-based: stateful and order-dependent; holds only for later queries")
        return result


def _check_search(lr, steps, samples, sigma_range, prob_clamp) -> None:
    """The optimize rule's settings, checked when the estimator is built rather than at the first certify."""
    for name, value, low in (("sigma_steps", steps, 0), ("sigma_samples", samples, 1)):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not float(lr) >= 0:
        raise ValueError(f"sigma_lr must be >= 0, got {lr!r}")
    if not 0 < sigma_range[0] <= sigma_range[1]:
        raise ValueError(f"sigma_range must satisfy 0 < lo <= hi, got {sigma_range!r}")
    if not 0 < prob_clamp[0] < prob_clamp[1] < 1:
        raise ValueError(f"prob_clamp must satisfy 0 < lo < hi < 1, got {prob_clamp!r}")


class FixedSigmaRule(CohenRule):
    """DDRS's per-input certificate: Cohen's rule at sigma(x), which certifies g_sigma_x, not G. Unsound for G."""

    noises, norms = ("gaussian",), ("l2",)  # DDRS searches sigma on Gaussian noise's soft radius

    sound = False
    warning = ("certificate='fixed_sigma' certifies the fixed-sigma classifier g_sigma_x at each input, not the "
               "input-dependent classifier that predict() evaluates (Sukenik et al. 2022)")


class InputDependentRule(CertificateRule):
    """
    Sukenik et al.'s certificate of the input-dependent classifier G: Cohen's class and Clopper-Pearson bound, and
    the radius of the worst case over every sigma(x') = sigma(x) exp(+-r ||x' - x||) (non-central chi-square bounds
    in the input dimension ``dimension``), for a sigma rule whose log is ``rate``-Lipschitz.
    """

    noises, norms = ("gaussian",), ("l2",)  # the Neyman-Pearson bounds between two Gaussians

    def __init__(self, rate: float, dimension: int, radius_steps: int, sigma_steps: int):
        self.rate, self.dimension, self.radius_steps, self.sigma_steps = rate, dimension, radius_steps, sigma_steps

    def radius(self, p_lower, noise):
        p_lower = np.asarray(p_lower, dtype=np.float64)
        sigma = np.broadcast_to(np.asarray(noise.sigma, dtype=np.float64), p_lower.shape)
        radius = semi_elastic_radius(p_lower, sigma, self.rate, self.dimension, radius_steps=self.radius_steps,
                                     sigma_steps=self.sigma_steps)
        return np.where(certifies(p_lower), radius, 0.0)
