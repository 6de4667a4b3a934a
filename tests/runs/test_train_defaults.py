"""Every registered trainer: its training defaults, and the near-chance warning (no trainer is skipped)."""
import json

import pytest
from click.testing import CliRunner

from art_some.cli import cli
from art_some.plugins import meta, registered
from art_some.runs.history import EpochMonitor, chance_warning
from art_some.runs.train import DEFAULTED, TRAIN_DEFAULTS, TrainConfig, method_defaults

CPU = ["--device", "cpu"]
TINY_UNET = json.dumps({"name": "tiny_diffusion", "widths": [8, 16]})


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("method", sorted(registered("trainers")))
def test_every_registered_trainer_has_complete_valid_defaults(method):
    defaults = method_defaults(method, "digits")
    assert set(defaults) == set(DEFAULTED)
    assert defaults["optimizer"] in ("sgd", "adam") and defaults["lr"] > 0 and defaults["batch_size"] >= 1
    assert defaults["momentum"] >= 0 and defaults["weight_decay"] >= 0
    # A built-in trainer states its own choice (measured on digits: docs/trainers.rst), even where it is the generic.
    assert meta("trainers", method)["train_defaults"], f"{method} declares no train_defaults"
    config = TrainConfig(method=method, model="digits_cnn")  # the Python API gets the same defaults as the CLI
    assert {key: getattr(config, key) for key in DEFAULTED} == defaults
    assert TrainConfig(method=method, model="digits_cnn", lr=0.5, batch_size=7).lr == 0.5


def test_the_batch_size_is_the_data_sets_unless_the_method_declares_one():
    assert method_defaults("gaussian", "cifar10")["batch_size"] == 256
    assert method_defaults("gaussian", "digits")["batch_size"] == 64
    assert TRAIN_DEFAULTS == {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}


def test_a_plugin_declaring_an_unknown_default_is_refused_by_name(monkeypatch):
    import art_some.runs.train as train_module

    monkeypatch.setattr("art_some.plugins.meta", lambda kind, name: {"train_defaults": {"learning_rate": 1}})
    with pytest.raises(ValueError, match="declares train_defaults \\['learning_rate'\\]; it may declare optimizer"):
        train_module.method_defaults("gaussian", "digits")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A (barely trained) digits_cnn checkpoint: CRT's teacher, diffusion calibration's frozen classifier."""
    out = tmp_path_factory.mktemp("classifier")
    assert run("train", "--method", "gaussian", "--model", "digits_cnn", "--epochs", 1, *CPU,
               "--output-dir", out).exit_code == 0
    return out / "model.safetensors"


def method_args(method, checkpoint):
    """What ``art-some train --method METHOD`` needs besides the defaults (the model, a teacher, a denoiser)."""
    model = {"some": "some_digits_cnn", "diffusion_calibration": checkpoint}.get(method, "digits_cnn")
    extra = {"crt": ["--option", f"teacher={checkpoint}"], "denoised_classifier": ["--denoiser", TINY_UNET],
             "diffusion_calibration": ["--denoiser", TINY_UNET]}.get(method, [])
    return ["train", "--method", method, "--model", model, *extra, "--epochs", 1, *CPU]


@pytest.mark.parametrize("accuracy, loss, warns", [(0.1, 2.5, True), (0.9, 0.5, False)])
def test_the_near_chance_check_covers_every_registered_trainer(tmp_path, monkeypatch, checkpoint, accuracy, loss,
                                                                warns):
    # Training itself is stubbed (one epoch at a fixed loss) and the measured accuracies fixed, so that the test is
    # about the check alone: each trainer's run reaches it, whatever the trainer declares.
    def one_epoch(self, *args, **kwargs):
        self.epoch += 1
        return [loss]

    for cls in registered("trainers").values():
        monkeypatch.setattr(cls, "fit", one_epoch)
    monkeypatch.setattr(EpochMonitor, "measure", lambda self: {f"{split}_acc{noise}": accuracy
                                                               for split in ("train", "heldout")
                                                               for noise in ("", "_noise")})
    for method in sorted(registered("trainers")):
        result = run(*method_args(method, checkpoint), "--output-dir", tmp_path / method)
        assert result.exit_code == 0, (method, result.output)
        assert ("near chance level" in result.output) is warns, (method, result.output)
        if warns:  # the loss is named where it is a cross-entropy (ln 10 = 2.30 is its chance level)
            assert ("ln 10 = 2.30" in result.output) is meta("trainers", method)["cross_entropy"], method


def test_the_warning_says_which_accuracy_is_near_chance():
    record = {"epoch": 3, "loss": 0.5, "heldout_acc": 0.9, "heldout_acc_noise": 0.12}
    warning = chance_warning(record, 0.1, sigma=0.5, steps=60, classes=10, loss_is_cross_entropy=True)
    assert "under the training noise (sigma 0.5) is 12.0% (clean 90.0%)" in warning and "ln 10" not in warning
    assert "smaller --sigma" in warning and "60 optimizer steps" in warning
    # The bar is 10% of the way from chance to perfect: 19% for ten balanced classes, 55% for two.
    assert chance_warning({**record, "heldout_acc_noise": 0.2}, 0.1, sigma=0.5, steps=1, classes=10,
                          loss_is_cross_entropy=False) is None
    assert chance_warning({**record, "heldout_acc_noise": 0.54}, 0.5, sigma=0.5, steps=1, classes=2,
                          loss_is_cross_entropy=False) is not None
    assert chance_warning({"epoch": 1, "loss": 2.0}, 0.1, sigma=0.5, steps=1, classes=10,
                          loss_is_cross_entropy=True) is None  # a record from before the accuracies
    # A cross-entropy still at ln 10 warns even above the accuracy bar; a loss that is not a cross-entropy does not.
    near = {**record, "loss": 2.29, "heldout_acc": 0.194, "heldout_acc_noise": 0.194}
    assert "the training loss 2.290 is near chance level (ln 10 = 2.30)" in chance_warning(
        near, 0.103, sigma=0.25, steps=12, classes=10, loss_is_cross_entropy=True)
    assert chance_warning(near, 0.103, sigma=0.25, steps=12, classes=10, loss_is_cross_entropy=False) is None


def test_the_docs_table_lists_each_built_in_trainers_defaults():
    from pathlib import Path

    from art_some.plugins import entries

    text = (Path(__file__).parents[2] / "docs" / "trainers.rst").read_text()
    rows = {line.split()[0]: line.split()[1:3] for line in text.splitlines() if line.split()[:1] and
            line.split()[0] in registered("trainers")}
    for name, entry in entries("trainers").items():
        if entry.distribution.startswith("art-some"):
            defaults = method_defaults(name, "digits")
            assert rows.get(name) == [defaults["optimizer"], f"{defaults['lr']:g}"], name


def test_monitor_inputs_must_be_a_positive_integer(tmp_path):
    from art_some.runs.train import train

    with pytest.raises(ValueError, match="monitor_inputs must be an integer >= 1, got 0"):
        train(TrainConfig(method="gaussian", model="digits_cnn", epochs=1), tmp_path / "out", monitor_inputs=0)
    assert not (tmp_path / "out").exists()
