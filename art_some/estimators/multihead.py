"""
MultiHeadSmoothedClassifier: Gaussian smoothing of a multi-head network (SOME), certified with Cohen et al.'s
CERTIFY unchanged.

| Paper link: https://arxiv.org/abs/2211.10882
"""
from __future__ import annotations

from art_some.estimators.smoothed import SmoothedClassifier
from art_some.models.multihead import unwrap


class MultiHeadSmoothedClassifier(SmoothedClassifier):
    """
    The smoothed classifier of a :class:`~art_some.models.MultiHeadNet`: the base classifier is the argmax of the
    *summed* head logits (the official code's rule; no softmax, no per-head vote), computed with one trunk pass per
    noisy sample. Because that base classifier is an ordinary deterministic function of its input, Cohen et al.'s
    certificate holds as it is; everything else (certify, predict, EOT gradients, ART attacks) is
    :class:`SmoothedClassifier`'s.

    | Paper link: https://arxiv.org/abs/2211.10882

    Constructor arguments are :class:`SmoothedClassifier`'s; ``model`` must have ``head_logits(x)`` returning one
    logit tensor per head and a ``forward`` that returns their sum.
    """

    def __init__(self, model, *args, **kwargs):
        if not callable(getattr(unwrap(model), "head_logits", None)):
            raise ValueError("model must be a multi-head network with head_logits(x) (art_some.models.MultiHeadNet)")
        super().__init__(model, *args, **kwargs)

    @property
    def num_heads(self) -> int:
        return unwrap(self.model).num_heads

    def head_logits(self, x, training_mode: bool = False):
        """
        Each head's logits on raw inputs ``x`` (a tensor on the estimator's device), after preprocessing, through
        the model's ``forward(..., per_head=True)`` so that a DistributedDataParallel wrapper synchronises
        gradients.

        :return: list of M tensors ``(B, nb_classes)``.
        """
        return self.network(self.model)(self.preprocess(x, training_mode), per_head=True)
