"""``art-some train``: SOME end to end on digits, checkpoint and exact resume, certify the result, errors, torchrun."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from art_some.cli import cli
from art_some.runs.records import read_jsonl
from tests.conftest import PUBLISHED_LOGS

TRAIN = ["train", "--method", "some", "--model", "some_digits_cnn", "--num-heads", "3", "--optimizer", "adam",
         "--lr", "1e-3", "--batch-size", "128", "--device", "cpu", "--option", "base=consistency"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_train_resumes_exactly_and_certify_uses_the_multihead_estimator(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    same = ["--lr-step", 1, "--option", "total_epochs=2"]  # the schedule of the full run, also when cut short
    result = run(*TRAIN, *same, "--epochs", 2, "--output-dir", straight)
    assert result.exit_code == 0 and "epoch 2/2" in result.output, result.output
    assert run(*TRAIN, *same, "--epochs", 1, "--output-dir", broken).exit_code == 0
    result = run(*TRAIN, *same, "--epochs", 2, "--output-dir", broken)
    assert result.exit_code == 0 and "Resuming" in result.output, result.output
    a, b = load_file(straight / "model.safetensors"), load_file(broken / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    def history(folder):  # each epoch's record but its time
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (folder / "history.jsonl").read_text().splitlines()]

    assert [h["epoch"] for h in history(broken)] == [1, 2] and history(broken) == history(straight)

    out = tmp_path / "cert.jsonl"
    result = run("certify", "--model", straight / "model.safetensors", "--n0", 20, "--n", 200, "--max-inputs", 4,
                 "--output", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    records = read_jsonl(out)
    assert len(records) == 4 and {r["method"] for r in records} == {"some"} and records[0]["sigma"] == 0.25


@pytest.mark.parametrize("args, word", [
    (["--method", "nope"], "--method"),
    (["--model", "nope"], "--model"),
    (["--option", "no_equals_sign"], "--option"),
    (["--option", "frobnicate=3"], "rejected its options"),
    (["--option", "base=macer"], "base must be one of"),
    (["--model", "digits_cnn"], "multi-head"),
])
def test_train_errors(tmp_path, args, word):
    argv = list(TRAIN)
    for flag, value in zip(args[::2], args[1::2]):
        if flag in argv and flag != "--option":
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    result = run(*argv, "--epochs", 1, "--output-dir", tmp_path / "out")
    assert result.exit_code == 2 and word in result.output, result.output


def test_resume_refuses_a_different_run(tmp_path):
    assert run(*TRAIN, "--epochs", 1, "--output-dir", tmp_path).exit_code == 0
    result = run(*TRAIN, "--epochs", 2, "--sigma", 0.5, "--output-dir", tmp_path)
    assert result.exit_code == 2 and "sigma" in result.output
    assert run(*TRAIN, "--epochs", 1, "--sigma", 0.5, "--output-dir", tmp_path, "--restart").exit_code == 0


def test_torchrun_data_parallel_training_resumes_exactly(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.fail("torchrun is missing from the environment")
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def launch(out, epochs):
        args = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "art_some.cli", *TRAIN, "--lr-step", "1",
                "--option", "total_epochs=2", "--epochs", str(epochs), "--output-dir", str(out)]
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    assert launch(tmp_path / "straight", 2).count("final loss") == 1  # only rank 0 reports and writes
    launch(tmp_path / "broken", 1)
    assert "Resuming" in launch(tmp_path / "broken", 2)
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "broken" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # each rank's noise stream was saved and restored
    result = run(*TRAIN, "--lr-step", 1, "--option", "total_epochs=2", "--epochs", 3, "--output-dir",
                 tmp_path / "broken")  # one process now: refused
    assert result.exit_code == 2 and "2 process(es)" in result.output


PLAIN = ["--model", "digits_cnn", "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "256", "--device", "cpu"]


@pytest.mark.parametrize("method, options", [
    ("smoothadv", ["--option", "num_noise_vec=2", "--option", "num_steps=1"]),
    ("macer", ["--option", "num_noise_vec=4"]),
    ("ddrs", ["--option", "base=macer", "--option", "num_noise_vec=2", "--option", "sigma_samples=2",
              "--option", "sigma_steps=1", "--option", "sigma_lr=0.05"]),
])
def test_robust_trainers_train_and_resume_exactly(tmp_path, method, options):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    args = ["train", "--method", method, *PLAIN, *options]
    assert run(*args, "--epochs", 2, "--output-dir", straight).exit_code == 0
    assert run(*args, "--epochs", 1, "--output-dir", broken).exit_code == 0
    result = run(*args, "--epochs", 2, "--output-dir", broken)
    assert result.exit_code == 0 and "Resuming" in result.output, result.output
    a, b = load_file(straight / "model.safetensors"), load_file(broken / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    if method == "ddrs":  # the per-example sigma table is part of the resume state
        state = torch.load(broken / "train_state.pt", weights_only=True)
        sigmas = state["ranks"][0]["trainer"]["sigmas"]
        assert sigmas.shape == (1437,) and len(torch.unique(sigmas)) > 1000


def test_crt_distils_a_trained_teacher_checkpoint(tmp_path):
    teacher = tmp_path / "teacher"
    assert run("train", "--method", "gaussian", *PLAIN, "--epochs", 2, "--output-dir", teacher).exit_code == 0
    student = tmp_path / "student"
    result = run("train", "--method", "crt", *PLAIN, "--epochs", 2, "--output-dir", student, "--option",
                 f"teacher={teacher / 'model.safetensors'}")
    assert result.exit_code == 0, result.output
    # CRT owns the learning-rate schedule (x0.1 at 50% and 75% of the 2 x 6 iterations): the last steps use 1e-5.
    assert [line for line in result.output.splitlines() if line.startswith("epoch ")][-1].endswith("lr 1e-05")
    broken = tmp_path / "broken"
    crt = ["train", "--method", "crt", *PLAIN, "--output-dir", broken, "--option",
           f"teacher={teacher / 'model.safetensors'}"]
    assert run(*crt, "--epochs", 1, "--option", "total_epochs=2").exit_code == 0  # cut short, same schedule
    result = run(*crt, "--epochs", 2, "--option", "total_epochs=2")
    assert result.exit_code == 0 and "Resuming" in result.output, result.output
    a, b = load_file(student / "model.safetensors"), load_file(broken / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    result = run("train", "--method", "crt", *PLAIN, "--epochs", 2, "--output-dir", tmp_path / "bad", "--option",
                 f"teacher={tmp_path / 'missing.safetensors'}")
    assert result.exit_code != 0 and "not found" in result.output


def test_smoothmix_certification_log_has_the_released_format_and_replays(tmp_path):
    # Spec B.5 test 9: certify a saved SmoothMix model and write rows in the format of the released logs
    # (data/certify/*.tsv of jh-jeong/smoothmix); the same seed gives the same rows.
    model = tmp_path / "smoothmix"
    args = ["train", "--method", "smoothmix", *PLAIN, "--epochs", 1, "--output-dir", model]
    assert run(*args).exit_code == 0
    rows = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.jsonl"
        result = run("certify", "--model", model / "model.safetensors", "--n0", 20, "--n", 300, "--max-inputs", 6,
                     "--output", out, "--device", "cpu")
        assert result.exit_code == 0, result.output
        rows.append([line.split("\t")[:5] for line in out.with_suffix(".tsv").read_text().splitlines()])
    released = os.path.join(PUBLISHED_LOGS, "smoothmix_cifar10", "smoothmix_noise-0.25.tsv")
    with open(released) as f:
        assert out.with_suffix(".tsv").read_text().splitlines()[0] == f.readline().rstrip("\n")
    assert rows[0] == rows[1] and len(rows[0]) == 7
    for record, row in zip(read_jsonl(tmp_path / "b.jsonl"), rows[1][1:]):
        assert [int(row[0]), int(row[1]), int(row[2]), int(row[4])] == [record["idx"], record["label"],
                                                                        record["predict"], record["correct"]]
        assert float(row[3]) == pytest.approx(record["radius"], abs=1e-3)


# The trainers that a test in this project runs through `art-some train` (here, in test_first_hour.py for the two
# denoised methods, and test_smoothmix_certification_log_... for smoothmix).
TRAINED_FROM_THE_CLI = {"gaussian", "consistency", "smoothmix", "smoothadv", "macer", "crt", "ddrs", "some",
                        "denoised_classifier", "diffusion_calibration"}


@pytest.mark.parametrize("method", ["gaussian", "consistency"])
def test_the_plain_trainers_train_from_the_command_line_and_certify(tmp_path, method):
    out = tmp_path / method
    assert run("train", "--method", method, *PLAIN, "--epochs", 1, "--output-dir", out).exit_code == 0
    result = run("certify", "--model", out / "model.safetensors", "--n0", 20, "--n", 50, "--max-inputs", 3,
                 "--output", tmp_path / "r.jsonl", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(tmp_path / "r.jsonl")) == 3


def test_every_registered_trainer_is_reached_from_the_command_line():
    from art_some.plugins import entries

    builtin = {name for name, entry in entries("trainers").items() if entry.distribution.startswith("art-some")}
    assert builtin and builtin <= TRAINED_FROM_THE_CLI, sorted(builtin - TRAINED_FROM_THE_CLI)
