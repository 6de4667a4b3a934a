"""
Training runs behind ``art-some train``: a registered trainer on a registered dataset and model, a checkpoint
after every epoch (safetensors weights + a resume state), resumption after an interruption, and
DistributedDataParallel when launched with ``torchrun`` (one process per device; rank 0 writes the files).
"""
from __future__ import annotations

import inspect
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from art_some.core.noise import seed_for
from art_some.core.results import write_atomically
from art_some.trainers.base import TRAINING_STAGE

STATE_FILE = "train_state.pt"
MODEL_FILE = "model.safetensors"
HISTORY_FILE = "history.jsonl"


@dataclass
class TrainConfig:
    """Everything that defines a run; a resumed run must match it (except ``epochs``, which may grow)."""

    method: str
    model: str
    dataset: str = "digits"
    sigma: float = 0.25
    epochs: int = 30
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int | None = None
    lr_gamma: float = 0.1
    seed: int = 0
    augment: bool = True
    model_kwargs: dict = field(default_factory=dict)
    trainer_kwargs: dict = field(default_factory=dict)

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

    def same_run(self, other: "TrainConfig") -> list[str]:
        """Names of the settings (other than epochs) that differ from ``other``."""
        mine, theirs = asdict(self), asdict(other)
        return [key for key in mine if key != "epochs" and mine[key] != theirs[key]]


def _distributed():
    """(rank, world size, local rank) from torchrun's environment, initialising the process group once."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, local


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _gather(obj, world: int) -> list:
    """Every rank's ``obj``, in rank order (each rank keeps its own noise stream, so each is saved)."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    gathered = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


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


def _history_lines(history: list[float]) -> str:
    return "".join(json.dumps({"epoch": e + 1, "loss": value}) + "\n" for e, value in enumerate(history))


def _exports_stale(model_path: Path, history_path: Path, epoch: int, history: list[float]) -> bool:
    """Whether the exports lag the resume state (a crash between their writes, which come after the state's)."""
    if _exported_epoch(model_path) != epoch:
        return True
    try:
        return history_path.read_text() != _history_lines(history)
    except OSError:
        return True


def train(config: TrainConfig, output_dir: str | os.PathLike, device: str = "cpu", data_root=None, workers: int = 0,
          restart: bool = False, echo=print) -> list[float]:
    """
    Train (or resume training) and checkpoint after every epoch into ``output_dir``: ``model.safetensors`` (the
    weights, with metadata that ``art-some certify`` reads), ``train_state.pt`` (optimizer, scheduler and
    trainer state, the config) and ``history.jsonl`` (one line per epoch). Each epoch writes the state first, each
    file atomically; a resumed run first rewrites exports that lag the state (a crash between the writes).

    :return: The mean training loss (rank 0's, under DDP) of every epoch of the run so far; None on the other
             ranks.
    """
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from art_some.data import load_dataset
    from art_some.models import create_model, save_checkpoint
    from art_some.models.multihead import unwrap
    from art_some.plugins import get

    config.check()
    trainer_cls = get("trainers", config.method)
    rank, world, local = _distributed()
    if world > 1 and device == "cuda":
        torch.cuda.set_device(local)  # ART builds on the current device: make it this rank's
        device = f"cuda:{local}"
    out = Path(output_dir)
    state_path, model_path, history_path = out / STATE_FILE, out / MODEL_FILE, out / HISTORY_FILE
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for path in (state_path, model_path, history_path) if restart else ():
            path.unlink(missing_ok=True)
    _barrier(world)  # no rank looks for a state that rank 0 is deleting
    data, info = load_dataset(config.dataset, root=data_root, split="train", augment=config.augment)

    torch.manual_seed(config.seed)
    try:
        model = create_model(config.model, num_classes=info["num_classes"], **config.model_kwargs).to(device)
    except TypeError as err:
        raise ValueError(f"model {config.model!r} rejected its options {sorted(config.model_kwargs)} ({err}); "
                         "--num-heads is for multi-head (some_*) models") from None
    multihead = callable(getattr(model, "head_logits", None))
    state = _load_state(state_path, config, world, str(torch.device(device).type), out)
    if state is not None:
        model.load_state_dict(state["model"])
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if "cuda" in str(device) else None)
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step = config.lr_step or max(1, config.epochs // 3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=config.lr_gamma)

    from art_some.cli import build_estimator

    estimator = "some" if multihead else "smoothed"
    clf = build_estimator(estimator, net, info, sigma=config.sigma, n0=100, alpha=0.001, batch_size=1000,
                          seed=config.seed, device="cuda" if "cuda" in str(device) else "cpu", optimizer=optimizer)
    kwargs = dict(config.trainer_kwargs)
    if "total_epochs" in inspect.signature(trainer_cls).parameters:
        kwargs.setdefault("total_epochs", config.epochs)
    try:
        trainer = trainer_cls(clf, seed=config.seed, **kwargs)
    except TypeError as err:
        raise ValueError(f"trainer {config.method!r} rejected its options {sorted(kwargs)}: {err}") from None
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
        history = list(state["history"])
        if rank == 0:
            echo(f"Resuming {out} after epoch {trainer.epoch}")

    meta = {"sigma": config.sigma, "dataset": config.dataset, "num_classes": info["num_classes"],
            "input_shape": list(info["input_shape"]), "estimator": estimator, "method": config.method}

    def export() -> None:
        """model.safetensors (what certify reads) and history.jsonl, from the weights and history in memory."""
        save = dict(meta, epoch=trainer.epoch, trainer_kwargs=kwargs)
        write_atomically(model_path, lambda p: save_checkpoint(
            p, unwrap(net), config.model, {**config.model_kwargs, "num_classes": info["num_classes"]}, **save))
        write_atomically(history_path, _history_lines(history))

    # The state is written first each epoch, so a crash before the exports leaves them an epoch behind: rewrite
    # them from the state before anything else (else a finished run would report a stale model as final).
    if state is not None and rank == 0 and _exports_stale(model_path, history_path, trainer.epoch, history):
        echo(f"Re-exporting {model_path.name} and {history_path.name} from the resume state (epoch {trainer.epoch})")
        export()
    sampler = DistributedSampler(data, seed=config.seed) if world > 1 else None
    while trainer.epoch < config.epochs:
        shuffle = torch.Generator().manual_seed(seed_for(config.seed, TRAINING_STAGE, 1000 + trainer.epoch))
        loader = DataLoader(data, batch_size=config.batch_size // world, shuffle=sampler is None, sampler=sampler,
                            generator=shuffle, num_workers=workers, drop_last=False)
        # A trainer with its own per-iteration schedule (CRT's milestones) must not also get the epoch scheduler.
        epoch_scheduler = None if getattr(trainer, "owns_lr_schedule", False) else scheduler
        loss = trainer.fit(loader, nb_epochs=1, scheduler=epoch_scheduler, verbose=False)[0]
        ranks = _gather({"trainer": trainer.state_dict(), "torch_rng": torch.get_rng_state(), "loss": loss}, world)
        history.append(sum(r["loss"] for r in ranks) / world)
        if rank == 0:
            echo(f"epoch {trainer.epoch}/{config.epochs}  loss {history[-1]:.4f}  "
                 f"lr {optimizer.param_groups[0]['lr']:.4g}")
            # The resume state holds its own copy of the weights, so it is consistent whatever the moment of a
            # crash; model.safetensors is the export that certify reads.
            blob = {"config": json.dumps(asdict(config)), "world": world, "device": torch.device(device).type,
                    "model": unwrap(net).state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "ranks": ranks, "history": history}
            write_atomically(state_path, lambda p: torch.save(blob, p))
            export()
    _barrier(world)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return history if rank == 0 else None
