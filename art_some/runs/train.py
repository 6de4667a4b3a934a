"""
Training runs behind ``art-some train``, a library function over a config dataclass (``train(TrainConfig(...),
output_dir)``): a registered trainer on a registered dataset and model, a checkpoint after every epoch
(safetensors weights + a resume state), resumption after an interruption, and DistributedDataParallel when
launched with ``torchrun`` (one process per device; rank 0 writes the files). The process group is
:mod:`art_some.runs.distributed`'s and the checkpoint's metadata :mod:`art_some.runs.checkpoints`', as certify's.
"""
from __future__ import annotations

import contextlib
import gc
import inspect
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from art_some.core.noise import seed_for
from art_some.core.streams import TRAINING, epoch_shuffle_key
from art_some.runs import distributed
from art_some.runs.checkpoints import (
    DENOISER_DIR,
    DENOISER_FILES,
    MODEL_FILE,
    absolute_denoiser,
    check_dataset,
    is_checkpoint,
    training_meta,
)
from art_some.runs.history import (
    CSV_FILE,
    HISTORY_FILE,
    MONITOR_INPUTS,
    EpochMonitor,
    as_records,
    chance_warning,
    epoch_line,
    evenly_spaced,
    history_texts,
    log_scalars,
    tensorboard_class,
)
from art_some.runs.records import write_atomically

try:
    import fcntl
except ImportError:  # not on Windows: runs are then not locked
    fcntl = None

STATE_FILE = "train_state.pt"
CONFIG_FILE = "train.config.yaml"  # the resolved configuration of a run started from a config file
# Below this many epochs the default schedule keeps the learning rate constant: a third of a short run is an
# epoch or two, and dropping the rate that early left a 2-epoch digits run at chance level (loss 2.30).
MIN_DECAY_EPOCHS = 9
# Loader batches per data set: 256 is the papers' CIFAR-10/ImageNet batch, but it cuts the 1437 training digits
# into 6 steps an epoch, too few to learn anything in a short run.
TRAIN_BATCH_SIZES = {"digits": 64}
# The settings a method's registration may declare for itself (metadata ``train_defaults``, e.g. MACER's Adam) and
# the values of a method that declares none. An option the user gives wins over both; the batch size is the data
# set's (TRAIN_BATCH_SIZES, else 256) unless the method declares one.
TRAIN_DEFAULTS = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
DEFAULTED = (*TRAIN_DEFAULTS, "batch_size")


def method_defaults(method: str, dataset: str) -> dict:
    """
    The optimizer, rate, momentum, weight decay and batch size that ``method`` trains with on ``dataset`` unless told
    otherwise: its registration's ``train_defaults`` over :data:`TRAIN_DEFAULTS` and the data set's batch size.
    """
    from art_some.plugins import meta

    declared = dict(meta("trainers", method)["train_defaults"])
    unknown = sorted(set(declared) - set(DEFAULTED))
    if unknown:
        raise ValueError(f"trainer {method!r} declares train_defaults {unknown}; it may declare "
                         f"{', '.join(DEFAULTED)}")
    return {**TRAIN_DEFAULTS, "batch_size": TRAIN_BATCH_SIZES.get(dataset, 256), **declared}


@dataclass
class TrainConfig:
    """Everything that defines a run; a resumed run must match it (except ``epochs``, which may grow)."""

    method: str
    model: str | None  # a registered model name, or a checkpoint file whose weights start the run
    dataset: str = "digits"
    arch: str | None = None  # what the weights in the file are for (a plain state dict's registered model)
    model_module: str | None = None  # the user's own class or factory (art_some.models.own)
    channels: int | None = None  # the data options of the data sets that take them (art_some.runs.sources)
    resize: list | None = None
    mean: list | None = None
    std: list | None = None
    sigma: float = 0.25
    noise: str = "gaussian"  # a registered noise model: the training noise, recorded for certify
    norm: str | None = None  # the norm of the radii certify will give (default: the family's first)
    epochs: int = 30
    # None: the method's default (method_defaults), filled in when the config is made
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    lr_step: int | None = None
    lr_gamma: float = 0.1
    seed: int = 0
    augment: bool = True
    model_kwargs: dict = field(default_factory=dict)
    trainer_kwargs: dict = field(default_factory=dict)
    denoiser: dict | None = None  # the denoised methods' denoiser: {"name": a registered denoiser, **config}
    sigmas: list | None = None  # the denoised methods' noise levels (default: [sigma])

    def __post_init__(self):
        # JSON (the resume state) gives lists: a run compares equal to itself read back.
        for name in ("resize", "mean", "std"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        # The settings that came from the method's defaults, for the run to say so (not a field: not compared).
        self.from_defaults = {key: None for key in DEFAULTED if getattr(self, key) is None}
        if self.from_defaults:
            defaults = method_defaults(self.method, self.dataset)
            for key in self.from_defaults:
                self.from_defaults[key] = defaults[key]
                setattr(self, key, defaults[key])

    def check(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.lr_step is not None and self.lr_step < 1:
            raise ValueError(f"lr_step must be >= 1, got {self.lr_step!r}")
        if not self.sigma > 0 or not self.lr > 0:
            raise ValueError(f"sigma and lr must be > 0, got sigma={self.sigma!r}, lr={self.lr!r}")
        if self.denoiser is not None and not isinstance(self.denoiser.get("name"), str):
            raise ValueError(f"--denoiser needs a 'name' (a registered denoiser), got {self.denoiser!r}")
        if self.sigmas is not None and (not self.sigmas or not all(s > 0 for s in self.sigmas)):
            raise ValueError(f"--sigmas must be positive numbers, got {self.sigmas!r}")

    def same_run(self, other: "TrainConfig") -> list[str]:
        """Names of the settings (other than epochs) that differ from ``other``."""
        mine, theirs = asdict(self), asdict(other)
        return [key for key in mine if key != "epochs" and mine[key] != theirs[key]]


def _load_state(path: Path, config: TrainConfig, world: int, device_type: str, out: Path):
    """The resume state in ``path`` (None if there is none), checked against this run."""
    import torch

    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = TrainConfig(**json.loads(state["config"]))
    except Exception as err:
        raise ValueError(f"{path} is not a readable art-some training state ({err}); use --restart") from None
    differ = config.same_run(saved)
    if differ:
        then = ", ".join(f"{k} {getattr(saved, k)!r}" for k in differ)
        now = ", ".join(f"{k} {getattr(config, k)!r}" for k in differ)
        raise ValueError(f"{out} holds a run with different settings ({then}; this run has {now}); use --restart "
                         "or another --output-dir")
    if state["world"] != world or state["device"] != device_type:
        raise ValueError(f"{out} was trained with {state['world']} process(es) on {state['device']}; resume it the "
                         f"same way (now {world} on {device_type}) or use --restart")
    return state


def _exported_epoch(path: Path):
    """The epoch that ``model.safetensors`` says it holds (None if it is missing or unreadable)."""
    from safetensors import safe_open

    from art_some.models import METADATA_KEY

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})[METADATA_KEY]).get("epoch")
    except Exception:
        return None


def _exports_stale(model_path: Path, epoch: int, history: list[dict], denoiser_dir: Path | None = None) -> bool:
    """Whether the exports lag the resume state (a crash between their writes, which come after the state's)."""
    if _exported_epoch(model_path) != epoch:
        return True
    if denoiser_dir is not None and not (denoiser_dir / "unet").is_dir():
        return True
    try:
        return any((model_path.parent / name).read_text() != text for name, text in history_texts(history).items())
    except OSError:
        return True


def lr_step(config: TrainConfig) -> int:
    """
    Epochs between learning-rate drops: ``config.lr_step``, else a third of the run (50 of 150, as the papers),
    and no drop at all for runs under :data:`MIN_DECAY_EPOCHS` epochs (a step longer than the run).
    """
    if config.lr_step is not None:
        return config.lr_step
    return config.epochs // 3 if config.epochs >= MIN_DECAY_EPOCHS else config.epochs + 1


def check_names(method: str, model: str | None, model_module: str | None = None) -> None:
    """
    Refuse a trainer that is not registered, or a ``--model`` that is neither a checkpoint nor registered (nor
    given, without ``--model-module``).
    """
    from art_some.plugins import registered
    from art_some.runs.loader import check_registered

    if method not in registered("trainers"):
        raise ValueError(f"--method {method!r} is not registered ({', '.join(sorted(registered('trainers')))})")
    if model is None and model_module is None:
        raise ValueError("give --model: a registered model (art-some plugins lists them) or a checkpoint file; or "
                         "--model-module pkg.mod:factory for your own class")
    if model is not None and model_module is None and not is_checkpoint(model):
        check_registered(model)


def config_path(output_dir) -> Path:
    """Where a training run's resolved configuration goes: its output folder's ``train.config.yaml``."""
    return Path(output_dir) / CONFIG_FILE


def denoised_role(method: str) -> str | None:
    """
    What a trainer of the denoised cascade tunes (``"denoiser"`` or ``"classifier"``), as its registration declares
    (it trains through an estimator whose registration says ``denoiser``); None for the other trainers.
    """
    from art_some.plugins import meta

    declared = meta("trainers", method)
    if declared["estimator"] and meta("estimators", declared["estimator"])["denoiser"]:
        return declared["tunes"]
    return None


def denoised_methods() -> list[str]:
    """The registered trainers of the denoised cascade."""
    from art_some.plugins import registered

    return sorted(name for name in registered("trainers") if denoised_role(name))


def noise_options(config: TrainConfig) -> dict:
    """The estimator options of a non-default noise (recorded in the checkpoint, so certify smooths with it)."""
    options = {} if config.noise == "gaussian" else {"noise": config.noise}
    return options if config.norm is None else {**options, "norm": config.norm}


def _denoised_options(config: TrainConfig, info: dict, role: str | None) -> dict:
    """The cascade's estimator options (denoiser and levels) for a denoised method; {} for the others."""
    from art_some.plugins import registered

    if role is None:
        for flag, value in (("--denoiser", config.denoiser), ("--sigmas", config.sigmas)):
            if value is not None:
                raise ValueError(f"{flag} is for the denoised methods ({', '.join(denoised_methods())}), "
                                 f"not --method {config.method}")
        return {}
    known = sorted(registered("denoisers"))
    if config.denoiser is None:
        raise ValueError(f"--method {config.method} needs --denoiser: a registered denoiser ({', '.join(known)}) or "
                         "a JSON dict, e.g. --denoiser tiny_diffusion or --denoiser "
                         "'{\"name\": \"diffusion\", \"path\": \"unet_dir\"}'")
    spec = dict(config.denoiser)
    if spec["name"] not in known:
        raise ValueError(f"--denoiser {spec['name']!r} is not registered ({', '.join(known)})")
    if spec["name"] == "tiny_diffusion":  # a small random UNet, shaped like the data unless told otherwise
        channels, *size = info["input_shape"]
        spec.setdefault("channels", channels)
        spec.setdefault("sample_size", size[0] if len(set(size)) == 1 else list(size))
    return {"denoiser": spec, "sigmas": list(config.sigmas or [config.sigma])}


def _saves_denoiser(spec: dict | None, role: str | None) -> bool:
    """Whether the run writes its denoiser: a tuned one, or a random one (certify could not rebuild it)."""
    return spec is not None and (role == "denoiser" or spec["name"] in ("tiny_diffusion", "tiny_adm"))


def _denoiser_settings(spec: dict) -> dict:
    """The DiffusionDenoiser settings of a denoiser spec (what loading the saved folder must pass on)."""
    building = ("name", *DENOISER_FILES, "scheduler", "channels", "sample_size", "widths")
    return {k: v for k, v in spec.items() if k not in building}


def _scheduler_of(spec: dict, denoiser):
    """The DDPMScheduler that gave ``denoiser`` its schedule, checked against the schedule it holds."""
    import torch
    from diffusers import DDPMScheduler

    source = Path(spec.get("path") or "") / "scheduler" / "scheduler_config.json"
    if spec.get("scheduler") is None and spec["name"] == "diffusion" and source.is_file():
        scheduler = DDPMScheduler.from_config(json.loads(source.read_text()))
    else:
        scheduler = DDPMScheduler(**(spec.get("scheduler") or {}))
    if not torch.equal(scheduler.alphas_cumprod.double(), denoiser.alphas_cumprod.cpu()):
        raise ValueError("cannot save the denoiser: its noise schedule is not the one its --denoiser settings "
                         "describe; give them a 'scheduler'")
    return scheduler


def save_denoiser(denoiser, spec: dict, folder: Path) -> dict:
    """
    Write a DiffusionDenoiser, replacing ``folder`` whole, and return the denoiser spec that loads it, with ``path``
    relative to the folder's parent: a diffusers pipeline folder (``unet/``, ``scheduler/``), or for an ADM UNet its
    state dict in the released layout (``adm.safetensors``, which :func:`~art_some.models.diffusion.load_adm` reads)
    with its config in the spec.
    """
    from art_some.models.adm import ADMUNet

    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    for path in (tmp, old):
        shutil.rmtree(path, ignore_errors=True)
    if isinstance(denoiser.unet, ADMUNet):
        from safetensors.torch import save_file

        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in denoiser.unet.state_dict().items()},
                  str(tmp / "adm.safetensors"))
        _replace_folder(tmp, folder, old)
        settings = {k: v for k, v in spec.items() if k in ("input_range", "pad", "output_size", "output_mode",
                                                          "clip_denoised")}
        return {"name": "adm", "path": f"{folder.name}/adm.safetensors", "config": denoiser.unet.config.as_dict(),
                **settings}
    scheduler = _scheduler_of(spec, denoiser)
    denoiser.unet.save_pretrained(str(tmp / "unet"))
    scheduler.save_config(str(tmp / "scheduler"))
    _replace_folder(tmp, folder, old)
    return {"name": "diffusion", "path": folder.name, **_denoiser_settings(spec)}


def _savable(denoiser) -> bool:
    """Whether :func:`save_denoiser` can write ``denoiser``: a diffusers UNet or an ADM UNet inside."""
    from art_some.models.adm import ADMUNet

    unet = getattr(denoiser, "unet", None)
    return isinstance(unet, ADMUNet) or callable(getattr(unet, "save_pretrained", None))


def _replace_folder(tmp: Path, folder: Path, old: Path) -> None:
    # A folder cannot be replaced in one rename: a crash between these two leaves no folder, which the next run
    # sees as stale exports and rewrites.
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _build_model(config: TrainConfig, info: dict, device: str):
    """
    The model to train, its name (registered, or the user's ``--model-module``) and constructor arguments (a
    checkpoint's, for a checkpoint).
    """
    from art_some.runs.loader import load_model

    own = config.model_module is not None or config.arch is not None
    if own or is_checkpoint(config.model):
        if config.model_kwargs:
            raise ValueError("--num-heads is for a registered model name; a checkpoint's model keeps its own")
        model, meta = load_model(config.model, arch=config.arch, model_module=config.model_module, device=device,
                                 published=False, num_classes=info["num_classes"], in_channels=info["input_shape"][0])
        check_dataset(meta, info, config.dataset)
        kwargs = dict(meta.get("model_kwargs", {}))
        if config.model_module is None:  # a registered model takes num_classes, which the export adds
            kwargs.pop("num_classes", None)
        return model.to(device), meta["model"], kwargs
    try:
        model = load_model(config.model, num_classes=info["num_classes"], **config.model_kwargs)[0].to(device)
    except TypeError as err:
        raise ValueError(f"model {config.model!r} rejected its options {sorted(config.model_kwargs)} ({err}); "
                         "--num-heads is for multi-head (some_*) models") from None
    return model, config.model, dict(config.model_kwargs)


def _check_outputs(config: TrainConfig, out: Path, model_path: Path, state, restart: bool) -> None:
    """Refuse to write over a checkpoint that no run in ``out`` wrote: the run's source, or a copied file."""
    if config.model is not None and is_checkpoint(config.model) and model_path.exists() and \
            Path(config.model).resolve() == model_path.resolve():
        raise ValueError(f"--model {config.model} is the checkpoint this run writes into --output-dir {out}; copy it "
                         "elsewhere or give another --output-dir")
    if state is None and not restart and model_path.exists():
        raise ValueError(f"{model_path} was not written by a run in {out} (there is no {STATE_FILE}); give another "
                         "--output-dir, or --restart to replace it")


@contextlib.contextmanager
def _output_lock(out: Path, rank: int):
    """
    Rank 0 holds a lock (flock) on the folder itself for the run, leaving no file behind: a second run on the folder
    is refused, not mixed in.
    """
    if rank != 0:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(f"{out} is being trained by another art-some run; wait for it to finish or give "
                                 "another --output-dir") from None
        yield
    finally:
        os.close(fd)


def _make_optimizer(config: TrainConfig, params):
    import torch

    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def train(config: TrainConfig, output_dir: str | os.PathLike, device: str = "cpu", data_root=None, workers: int = 0,
          restart: bool = False, echo=print, tensorboard=None, monitor_inputs: int = MONITOR_INPUTS) -> list[dict]:
    """
    Train (or resume training) and checkpoint after every epoch into ``output_dir``: ``model.safetensors`` (the
    weights, with metadata that ``art-some certify`` reads), ``train_state.pt`` (optimizer, scheduler and
    trainer state, the config), ``history.jsonl`` and ``history.csv`` (one record per epoch: loss, rate, seconds,
    accuracies; :mod:`art_some.runs.history`); the denoised methods also write ``denoiser/`` when the denoiser is
    tuned or random. Each epoch writes the state first, each file atomically; a resumed run first rewrites exports
    that lag the state (a crash between the writes). Everything is checked (data set, model, trainer and its
    options, TensorBoard) before the first file is created.

    :param tensorboard: A folder for TensorBoard event files (each epoch's record as scalars), or None.
    :param monitor_inputs: Inputs of each split (training, test) whose accuracy is measured after every epoch.
    :return: The record of every epoch of the run so far (rank 0's; None on the other ranks).
    """
    try:
        return _train(config, output_dir, device, data_root, workers, restart, echo, tensorboard, monitor_inputs)
    finally:
        # DistributedDataParallel keeps the process group alive until its last reference goes: free the run's
        # objects first, so that gloo's threads end here and not in the interpreter's shutdown (an abort there).
        gc.collect()
        distributed.close(distributed.world_size())


def _train(config, output_dir, device, data_root, workers, restart, echo, tensorboard, monitor_inputs):
    """The body of :func:`train`."""
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from art_some.data import data_options_of, load_dataset
    from art_some.estimators.factory import create_estimator
    from art_some.models import save_checkpoint
    from art_some.models.multihead import unwrap
    from art_some.plugins import get, meta
    from art_some.runs.loader import check_fits, default_estimator, folder_note
    from art_some.runs.sources import data_settings

    config.check()
    if int(monitor_inputs) != monitor_inputs or monitor_inputs < 1:
        raise ValueError(f"monitor_inputs must be an integer >= 1, got {monitor_inputs!r}")
    trainer_cls = get("trainers", config.method)
    declared = meta("trainers", config.method)  # what the trainer's registration says it is
    role = denoised_role(config.method)
    rank, world, local = distributed.init(device) or (0, 1, 0)
    if not declared["distributed"] and world > 1:
        raise ValueError(f"--method {config.method} does not run under torchrun (its denoiser is not wrapped in "
                         "DistributedDataParallel); run it in one process")
    if world > 1 and device == "cuda":
        device = f"cuda:{local}"  # distributed.init made it the current device too: ART builds there
    out = Path(output_dir)
    state_path, model_path = out / STATE_FILE, out / MODEL_FILE
    denoiser_dir = out / DENOISER_DIR
    settings = data_settings(asdict(config))
    data, info = load_dataset(config.dataset, root=data_root, split="train", augment=config.augment, **settings)
    splits = {"train": evenly_spaced(load_dataset(config.dataset, root=data_root, split="train", **settings)[0],
                                     monitor_inputs, device),
              "heldout": evenly_spaced(load_dataset(config.dataset, root=data_root, split="test", **settings)[0],
                                       monitor_inputs, device)}
    estimator_options = {**_denoised_options(config, info, role), **noise_options(config)}

    torch.manual_seed(config.seed)
    model, model_name, model_kwargs = _build_model(config, info, device)
    state = None if restart else _load_state(state_path, config, world, str(torch.device(device).type), out)
    if state is not None:
        model.load_state_dict(state["model"])
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if "cuda" in str(device) else None)
    estimator = declared["estimator"] or default_estimator(model, model_name=model_name)
    # The optimizer steps what the method tunes: the classifier, or (diffusion calibration) the denoiser.
    optimizer = None if role == "denoiser" else _make_optimizer(config, net.parameters())
    clf = create_estimator(estimator, net, info, sigma=config.sigma, n0=100, alpha=0.001, batch_size=1000,
                           seed=config.seed, device="cuda" if "cuda" in str(device) else "cpu", optimizer=optimizer,
                           options=estimator_options)
    if world == 1:  # under DDP the ranks' wrapped model would synchronise; every rank holds the same data
        check_fits(clf, data, config.dataset, data_options=data_options_of(config.dataset))
    saves_denoiser = _saves_denoiser(estimator_options.get("denoiser"), role)
    if saves_denoiser and not _savable(clf.denoiser):
        raise ValueError(f"--method {config.method} saves its tuned denoiser as a diffusers folder or an ADM file: "
                         "--denoiser must be diffusion, tiny_diffusion, adm or tiny_adm")
    extra = {}
    if role == "denoiser":
        optimizer = extra["optimizer"] = _make_optimizer(config, clf.denoiser.parameters())
        if state is not None:
            clf.denoiser.load_state_dict(state["denoiser"])
    step = lr_step(config)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=config.lr_gamma)
    kwargs = dict(config.trainer_kwargs)
    if "total_epochs" in inspect.signature(trainer_cls).parameters:
        kwargs.setdefault("total_epochs", config.epochs)
    try:
        trainer = trainer_cls(clf, seed=config.seed, **kwargs, **extra)
    except TypeError as err:
        raise ValueError(f"trainer {config.method!r} rejected its options {sorted(kwargs)}: {err}") from None
    owns_schedule = getattr(trainer, "owns_lr_schedule", False)
    monitor = EpochMonitor(clf, splits, config.sigma, config.seed)

    _check_outputs(config, out, model_path, state, restart)
    board = tensorboard_class(tensorboard) if rank == 0 else None  # refused here if TensorBoard is missing
    if rank == 0 and config.model is not None and folder_note(config.model):
        echo(f"Note: {folder_note(config.model)}")
    if rank == 0 and getattr(config, "from_defaults", None):
        given = " ".join(f"--{key.replace('_', '-')} {value:g}" if isinstance(value, float) else
                         f"--{key.replace('_', '-')} {value}" for key, value in config.from_defaults.items())
        echo(f"Defaults of --method {config.method} ({config.dataset}): {given} (docs/trainers.rst lists each "
             "method's; an option you give wins)")
    # Everything is checked: only now are files created (or, with --restart, the old run removed), under the
    # folder's lock: a second run on the same --output-dir would silently replace this one's files.
    with _output_lock(out, rank):
        if rank == 0:
            if restart:
                for path in (state_path, model_path, out / HISTORY_FILE, out / CSV_FILE):
                    path.unlink(missing_ok=True)
                shutil.rmtree(denoiser_dir, ignore_errors=True)
            out.mkdir(parents=True, exist_ok=True)
        writer = None if board is None else board(log_dir=str(tensorboard))
        distributed.barrier(world)  # no rank looks for the folder before rank 0 has made it
        history = []
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scheduler.step_size = step  # a longer --epochs stretches the default schedule (and lambda's, below)
            mine = state["ranks"][rank]
            trainer.load_state_dict(mine["trainer"])
            if "total_epochs" in kwargs:
                trainer.total_epochs = kwargs["total_epochs"]
            torch.set_rng_state(mine["torch_rng"])  # data augmentation draws from the global generator
            history = as_records(state["history"])
            if rank == 0:
                echo(f"Resuming {out} after epoch {trainer.epoch}")
        elif rank == 0 and config.lr_step is None and step > config.epochs and not owns_schedule:
            echo(f"Learning rate {config.lr:g} for all {config.epochs} epochs (runs under {MIN_DECAY_EPOCHS} epochs "
                 "keep it constant; --lr-step sets the epochs between drops)")

        def export() -> None:
            """The denoiser folder, model.safetensors (what certify reads) and the history files, in that order."""
            options = dict(estimator_options)
            if saves_denoiser:
                options["denoiser"] = save_denoiser(clf.denoiser, options["denoiser"], denoiser_dir)
            elif "denoiser" in options:
                options["denoiser"] = absolute_denoiser(options["denoiser"])
            save = training_meta(sigma=config.sigma, dataset=config.dataset, info=info, estimator=estimator,
                                 method=config.method, epoch=trainer.epoch, trainer_kwargs=kwargs,
                                 estimator_options=options)
            if config.model_module is not None:  # certify asks for the same --model-module (art_some.models.own)
                save["model_module"] = config.model_module
            built = model_kwargs if config.model_module else {**model_kwargs, "num_classes": info["num_classes"]}
            write_atomically(model_path, lambda p: save_checkpoint(p, unwrap(net), model_name, built, **save))
            for name, text in history_texts(history).items():
                write_atomically(out / name, text)

        # The state is written first each epoch, so a crash before the exports leaves them an epoch behind: rewrite
        # them from the state before anything else (else a finished run would report a stale model as final).
        if state is not None and rank == 0 and _exports_stale(model_path, trainer.epoch, history,
                                                              denoiser_dir if saves_denoiser else None):
            echo(f"Re-exporting {model_path.name} and {HISTORY_FILE} from the resume state (epoch {trainer.epoch})")
            export()
        sampler = DistributedSampler(data, seed=config.seed) if world > 1 else None
        while trainer.epoch < config.epochs:
            shuffle = torch.Generator().manual_seed(seed_for(config.seed, TRAINING, epoch_shuffle_key(trainer.epoch)))
            loader = DataLoader(data, batch_size=config.batch_size // world, shuffle=sampler is None, sampler=sampler,
                                generator=shuffle, num_workers=workers, drop_last=False)
            lr = optimizer.param_groups[0]["lr"]  # the rate of this epoch: the epoch scheduler steps at its end
            started = time.perf_counter()
            # A trainer with its own per-iteration schedule (CRT's milestones) must not also get the epoch scheduler.
            loss = trainer.fit(loader, nb_epochs=1, scheduler=None if owns_schedule else scheduler, verbose=False)[0]
            seconds = time.perf_counter() - started
            if owns_schedule:  # it sets the rate before each step: report the rate of the epoch's last step
                lr = optimizer.param_groups[0]["lr"]
            # Every rank measures (the same inputs and draws): a DDP forward pass may broadcast buffers to all ranks.
            accuracy = monitor.measure()
            snapshot = {"trainer": trainer.state_dict(), "torch_rng": torch.get_rng_state(), "loss": loss}
            ranks = distributed.gather(snapshot, world)
            history.append({"epoch": trainer.epoch, "loss": sum(r["loss"] for r in ranks) / world, "lr": lr,
                            "seconds": round(seconds, 3), **accuracy})
            if rank == 0:
                echo(epoch_line(history[-1], config.epochs))
                log_scalars(writer, history[-1])
                # The resume state holds its own copy of the weights, so it is consistent whatever the moment of a
                # crash; model.safetensors is the export that certify reads.
                blob = {"config": json.dumps(asdict(config)), "world": world, "device": torch.device(device).type,
                        "model": unwrap(net).state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "ranks": ranks, "history": history}
                if role == "denoiser":
                    blob["denoiser"] = clf.denoiser.state_dict()
                write_atomically(state_path, lambda p: torch.save(blob, p))
                export()
        distributed.barrier(world)
    if writer is not None:
        writer.close()
    if rank != 0:
        return None
    warning = history and chance_warning(history[-1], splits["heldout"].chance, sigma=config.sigma,
                                         steps=getattr(trainer, "iteration", "?"), classes=info["num_classes"],
                                         loss_is_cross_entropy=declared["cross_entropy"])
    if warning:
        echo(warning)
    return history
