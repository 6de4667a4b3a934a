"""``art-some train``'s per-epoch history (history.jsonl, history.csv, TensorBoard) and its near-chance warning."""
import csv
import json
import sys
import types

from click.testing import CliRunner

from art_some.cli import cli
from art_some.runs.history import COLUMNS

CPU = ["--device", "cpu"]
GAUSSIAN = ["train", "--method", "gaussian", "--model", "digits_cnn", *CPU]
KEYS = {"epoch", "loss", "lr", "seconds", "train_acc", "train_acc_noise", "heldout_acc", "heldout_acc_noise"}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def history(folder):
    return [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]


def test_history_holds_one_record_per_epoch_with_accuracies_and_resume_appends_without_duplicates(tmp_path):
    out = tmp_path / "run"
    result = run(*GAUSSIAN, "--epochs", 2, "--output-dir", out)
    assert result.exit_code == 0, result.output
    first = history(out)
    assert [r["epoch"] for r in first] == [1, 2] and all(set(r) == KEYS for r in first)
    for record in first:
        assert all(0.0 <= record[k] <= 1.0 for k in KEYS if k.endswith(("_acc", "_noise")))
        assert record["lr"] == 0.1 and record["seconds"] > 0 and record["loss"] > 0
    # Two epochs of Gaussian training on digits learn: far above chance (10%), clean above noisy.
    assert first[-1]["heldout_acc"] > 0.6 and first[-1]["heldout_acc"] >= first[-1]["heldout_acc_noise"] > 0.5
    assert first[-1]["loss"] < first[0]["loss"]
    line = next(line for line in result.output.splitlines() if line.startswith("epoch 2/2"))
    assert f"held-out {first[-1]['heldout_acc']:.1%} (noise {first[-1]['heldout_acc_noise']:.1%})" in line
    assert line.endswith("lr 0.1")

    resumed = run(*GAUSSIAN, "--epochs", 3, "--output-dir", out)
    assert resumed.exit_code == 0 and "Resuming" in resumed.output and "epoch 2/3" not in resumed.output
    records = history(out)
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[:2] == first  # appended, earlier lines kept
    again = run(*GAUSSIAN, "--epochs", 3, "--output-dir", out)  # already finished: nothing trained or added
    assert again.exit_code == 0 and history(out) == records

    straight = tmp_path / "straight"  # the same run in one go: the same records but for the times
    assert run(*GAUSSIAN, "--epochs", 3, "--output-dir", straight).exit_code == 0
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in history(straight)] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 3
    assert [float(row["heldout_acc_noise"]) for row in rows] == [r["heldout_acc_noise"] for r in records]
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]


def test_a_crash_before_the_history_export_is_repaired_including_the_csv(tmp_path):
    out = tmp_path / "run"
    assert run(*GAUSSIAN, "--epochs", 1, "--output-dir", out).exit_code == 0
    (out / "history.csv").unlink()
    result = run(*GAUSSIAN, "--epochs", 1, "--output-dir", out)
    assert result.exit_code == 0 and "Re-exporting" in result.output, result.output
    assert len((out / "history.csv").read_text().splitlines()) == 2


def test_a_resume_state_from_before_the_accuracies_keeps_its_losses(tmp_path):
    import torch

    out = tmp_path / "run"
    assert run(*GAUSSIAN, "--epochs", 1, "--output-dir", out).exit_code == 0
    state = torch.load(out / "train_state.pt", weights_only=True)
    state["history"] = [1.5]  # what earlier versions stored: the losses only
    torch.save(state, out / "train_state.pt")
    result = run(*GAUSSIAN, "--epochs", 2, "--output-dir", out)
    assert result.exit_code == 0, result.output
    records = history(out)
    assert records[0] == {"epoch": 1, "loss": 1.5} and set(records[1]) == KEYS
    assert (out / "history.csv").read_text().splitlines()[1] == "1,1.5,,,,,,"


def test_tensorboard_without_the_package_is_refused_before_any_file(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    result = run(*GAUSSIAN, "--epochs", 1, "--output-dir", tmp_path / "out", "--tensorboard", tmp_path / "tb")
    assert result.exit_code == 2 and "pip install tensorboard" in result.output, result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "tb").exists()


def test_tensorboard_gets_every_epoch_as_scalars(tmp_path, monkeypatch):
    scalars = []

    class Writer:  # stands in for torch.utils.tensorboard.SummaryWriter (TensorBoard is not installed here)
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((self.log_dir, tag, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    out, board = tmp_path / "out", tmp_path / "tb"
    assert run(*GAUSSIAN, "--epochs", 2, "--output-dir", out, "--tensorboard", board).exit_code == 0
    records = history(out)
    assert {s[0] for s in scalars} == {str(board)}
    tags = {tag for _, tag, _, step in scalars if step == 2}
    assert tags == {"loss", "lr", "seconds", "accuracy/train", "accuracy/train_noise", "accuracy/heldout",
                    "accuracy/heldout_noise"}
    assert [(v, step) for _, tag, v, step in scalars if tag == "accuracy/heldout_noise"] == \
           [(r["heldout_acc_noise"], r["epoch"]) for r in records]


# ----------------------------------------------------------------------------------------------------------------
# MACER: chance level at the old defaults is now said; the new defaults learn
# ----------------------------------------------------------------------------------------------------------------
MACER = ["train", "--method", "macer", "--model", "digits_cnn", "--epochs", 3, *CPU]


def test_macer_at_chance_level_warns_in_words_a_user_can_act_on(tmp_path):
    # The settings that every method had before it had its own (SGD, lr 0.1, batch 64): MACER stays constant.
    result = run(*MACER, "--optimizer", "sgd", "--lr", 0.1, "--output-dir", tmp_path / "bad")
    assert result.exit_code == 0, result.output
    last = history(tmp_path / "bad")[-1]
    assert last["heldout_acc"] < 0.15 and last["heldout_acc_noise"] < 0.15
    warning = next(line for line in result.output.splitlines() if line.startswith("Warning"))
    for words in ("after 3 epochs", "near chance level", f"{last['heldout_acc']:.1%} clean",
                  "always answering the commonest class", "--epochs", "--lr", "--optimizer", "docs/trainers.rst"):
        assert words in warning, warning


def test_macer_with_its_defaults_learns_digits_in_three_epochs_without_a_warning(tmp_path):
    result = run(*MACER, "--output-dir", tmp_path / "good")
    assert result.exit_code == 0, result.output
    assert "Defaults of --method macer (digits): --optimizer adam --lr 0.01" in result.output
    last = history(tmp_path / "good")[-1]
    assert last["heldout_acc"] > 0.5 and last["heldout_acc_noise"] > 0.5, last  # chance: 10%
    assert "Warning" not in result.output and "chance" not in result.output


def test_an_option_given_wins_over_the_method_default(tmp_path):
    result = run(*MACER[:5], "--epochs", 1, *CPU, "--optimizer", "sgd", "--option", "num_noise_vec=2",
                 "--output-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "--optimizer" not in result.output.split("Defaults of --method macer (digits):")[1].splitlines()[0]
    import torch

    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)
    config = json.loads(state["config"])
    assert config["optimizer"] == "sgd" and config["lr"] == 0.01  # the rate still the method's
    assert "momentum" in state["optimizer"]["param_groups"][0]  # SGD's state, not Adam's

