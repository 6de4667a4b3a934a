"""
Training reliability (issue 14): non-finite inputs, labels that are not class indices and non-finite steps are
refused with a clear error before any weight turns into NaN; and the faithfulness fixes of the trainers
(Consistency's steps per chunk, SmoothMix's mix_step default, CRT's default schedule, DDRS's train-mode search).
"""
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from art_some import (
    DataDependentSmoothedClassifier,
    DenoisedMultiScaleClassifier,
    MultiHeadSmoothedClassifier,
    SmoothedClassifier,
    SmoothReduceClassifier,
)
from art_some.core.errors import NonFiniteError
from art_some.models import DigitsCNN, create_denoiser, digits_cnn_multihead
from art_some.trainers import (
    ConsistencyTrainer,
    CRTTrainer,
    DDRSTrainer,
    DenoisedClassifierTrainer,
    DiffusionCalibrationTrainer,
    GaussianAugmentationTrainer,
    MACERTrainer,
    SmoothAdvTrainer,
    SmoothMixTrainer,
    SOMETrainer,
)

LOSS = nn.CrossEntropyLoss()
SHAPE = (1, 8, 8)


class AnySize(nn.Module):
    """DigitsCNN behind a resize, so that it takes both whole 8x8 images and SmoothReduce's 6x6 patches."""

    def __init__(self):
        super().__init__()
        self.net = DigitsCNN()

    def forward(self, x):
        return self.net(nn.functional.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False))


def bn_net():
    """A small BatchNorm network: its running statistics are what a refused step must also leave alone."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 64, 10))


def estimator(kind: str, lr: float, model=None):
    """One of the five estimators on digits with an SGD optimizer of learning rate ``lr``."""
    torch.manual_seed(0)
    kw = dict(device_type="cpu", clip_values=(0.0, 1.0))
    if kind == "smoothed":
        net = model or DigitsCNN()
        return SmoothedClassifier(net, LOSS, SHAPE, 10, optimizer=torch.optim.SGD(net.parameters(), lr), scale=0.25,
                                  **kw)
    if kind == "multihead":
        net = model or digits_cnn_multihead(num_heads=2)
        return MultiHeadSmoothedClassifier(net, LOSS, SHAPE, 10, optimizer=torch.optim.SGD(net.parameters(), lr),
                                           scale=0.25, **kw)
    if kind == "smooth_reduce":
        net = model or AnySize()
        return SmoothReduceClassifier(net, LOSS, SHAPE, 10, optimizer=torch.optim.SGD(net.parameters(), lr),
                                      scale=0.25, patches={"layout": "grid", "size": 6, "stride": 2}, **kw)
    if kind == "denoised":
        net = model or DigitsCNN()
        return DenoisedMultiScaleClassifier(net, None, SHAPE, 10, denoiser=create_denoiser("tiny_diffusion",
                                                                                            widths=(8, 16)),
                                            sigmas=(0.25, 0.5), optimizer=torch.optim.SGD(net.parameters(), lr),
                                            **kw)
    if kind == "data_dependent":
        net = model or DigitsCNN()
        return DataDependentSmoothedClassifier(net, LOSS, SHAPE, 10, optimizer=torch.optim.SGD(net.parameters(), lr),
                                               scale=0.25, sigma_rule="optimize", certificate="fixed_sigma", **kw)
    raise AssertionError(kind)


ESTIMATORS = ["smoothed", "multihead", "smooth_reduce", "denoised", "data_dependent"]

# Every trainer, small settings; each builds on a fresh estimator with learning rate lr.
TRAINERS = {
    "gaussian": lambda lr: GaussianAugmentationTrainer(estimator("smoothed", lr)),
    "consistency": lambda lr: ConsistencyTrainer(estimator("smoothed", lr)),
    "smoothmix": lambda lr: SmoothMixTrainer(estimator("smoothed", lr), num_steps=1),
    "smoothadv": lambda lr: SmoothAdvTrainer(estimator("smoothed", lr), num_steps=1),
    "macer": lambda lr: MACERTrainer(estimator("smoothed", lr), num_noise_vec=4),
    "crt": lambda lr: CRTTrainer(estimator("smoothed", lr), teacher=DigitsCNN()),
    "ddrs": lambda lr: DDRSTrainer(estimator("smoothed", lr), sigma_steps=1, sigma_samples=1, sigma_lr=0.05),
    "some": lambda lr: SOMETrainer(estimator("multihead", lr), lambda_last=1.0),
    "diffusion_calibration": lambda lr: _calibration(lr),
    "denoised_classifier": lambda lr: DenoisedClassifierTrainer(estimator("denoised", lr)),
}


def _calibration(lr):
    est = estimator("denoised", 0.0)
    return DiffusionCalibrationTrainer(est, optimizer=torch.optim.SGD(est.denoiser.parameters(), lr),
                                       num_noise_vec=2)


def trained(trainer) -> list:
    """The modules a trainer changes (the classifier's model; the denoiser too for denoised smoothing)."""
    clf = trainer.get_classifier()
    return [m for m in (clf.model, getattr(clf, "denoiser", None)) if isinstance(m, nn.Module)]


def snapshot(modules) -> list:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def same(a, b) -> bool:
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def finite(modules) -> bool:
    return all(bool(torch.isfinite(v).all()) for m in modules for v in m.state_dict().values()
               if v.is_floating_point())


def count_steps(optimizer, after=None) -> list:
    """Record every optimizer step (and call ``after`` once it is taken)."""
    steps, step = [], optimizer.step

    def counted(*args, **kwargs):
        out = step(*args, **kwargs)
        steps.append(1)
        if after is not None:
            after()
        return out

    optimizer.step = counted
    return steps


# ---------------------------------------------------------------------------------------------------------------
# Estimators' fit: a NaN pixel and a learning rate that blows up
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ESTIMATORS)
def test_fit_refuses_a_nan_pixel_and_leaves_the_weights_alone(digits, kind):
    (x, y), _ = digits
    x = x[:64].copy()
    x[37, 0, 2, 5] = np.nan
    clf = estimator(kind, lr=0.05)
    modules = [m for m in (clf.model, getattr(clf, "denoiser", None)) if isinstance(m, nn.Module)]
    before = snapshot(modules)
    steps = count_steps(clf.optimizer)
    with pytest.raises(NonFiniteError, match=r"x has non-finite values \(nan or inf\) in rows 37;") as err:
        clf.fit(x, y[:64], batch_size=16, nb_epochs=1)
    assert err.value.indices == [37] and isinstance(err.value, ValueError)
    assert not steps and same(before, snapshot(modules))


@pytest.mark.parametrize("kind", ESTIMATORS)
def test_fit_stops_at_the_first_non_finite_loss_with_the_weights_still_finite(digits, kind):
    (x, y), _ = digits
    clf = estimator(kind, lr=1e6)
    steps = count_steps(clf.optimizer)
    with pytest.raises(NonFiniteError, match=r"non-finite (training loss|gradient) .*at epoch 1, iteration (\d+); "
                                             "lower the learning rate or check the data") as err:
        clf.fit(x[:64], y[:64], batch_size=16, nb_epochs=3)
    iteration = int(re.search(r"iteration (\d+)", str(err.value)).group(1))
    assert len(steps) == iteration - 1  # every step before the named one, not that one
    assert finite([clf.model])


def test_the_issue_example_message(digits):
    (x, y), _ = digits
    with pytest.raises(NonFiniteError) as err:
        estimator("smoothed", lr=1e6).fit(x[:64], y[:64], batch_size=16, nb_epochs=1)
    assert str(err.value) == ("non-finite training loss (nan) at epoch 1, iteration 3; lower the learning rate or "
                              "check the data")


# ---------------------------------------------------------------------------------------------------------------
# Every trainer (each goes through the shared loop): inputs checked, non-finite steps refused
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_every_trainer_refuses_non_finite_inputs(digits, name):
    (x, y), _ = digits
    x = x[:32].copy()
    x[[4, 9], 0, 0, 0] = [np.inf, np.nan]
    trainer = TRAINERS[name](0.05)
    before = snapshot(trained(trainer))
    with pytest.raises(NonFiniteError, match="rows 4 and 9") as err:
        trainer.fit(x, y[:32], batch_size=16, nb_epochs=1)
    assert err.value.indices == [4, 9] and same(before, snapshot(trained(trainer)))


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_every_trainer_refuses_a_non_finite_step_and_keeps_the_last_finite_weights(digits, name):
    (x, y), _ = digits
    trainer = TRAINERS[name](0.05)
    modules = trained(trainer)
    kept = []
    steps = count_steps(trainer.optimizer, after=lambda: kept.append(snapshot(modules)))
    original = trainer.training_loss

    def poisoned(*args, **kwargs):
        loss = original(*args, **kwargs)
        return loss * float("nan") if trainer.iteration == 1 else loss  # the second step goes wrong

    trainer.training_loss = poisoned
    with pytest.raises(NonFiniteError, match=r"non-finite training loss \(nan\) at epoch 1, iteration 2;"):
        trainer.fit(x[:64], y[:64], batch_size=32, nb_epochs=1)
    assert len(steps) == 1 and trainer.iteration == 1
    assert same(kept[-1], snapshot(modules)) and finite(modules)
    assert all(p.grad is None for m in modules for p in m.parameters())  # no NaN gradient left behind


@pytest.mark.parametrize("name", ["gaussian", "consistency", "smoothmix", "smoothadv", "crt", "ddrs",
                                  "diffusion_calibration", "denoised_classifier"])
def test_trainers_that_blow_up_stop_with_finite_weights(digits, name):
    # (MACER's and SOME's losses saturate at lr 1e6 instead of overflowing: the test above covers them.)
    (x, y), _ = digits
    trainer = TRAINERS[name](1e6)
    with pytest.raises(NonFiniteError, match="at epoch 1, iteration"):
        trainer.fit(x[:64], y[:64], batch_size=16, nb_epochs=3)
    assert finite(trained(trainer))


def test_a_finite_loss_with_a_non_finite_gradient_is_refused(digits):
    (x, y), _ = digits
    trainer = GaussianAugmentationTrainer(estimator("smoothed", 0.05))
    weight = trainer.get_classifier().model.classifier[-1].weight
    original = trainer.training_loss
    # d/dw sqrt(0 * w) = 0 / (2 sqrt(0)) = nan while the value stays 0: only the gradient check sees it.
    trainer.training_loss = lambda *a, **k: original(*a, **k) + torch.sqrt((weight * 0).abs()).sum()
    before = snapshot(trained(trainer))
    with pytest.raises(NonFiniteError, match=r"non-finite gradient \(nan\) with a finite loss .* iteration 1;"):
        trainer.fit(x[:16], y[:16], batch_size=16, nb_epochs=1)
    assert same(before, snapshot(trained(trainer)))


def test_a_gradient_whose_norm_overflows_is_refused_with_its_largest_entry(digits):
    # An entry of 1e20 is finite, but its float32 norm is not (and one SGD step would throw the weights away).
    (x, y), _ = digits
    trainer = GaussianAugmentationTrainer(estimator("smoothed", 0.05))
    weight = trainer.get_classifier().model.classifier[-1].weight
    original = trainer.training_loss
    trainer.training_loss = lambda *a, **k: original(*a, **k) + weight[0, 0] * 1e20
    with pytest.raises(NonFiniteError, match=r"gradient too large for a finite norm \(largest entry 1e\+20\)"):
        trainer.fit(x[:16], y[:16], batch_size=16, nb_epochs=1)


def test_a_refused_step_restores_the_batchnorm_running_statistics(digits):
    (x, y), _ = digits
    clf = estimator("smoothed", 0.05, model=bn_net())
    trainer = GaussianAugmentationTrainer(clf)
    kept = []
    count_steps(clf.optimizer, after=lambda: kept.append(snapshot([clf.model])))
    original = trainer.training_loss
    # The second step's forward pass sees overflowing inputs: train mode writes NaN into the running statistics.
    trainer.training_loss = lambda xb, yb: original(xb * 1e38 * 1e38 if trainer.iteration == 1 else xb, yb)
    with pytest.raises(NonFiniteError, match="iteration 2"):
        trainer.fit(x[:64], y[:64], batch_size=32, nb_epochs=1)
    assert same(kept[-1], snapshot([clf.model])) and finite([clf.model])
    assert not torch.equal(kept[-1][0]["1.running_mean"], torch.zeros(8))  # the first step did update them


def test_ddrs_keeps_the_sigma_table_of_the_last_step_taken(digits):
    (x, y), _ = digits
    trainer = TRAINERS["ddrs"](0.05)
    tables = []
    count_steps(trainer.optimizer, after=lambda: tables.append(trainer.sigmas.clone()))
    original = trainer.training_loss
    trainer.training_loss = lambda *a: original(*a) * (float("nan") if trainer.iteration == 1 else 1.0)
    with pytest.raises(NonFiniteError):
        trainer.fit(x[:64], y[:64], batch_size=32, nb_epochs=1)
    assert len(tables) == 1 and torch.equal(trainer.sigmas, tables[0])
    assert int((trainer.sigmas != 0.25).sum()) == 32  # only the first batch's examples moved


# ---------------------------------------------------------------------------------------------------------------
# DataLoader batches are checked as they come
# ---------------------------------------------------------------------------------------------------------------
def _loader(x, y, batch_size=16):
    return DataLoader(TensorDataset(torch.from_numpy(x), torch.as_tensor(y)), batch_size=batch_size)


def test_a_loader_batch_with_a_nan_is_refused_by_batch_and_row(digits):
    (x, y), _ = digits
    x = x[:48].copy()
    x[16 + 3, 0, 4, 4] = np.nan  # row 3 of the second batch
    clf = estimator("smoothed", 0.05)
    kept = []
    steps = count_steps(clf.optimizer, after=lambda: kept.append(snapshot([clf.model])))
    with pytest.raises(NonFiniteError, match=r"non-finite training inputs \(nan or inf\) in rows 3 of batch 2 of "
                                             r"epoch 1;") as err:
        GaussianAugmentationTrainer(clf).fit(_loader(x, y[:48]), nb_epochs=1)
    assert err.value.indices == [3] and len(steps) == 1 and same(kept[-1], snapshot([clf.model]))


def test_loader_labels_are_checked_per_batch(digits):
    (x, y), _ = digits
    labels = y[:32].astype(np.int64).copy()
    labels[16 + 5] = 10
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 10\), got 10 in rows 5 of batch 2"):
        GaussianAugmentationTrainer(estimator("smoothed", 0.05)).fit(_loader(x[:32], labels), nb_epochs=1)
    half = y[:32].astype(np.float32) + 0.5
    with pytest.raises(ValueError, match=r"integral class indices .* got 3.5 in rows 0, 1, .* and 6 more of batch 1"):
        GaussianAugmentationTrainer(estimator("smoothed", 0.05)).fit(_loader(x[:32], half), nb_epochs=1)
    # Float labels that are whole numbers and one-hot rows are class indices.
    onehot = np.eye(10, dtype=np.float32)[y[:32]]
    for good in (y[:32].astype(np.float32), onehot):
        losses = GaussianAugmentationTrainer(estimator("smoothed", 0.05)).fit(_loader(x[:32], good), nb_epochs=1)
        assert np.isfinite(losses).all()


# ---------------------------------------------------------------------------------------------------------------
# Labels of arrays are checked up front
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,error,match", [
    (10, ValueError, r"labels must be class indices in \[0, 10\), got 10 in rows 3 of y"),
    (-1, ValueError, r"labels must be class indices in \[0, 10\), got -1 in rows 3 of y"),
    (2.5, ValueError, r"labels must be integral class indices in \[0, 10\), got 2.5 in rows 3 of y"),
    (np.nan, NonFiniteError, r"labels are non-finite \(nan or inf\) in rows 3 of y"),
])
def test_labels_out_of_range_or_not_integral_are_refused(digits, bad, error, match):
    (x, y), _ = digits
    labels = y[:32].astype(np.float64 if isinstance(bad, float) else np.int64)
    labels[3] = bad
    clf = estimator("smoothed", 0.05)
    steps = count_steps(clf.optimizer)
    with pytest.raises(error, match=match):
        clf.fit(x[:32], labels, batch_size=16, nb_epochs=1)
    assert not steps


def test_one_hot_labels_with_a_nan_and_float_labels_that_are_whole(digits):
    (x, y), _ = digits
    onehot = np.eye(10, dtype=np.float32)[y[:32]]
    onehot[7, 2] = np.nan
    with pytest.raises(NonFiniteError, match="rows 7 of y"):
        estimator("smoothed", 0.05).fit(x[:32], onehot, batch_size=16, nb_epochs=1)
    GaussianAugmentationTrainer(estimator("smoothed", 0.05)).fit(x[:32], y[:32].astype(np.float32), nb_epochs=1)


# ---------------------------------------------------------------------------------------------------------------
# Faithfulness fixes
# ---------------------------------------------------------------------------------------------------------------
def test_consistency_takes_one_step_per_chunk_like_the_official_code(digits):
    # train_consistency.py splits each loader batch into m chunks, one optimizer step each (it used to be one).
    (x, y), _ = digits
    clf = estimator("smoothed", 0.05)
    sizes = []
    clf.model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    steps = count_steps(clf.optimizer)
    trainer = ConsistencyTrainer(clf, num_noise_vec=2)
    trainer.fit(x[:32], y[:32], batch_size=16, nb_epochs=1)
    assert len(steps) == 4 and sizes == [16] * 4  # 2 batches x 2 chunks of 8 inputs x 2 noisy copies
    assert trainer.steps_per_epoch(range(2)) == 4


def test_smoothmix_mix_step_defaults_to_zero_and_some_keeps_its_choice_by_sigma():
    for sigma, some_mix_step in ((0.25, 0), (0.5, 1), (1.0, 1)):
        assert SmoothMixTrainer(estimator("smoothed", 0.05), sigma=sigma).mix_step == 0
        some = SOMETrainer(estimator("multihead", 0.05), sigma=sigma, base="smoothmix")
        assert some.mix_step == some_mix_step


def _mlp_clf(lr=0.1):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    return SmoothedClassifier(net, LOSS, SHAPE, 10, optimizer=torch.optim.SGD(net.parameters(), lr), scale=0.25,
                              device_type="cpu", clip_values=(0.0, 1.0))


def test_crt_decays_the_learning_rate_over_the_fit_call_without_total_epochs(digits):
    (x, y), _ = digits
    clf = _mlp_clf()
    lrs = []
    step = clf.optimizer.step
    clf.optimizer.step = lambda *a, **k: (lrs.append(clf.optimizer.param_groups[0]["lr"]), step(*a, **k))[1]
    trainer = CRTTrainer(clf, teacher=nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    assert trainer.owns_lr_schedule
    trainer.fit(x[:80], y[:80], batch_size=16, nb_epochs=4)  # 5 steps per epoch, 20 in all
    assert lrs == pytest.approx([0.1] * 10 + [0.01] * 5 + [0.001] * 5)
    with pytest.warns(UserWarning, match="total_epochs"):
        trainer.fit(x[:16], y[:16], batch_size=16, nb_epochs=1)  # past the inferred 4 epochs: final rate, warned
    assert lrs[-1] == pytest.approx(0.001)


def test_crt_schedule_opt_out_keeps_the_rate_and_takes_a_scheduler(digits):
    (x, y), _ = digits
    clf = _mlp_clf()
    trainer = CRTTrainer(clf, teacher=nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), lr_schedule=False)
    calls = []
    trainer.fit(x[:32], y[:32], batch_size=16, nb_epochs=2, scheduler=SimpleNamespace(step=lambda: calls.append(1)))
    assert not trainer.owns_lr_schedule and calls == [1, 1]
    assert clf.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr_schedule=False"):
        CRTTrainer(clf, teacher=DigitsCNN()).fit(x[:16], y[:16], nb_epochs=1, scheduler=SimpleNamespace(step=None))


def test_crt_without_a_teacher_asks_for_one():
    clf = _mlp_clf()
    for kwargs in ({}, {"total_epochs": 3}):  # the command line passes total_epochs
        with pytest.raises(ValueError, match=r"CRT needs a teacher \(teacher=\.\.\.\): a robust SmoothedClassifier, "
                                             "a torch.nn.Module returning logits, or the path of a checkpoint"):
            CRTTrainer(clf, **kwargs)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_ddrs_searches_sigma_in_train_mode_like_the_official_scripts(digits, mode):
    (x, y), _ = digits
    clf = estimator("smoothed", 0.0, model=bn_net())
    modes = []
    # On the first layer: ART's wrapper runs a Sequential layer by layer, past the hooks of the whole.
    clf.model[0].register_forward_pre_hook(lambda module, args: modes.append(module.training))
    trainer = DDRSTrainer(clf, sigma_steps=2, sigma_samples=1, sigma_lr=0.05, sigma_search_mode=mode)
    trainer.fit(x[:16], y[:16], batch_size=16, nb_epochs=1)
    # Two search passes, then the training pass (always in train mode).
    assert modes == [mode == "train"] * 2 + [True]
    with pytest.raises(ValueError, match="sigma_search_mode must be one of train, eval"):
        DDRSTrainer(clf, sigma_search_mode="test")


def test_ddrs_train_mode_search_updates_batchnorm_statistics_only_as_the_official_code(digits):
    # Train-mode passes update the running statistics; with the learning rate 0 the weights stay, so the
    # difference between the modes is exactly the search's two extra updates.
    (x, y), _ = digits
    stats = {}
    for mode in ("train", "eval"):
        clf = estimator("smoothed", 0.0, model=bn_net())
        DDRSTrainer(clf, sigma_steps=2, sigma_samples=1, sigma_lr=0.05, sigma_search_mode=mode, seed=1).fit(
            x[:16], y[:16], batch_size=16, nb_epochs=1)
        stats[mode] = (int(clf.model[1].num_batches_tracked), clf.model[1].running_mean.clone())
    assert stats["train"][0] == 3 and stats["eval"][0] == 1
    assert not torch.equal(stats["train"][1], stats["eval"][1])


# ---------------------------------------------------------------------------------------------------------------
# Under DDP every rank stops together (no rank left waiting in an all-reduce)
# ---------------------------------------------------------------------------------------------------------------
def _ddp_worker(rank, world, port, out_dir):
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    from art_some.data import digits_arrays

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for scenario in ("nan_input", "blow_up"):
            x, y = digits_arrays("train")
            x = x[:32].copy()
            if scenario == "nan_input":
                x[3, 0, 0, 0] = np.nan  # rank 1's second row of its first batch (unshuffled: rank r gets r, r+2, ...)
            data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y[:32]).long())
            torch.manual_seed(0)
            net = DigitsCNN()
            clf = estimator("smoothed", 1e6 if scenario == "blow_up" else 0.05, model=DistributedDataParallel(net))
            loader = DataLoader(data, batch_size=4, sampler=DistributedSampler(data, world, rank, shuffle=False))
            try:
                GaussianAugmentationTrainer(clf).fit(loader, nb_epochs=2)
                message = "no error"
            except ValueError as err:
                message = f"{type(err).__name__}: {err}"
            finite_weights = all(bool(torch.isfinite(v).all()) for v in net.state_dict().values())
            torch.save({"message": message, "finite": finite_weights, "state": net.state_dict()},
                       os.path.join(out_dir, f"{scenario}{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_under_ddp_all_ranks_stop_together(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=False)
    for _ in range(240):  # a rank left waiting would hang: give up after two minutes
        if context.join(timeout=0.5):
            break
    else:
        for process in context.processes:
            process.terminate()
        pytest.fail("a rank hung")
    nan_input, blow_up = ([torch.load(tmp_path / f"{s}{r}.pt") for r in range(2)] for s in ("nan_input", "blow_up"))
    assert all(r["finite"] for r in nan_input + blow_up)
    # The rank with the NaN names it; the other stops with it instead of waiting in the gradient all-reduce.
    assert nan_input[1]["message"].startswith("NonFiniteError: non-finite training inputs (nan or inf) in rows 1 of "
                                              "batch 1 of epoch 1")
    assert nan_input[0]["message"] == ("ValueError: another rank refused its part of batch 1 of epoch 1 (see that "
                                       "rank's error)")
    # The gradients are averaged in backward, so both ranks see the non-finite step at the same iteration.
    iterations = [re.search(r"iteration (\d+)", r["message"]).group(1) for r in blow_up]
    assert all(r["message"].startswith("NonFiniteError: non-finite") for r in blow_up)
    assert iterations[0] == iterations[1]
    assert all(torch.equal(blow_up[0]["state"][k], blow_up[1]["state"][k]) for k in blow_up[0]["state"])
