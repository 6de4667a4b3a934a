"""
:func:`create_estimator`: a registered estimator around a model, with a data set's conventions (timm-style
factory). The ``art-some`` commands and ``art-some train`` build every estimator through it.
"""
from __future__ import annotations

import inspect

# Arguments the factory fills itself; they are not estimator options.
FILLED = ("self", "args", "kwargs", "model", "loss", "input_shape", "nb_classes")


def create_estimator(name: str, model, info: dict, *, sigma: float, n0: int = 100, alpha: float = 0.001,
                     batch_size: int = 1000, seed: int = 0, device: str = "cpu", optimizer=None,
                     options: dict | None = None):
    """
    Wrap ``model`` in the registered estimator ``name``.

    :param name: A registered estimator (``art-some plugins`` lists them).
    :param model: The base classifier (a torch module on raw inputs in [0, 1]).
    :param info: The data set's ``num_classes``, ``input_shape``, ``mean`` and ``std`` (see :mod:`art_some.data`).
    :param sigma: The noise level: ART's ``scale``, or the single level of a cascade (``sigmas``) unless
                  ``options`` gives ``sigmas``.
    :param n0: Selection draws (``sample_size``).
    :param alpha: Failure probability.
    :param batch_size: Noisy inputs per forward pass.
    :param seed: Base seed of the noise.
    :param device: ``"cpu"`` or ``"cuda"``.
    :param optimizer: The model's optimizer (training).
    :param options: The estimator's own keyword arguments (``--option`` on the command line); a name the
                    estimator does not take, or a required one that is missing, is a ValueError naming it.
    """
    import numpy as np
    import torch

    from art_some.plugins import get

    cls = get("estimators", name)
    options = check_options(cls, options or {})
    # Each estimator declares how it takes one noise level: ART's scale, or a cascade's sigmas (one level unless
    # --option sigmas=[...] asks for several).
    if getattr(cls, "sigma_parameter", "scale") == "sigmas":
        options.setdefault("sigmas", (sigma,))
    else:
        options["scale"] = sigma
    missing = [p for p in required(cls) if p not in options]
    if missing:
        raise ValueError(f"{cls.__name__} needs --option {', '.join(f'{m}=...' for m in missing)}")
    mean = np.asarray(info["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(info["std"], dtype=np.float32).reshape(-1, 1, 1)
    return cls(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(info["input_shape"]),
        nb_classes=int(info["num_classes"]),
        optimizer=optimizer,
        clip_values=(0.0, 1.0),
        preprocessing=(mean, std),
        device_type="gpu" if str(device).startswith("cuda") else "cpu",
        sample_size=n0,
        alpha=alpha,
        noise_batch_size=batch_size,
        seed=seed,
        **options,
    )


def required(cls) -> list[str]:
    """The constructor arguments of ``cls`` without a default that the factory does not fill."""
    params = inspect.signature(cls.__init__).parameters
    return [name for name, p in params.items() if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in FILLED]


def option_default(cls, name: str):
    """The default of the constructor argument ``name`` of ``cls`` (None if it has none)."""
    param = inspect.signature(cls.__init__).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def check_options(cls, options: dict) -> dict:
    """Check option names against the estimator's constructor, so that a typo is an error, not ignored."""
    params = inspect.signature(cls.__init__).parameters
    accepted = set(params) - set(FILLED)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):  # passed on to SmoothedClassifier
        from art_some.estimators.smoothed import SmoothedClassifier

        accepted |= set(inspect.signature(SmoothedClassifier.__init__).parameters) - set(FILLED)
    unknown = sorted(set(options) - accepted)
    if unknown:
        takes = ", ".join(sorted(accepted)) or "no options"
        raise ValueError(f"--option {', '.join(unknown)} is not an argument of {cls.__name__}; it takes {takes}")
    return dict(options)
