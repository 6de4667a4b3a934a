"""
Data-dependent smoothing during training (Alfarra et al., UAI 2022): every training example keeps its own sigma,
optimised by gradient ascent on the soft radius (:func:`~art_some.estimators.sigma_search.optimize_sigma`) and
warm-started across epochs, and the base trainer (Gaussian, SmoothAdv or MACER) trains on noise drawn at each
example's sigma.

| Paper link: https://arxiv.org/abs/2012.04351
"""
from __future__ import annotations

from art_some.estimators.sigma_search import optimize_sigma
from art_some.trainers.base import SmoothingTrainer
from art_some.trainers.common import stacked_logits
from art_some.trainers.gaussian import GaussianAugmentationTrainer
from art_some.trainers.macer import MACERTrainer
from art_some.trainers.smoothadv import SmoothAdvTrainer

BASES = {"gaussian": GaussianAugmentationTrainer, "smoothadv": SmoothAdvTrainer, "macer": MACERTrainer}
# The official scripts' sigma steps and draws per batch (train_rs.py, train_smooth_adv.py, train_macer.py).
SIGMA_STEPS = {"gaussian": 1, "smoothadv": 0, "macer": 10}
SIGMA_SAMPLES = {"gaussian": 1, "smoothadv": 1, "macer": 64}
SEARCH_MODES = ("train", "eval")
BASE_DEFAULTS = {"gaussian": {}, "smoothadv": {"epsilon": 0.25, "num_steps": 2, "num_noise_vec": 1, "warmup": 1},
                 "macer": {"num_noise_vec": 64, "lbd": 12.0, "gamma": 8.0, "form": "ddrs"}}


class IndexedDataset:
    """A map-style dataset whose items are ``(x, y, index)``: what the per-example sigma table is keyed by."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        x, y = self.dataset[index]
        return x, y, index


class IndexedCollate:
    """Collate ``(x, y, index)`` items with the loader's own collate for ``(x, y)``, the indices as a tensor."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items):
        import torch

        x, y = self.collate([(x, y) for x, y, _ in items])
        return x, y, torch.as_tensor([index for *_, index in items], dtype=torch.long)


class DDRSTrainer(SmoothingTrainer):
    """
    DDRS training as in the official scripts: a table of one sigma per training example, initialised to sigma0;
    for each mini-batch, ``sigma_steps`` ascent steps with ``sigma_samples`` draws on the examples' sigmas (written
    back, so they warm-start the next epoch), then the base trainer's loss with noise at each example's sigma. Until
    ``epoch_switch`` the base trains at sigma0 and no sigma moves.

    Defaults follow the scripts per base: Gaussian 1 step / 1 draw; SmoothAdv 0 steps (its script does not move
    sigma during training; epsilon 64/256, T 2, m 1, warm-up 1); MACER 10 steps / 64 draws (64 draws, lambda 12,
    gamma 8, the radius hinge: ``form="ddrs"``). The sigma step size defaults to the script's 1e-4 (the paper's value
    is not confirmed). After training, sigma is optimised on test inputs by
    :class:`~art_some.estimators.DataDependentSmoothedClassifier`.

    The search during training runs the network in **train mode**, as the official scripts do (their ``get_sigma``
    has ``model.eval()`` commented out), through the bare module (no DDP bookkeeping: these passes have no
    parameter backward). For a BatchNorm network this is the right choice: the loss the sigmas are for is
    computed in train mode with batch statistics, so the search ascends the radius of that same function, whereas
    in eval mode it would use running statistics that lag behind the weights (badly so early in training). The
    side effect is that the search's forward passes also update the running statistics; their inputs are the
    same noisy copies x + sigma_i eps that the Gaussian and MACER losses see and that certification sees, and the
    running statistics do not enter the training loss or its gradient, so the weights and sigmas are the same as
    without that update. Dropout is active in the search too (as in the official code). ``sigma_search_mode="eval"``
    searches on the eval-mode network instead (running statistics, no dropout, nothing updated), as the
    test-time search does. A sigma is written back to the table only when the step it was found for is taken
    (a refused non-finite step leaves the table unchanged).

    | Paper link: https://arxiv.org/abs/2012.04351

    :param classifier: A :class:`~art_some.SmoothedClassifier` with an optimizer.
    :param base: ``"gaussian"``, ``"smoothadv"`` or ``"macer"``.
    :param sigma: sigma0, the starting sigma of every example (default: the classifier's ``scale``).
    :param sigma_steps: K_tr, ascent steps per mini-batch (default per base, see above).
    :param sigma_samples: n, noise draws per ascent step (default per base).
    :param sigma_lr: Ascent step size.
    :param sigma_range: sigma is clamped to this range.
    :param prob_clamp: Clamp of the soft probabilities before Phi^-1.
    :param epoch_switch: Epochs trained at the fixed sigma0 before sigma moves (the SmoothAdv script: 60 of 90).
    :param sigma_search_mode: ``"train"`` (default, the official scripts) or ``"eval"``: the network's mode during
                              the sigma search (see above).
    :param seed: Seed of the noise and shuffling.
    :param base_kwargs: Options of the base trainer (e.g. ``epsilon`` for SmoothAdv, ``lbd`` for MACER).
    """

    def __init__(self, classifier, base: str = "gaussian", sigma=None, sigma_steps: int | None = None,
                 sigma_samples: int | None = None, sigma_lr: float = 1e-4, sigma_range=(1e-3, 2.0),
                 prob_clamp=(0.02, 0.98), epoch_switch: int = 0, sigma_search_mode: str = "train", seed: int = 0,
                 **base_kwargs):
        super().__init__(classifier, sigma=sigma, seed=seed)
        if base not in BASES:
            raise ValueError(f"base must be one of {sorted(BASES)}, got {base!r}")
        if sigma_search_mode not in SEARCH_MODES:
            raise ValueError(f"sigma_search_mode must be one of {', '.join(SEARCH_MODES)}, got {sigma_search_mode!r}")
        self.sigma_steps = SIGMA_STEPS[base] if sigma_steps is None else sigma_steps
        self.sigma_samples = SIGMA_SAMPLES[base] if sigma_samples is None else sigma_samples
        checks = (("sigma_steps", self.sigma_steps, 0), ("sigma_samples", self.sigma_samples, 1),
                  ("epoch_switch", epoch_switch, 0))
        for name, value, low in checks:
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not float(sigma_lr) >= 0:
            raise ValueError(f"sigma_lr must be >= 0, got {sigma_lr!r}")
        lo, hi = sigma_range
        if not 0 < lo <= self.sigma <= hi:
            raise ValueError(f"sigma_range must satisfy 0 < lo <= sigma0 ({self.sigma}) <= hi, got {sigma_range!r}")
        self.base_name = base
        self.base = BASES[base](classifier, sigma=self.sigma, seed=seed, **{**BASE_DEFAULTS[base], **base_kwargs})
        self.num_minibatches = self.base.num_minibatches
        self.sigma_lr, self.sigma_range, self.prob_clamp = float(sigma_lr), tuple(sigma_range), tuple(prob_clamp)
        self.epoch_switch = int(epoch_switch)
        self.sigma_search_mode = sigma_search_mode
        self.sigmas = None  # the per-example table, created with the first loader
        self._pending = None  # (indices, sigmas) of the step in progress, stored once the step is taken

    def _loader(self, x, y, batch_size: int, drop_last: bool):
        from torch.utils.data import DataLoader

        loader = super()._loader(x, y, batch_size, drop_last)
        if loader.batch_sampler is None:
            raise ValueError("DDRS needs a map-style dataset batched by index (its sigma table is keyed by index)")
        # The same batches in the same order (the batch sampler holds the sampler, shuffling and drop_last).
        kwargs = dict(batch_sampler=loader.batch_sampler, num_workers=loader.num_workers,
                      collate_fn=IndexedCollate(loader.collate_fn), pin_memory=loader.pin_memory,
                      worker_init_fn=loader.worker_init_fn, generator=loader.generator,
                      persistent_workers=loader.persistent_workers)
        if loader.num_workers > 0:
            kwargs["prefetch_factor"] = loader.prefetch_factor
        self._ensure_table(len(loader.dataset))
        return DataLoader(IndexedDataset(loader.dataset), **kwargs)

    def _ensure_table(self, size: int) -> None:
        import torch

        if self.sigmas is None:
            self.sigmas = torch.full((size,), self.sigma, dtype=torch.float32)
        elif len(self.sigmas) != size:
            raise ValueError(f"the sigma table has {len(self.sigmas)} entries but the training set {size}: DDRS keys "
                             "sigma by example index, so train on the same set throughout")

    def start_epoch(self) -> None:
        self.base.epoch = self.epoch  # the base's warm-up reads its own epoch

    def training_loss(self, x, y, index=None):
        if index is None:
            raise ValueError("DDRS needs the example indices (use DDRSTrainer.fit, which adds them)")
        self.base._generator = self.generator(x.device)  # one noise stream for sigma search and training
        self._pending = None
        index = index.cpu()
        sigma = self.sigmas[index].to(x.device)
        if self.epoch > self.epoch_switch and self.sigma_steps > 0:
            clf, training = self._classifier, self.sigma_search_mode == "train"
            sigma = optimize_sigma(lambda z: stacked_logits(clf, z, training, bare=True)[0], x, sigma,
                                   lr=self.sigma_lr, num_steps=self.sigma_steps, num_samples=self.sigma_samples,
                                   prob_clamp=self.prob_clamp, sigma_range=self.sigma_range,
                                   generator=self.generator(x.device))
            self._pending = (index, sigma.float().cpu())
        elif self.epoch <= self.epoch_switch:
            sigma = sigma.new_full(sigma.shape, self.sigma)
        return self.base.training_loss(x, y, sigma=sigma)

    def before_step(self, loader) -> None:
        if self._pending is not None:
            self._write_back(*self._pending)
            self._pending = None

    def _write_back(self, index, sigma) -> None:
        """Store the new sigmas; under DDP every rank stores every rank's, so the tables stay identical."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (index, sigma))
        else:
            parts = [(index, sigma)]
        for part_index, part_sigma in parts:
            self.sigmas[part_index] = part_sigma

    def state_dict(self) -> dict:
        return {**super().state_dict(), "sigmas": None if self.sigmas is None else self.sigmas.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.sigmas = None if state.get("sigmas") is None else state["sigmas"].clone().float()
        self.base.epoch = self.epoch
