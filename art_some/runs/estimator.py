"""
The smoothed estimator that a run builds from its options (certify and evaluate alike): the model (a name, an
art-some checkpoint or a published one), the noise level and estimator its checkpoint records unless given, the
estimator's options (a cascade's denoiser, the kNN rule's reference inputs, the vote function's speed options).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from art_some.runs.checkpoints import check_dataset, is_checkpoint, preprocessing, recorded_options
from art_some.runs.loader import (
    check_fits,
    check_registered,
    default_estimator,
    folder_note,
    is_named,
    load_model,
    named_preprocessing,
)
from art_some.runs.sources import data_settings

# Inputs the training split may hold to be the kNN reference by default: the reference is held in memory and its
# offset (the median kNN distance) takes N^2 distances.
REFERENCE_LIMIT = 20_000


@dataclass(kw_only=True)
class SmoothingConfig:
    """The options of every run that smooths a model over a data set (``art-some certify``, ``evaluate``)."""

    model: str | None = None  # a registered model name or a checkpoint file (None: model_module's, random)
    dataset: str = "digits"
    data_root: str | None = None
    split: str = "test"
    channels: int | None = None  # the data options of the data sets that take them (art_some.runs.sources)
    resize: tuple | None = None
    mean: tuple | None = None
    std: tuple | None = None
    estimator: str | None = None  # default: the checkpoint's, else some for multi-head models, else smoothed
    arch: str | None = None  # what the weights in the file are for: a registered model or published architecture
    model_module: str | None = None  # the user's own class or factory, pkg.mod:factory or path/file.py:factory
    sigma: float | None = None  # default: the checkpoint's
    noise: str | None = None  # a registered noise model; default: the checkpoint's, else gaussian
    norm: str | None = None  # the norm of the radii; default: the noise family's first
    n0: int = 100
    alpha: float = 0.001
    batch_size: int = 1000
    seed: int = 0
    skip: int = 1
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    options: dict = field(default_factory=dict)  # the estimator's own options (see art-some certify --option)


def resolve_device(name: str) -> str:
    """``auto`` as CUDA when there is a GPU, else the CPU; ``cuda`` refused where there is none."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    return name


def note(message: str) -> None:
    """A line for the user on standard error (records and tables go to standard output)."""
    print(message, file=sys.stderr)


def build_estimator(estimator: str, model, info: dict, *, sigma, n0, alpha, batch_size, seed, device, optimizer=None,
                    options=None):
    """
    Wrap ``model`` in the registered estimator ``estimator`` with the data set's conventions; ``options`` are the
    estimator's own keyword arguments (e.g. a patch layout for ``smooth_reduce``). A run's name for
    :func:`art_some.estimators.factory.create_estimator`.
    """
    import warnings

    from art_some.estimators.factory import create_estimator

    with warnings.catch_warnings():
        # ART's note that its noise comes after preprocessing defences (a named classifier's resize) is not true
        # here: art-some adds the noise to the raw inputs, before every preprocessing step.
        warnings.filterwarnings("ignore", message=r"\s*With the current backend \(Pytorch\) Gaussian noise")
        return create_estimator(estimator, model, info, sigma=sigma, n0=n0, alpha=alpha, batch_size=batch_size,
                                seed=seed, device=device, optimizer=optimizer, options=options)


def smoothed_estimator(config: SmoothingConfig, echo=note):
    """
    The smoothed estimator of a run and its data: ``(estimator, data, estimator name)``; everything is checked
    before anything is built (a registered name needs ``sigma``; a checkpoint must fit the data set).

    :param echo: Where warnings go (a callable taking a line).
    """
    from art_some.data import data_options_of, load_dataset

    own = config.model_module is not None  # the user's own class (art_some.models.own)
    if config.model is None and not own:
        raise ValueError("give --model: a registered model (art-some plugins lists them) or a checkpoint file; or "
                         "--model-module pkg.mod:factory for your own class")
    named = not own and is_named(config.model)  # timm:, hf:, torchvision: (runs/loader.py)
    checkpoint = not named and config.model is not None and is_checkpoint(config.model)
    sigma, estimator = config.sigma, config.estimator
    if config.arch is not None and not (checkpoint and Path(config.model).is_file()):
        raise ValueError(f"--arch {config.arch} names what the weights in --model FILE are for, but --model "
                         f"{config.model!r} is not a file")
    if named and sigma is None:
        raise ValueError(f"--model {config.model} is a classifier by name: give --sigma (or a --preset)")
    if not checkpoint and not named:
        if not own:
            check_registered(config.model)
        if sigma is None:
            what = (f"--model-module {config.model_module} without --model FILE is" if own else
                    f"--model {config.model!r} is a registered model name,")
            raise ValueError(f"{what} randomly initialised, so it needs --sigma; or give a checkpoint file "
                             "(DIR/model.safetensors from art-some train)")
    device = resolve_device(config.device)
    data, info = load_dataset(config.dataset, root=config.data_root, split=config.split, **data_settings(config))
    shape = {"num_classes": info["num_classes"], "in_channels": info["input_shape"][0]}
    defaults = {}
    if named:
        import torch

        torch.manual_seed(config.seed)  # the head of a timm/torchvision model made for the data set's classes
        model, meta = load_model(config.model, num_classes=info["num_classes"], device=device)
        if meta.get("pretrained") is None and meta.get("source") != "hf":
            echo(f"Warning: {config.model!r} is randomly initialised from --seed (give NAME@FILE for weights)")
        info, defaults = named_preprocessing(meta, info, device)
    elif checkpoint:
        model, meta = load_model(config.model, arch=config.arch, model_module=config.model_module, device=device,
                                 **shape)
        info = preprocessing(meta, info)
        check_dataset(meta, info, config.dataset)
        if sigma is None and meta.get("sigma") is None:
            raise ValueError(f"--sigma is required: checkpoint {config.model} records no sigma")
        if estimator in (None, meta.get("estimator")):
            defaults = recorded_options(meta, config.model, sigma_given=sigma is not None)
        sigma = sigma if sigma is not None else meta["sigma"]
    else:
        import torch

        echo(f"Warning: {config.model_module if own else config.model!r} is randomly initialised from --seed (no "
             "checkpoint given)")
        if not own and folder_note(config.model):
            echo(f"Note: {folder_note(config.model)}")
        torch.manual_seed(config.seed)
        model, meta = load_model(config.model, model_module=config.model_module, **shape)
    if estimator is None and "denoiser" in config.options:
        estimator = "denoised_multiscale"
    estimator = estimator or default_estimator(model, meta, config.model)
    speed = {k: v for k, v in (("precision", config.precision), ("channels_last", config.channels_last),
                               ("compile", config.compile)) if v not in (None, False, "fp32")}
    noise = {k: v for k, v in (("noise", config.noise), ("norm", config.norm)) if v is not None}
    options = knn_reference(estimator, {**defaults, **config.options, **speed, **noise}, config.dataset,
                            config.data_root, echo, data_settings(config))
    clf = build_estimator(estimator, model, info, sigma=sigma, n0=config.n0, alpha=config.alpha,
                          batch_size=config.batch_size, seed=config.seed, device=device, options=options)
    check_fits(clf, data, config.dataset, compile=config.compile, data_options=data_options_of(config.dataset))
    return clf, data, estimator


def knn_reference(estimator: str, options: dict, dataset: str, data_root, echo=note, data_options=None) -> dict:
    """
    The kNN sigma rule's reference inputs (data_dependent): ``--option reference=train|test`` (a split of --dataset)
    or ``reference=FILE.npy``; by default the training split, when it has at most :data:`REFERENCE_LIMIT` inputs.
    """
    import inspect

    import numpy as np

    from art_some.data import load_dataset
    from art_some.estimators.factory import option_default
    from art_some.plugins import get

    cls = get("estimators", estimator)
    value = options.get("reference")
    if "reference" not in inspect.signature(cls.__init__).parameters or not isinstance(value, (str, type(None))):
        return options  # nothing to find (or the inputs themselves, as a JSON list)
    if options.get("sigma_rule", option_default(cls, "sigma_rule")) != "knn":
        return options
    if value is None or value in ("train", "test"):
        split = value or "train"
        data, _ = load_dataset(dataset, root=data_root, split=split, **(data_options or {}))
        if value is None and len(data) > REFERENCE_LIMIT:
            raise ValueError(f"--estimator {estimator}: the train split of {dataset!r} has {len(data)} inputs, too "
                             f"many for the default kNN reference (at most {REFERENCE_LIMIT}); give --option "
                             "reference=FILE.npy (a sample of it) or --option reference=train to use them all")
        reference = np.stack([np.asarray(data[i][0], dtype=np.float32) for i in range(len(data))])
        echo(f"kNN reference: the {split} split of {dataset} ({len(reference)} inputs)")
    else:
        path = Path(value)
        if path.suffix != ".npy" or not path.is_file():
            raise ValueError(f"--option reference must be train, test or a .npy file of inputs, got {value!r}")
        reference = np.load(path, allow_pickle=False)
    return {**options, "reference": reference}


def warn_small_n(n: int, n0: int, sigma: float, alpha: float, echo=note) -> None:
    """Warn when the estimation draws are fewer than the selection draws: the radius cap comes from n."""
    if n >= n0:
        return
    from art_some.core.stats import max_certifiable_radius

    echo(f"Warning: --n {n} is below --n0 {n0}, which is unusual: n0 only picks the class and the n draws bound "
         f"its probability, so with --n {n} no radius exceeds sigma * Phi^-1(alpha^(1/n)) = "
         f"{max_certifiable_radius(sigma, n, alpha):.3f} (n is usually 100 to 1000 times n0)")


def run_info(dataset: str, split: str, model, data_root=None, config: SmoothingConfig | None = None) -> dict:
    """
    The header entries only the run's options know: the data set and split and the data options given (compared on
    resume), and where the model and data were read from (recorded, not compared: the weights hash and the inputs'
    hashes are).
    """
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in data_settings(config or {}).items()}
    source = {"model": None if model is None else str(model),
              "data_root": None if data_root is None else str(data_root)}
    if config is not None and config.model_module is not None:
        source["model_module"] = config.model_module
    return {"dataset": dataset, "split": split, **({"data_options": options} if options else {}), "source": source}


def shard_of_run(shard, device: str):
    """
    The shard a run takes: ``(shard, None)`` without torchrun (``shard`` checked: ``(i, k)``, ``"i/k"`` or None),
    ``(None, (rank, world size))`` under it (each rank on its own GPU on CUDA); (None, None) for one process.
    """
    from art_some.runs import distributed
    from art_some.runs.shards import check_shard

    shard = None if shard is None else check_shard(shard)
    rank = distributed.init(resolve_device(device), timeout=distributed.SHARD_WAIT)
    if rank is not None and shard is not None:
        raise ValueError("--shard is for runs without torchrun; under torchrun every rank takes its own shard")
    return shard, None if rank is None else rank.shard
