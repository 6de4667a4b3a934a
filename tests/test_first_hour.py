"""
A new user's first hour (issue 19): fast help, every listed method usable from the command line, short training
runs that train, errors that name the right thing, progress and resume that say where they are.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from art_some.cli import cli
from art_some.runs.records import read_header, read_jsonl

CPU = ["--device", "cpu"]
TINY_UNET = json.dumps({"name": "tiny_diffusion", "widths": [8, 16]})


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and all(w in last for w in words), result.output


# ----------------------------------------------------------------------------------------------------------------
# Start-up: the commands that need neither ART nor torch import neither
# ----------------------------------------------------------------------------------------------------------------
LOG = os.path.join(os.path.dirname(__file__), "data", "published_logs", "some_cifar10_r110", "Gaussian_noise-0.25.tsv")
PROBE = """
import sys
from art_some.cli import main
try:
    main(sys.argv[1:])
except SystemExit as end:
    code = end.code
print("EXIT", code, "art" in sys.modules, "torch" in sys.modules, file=sys.stderr)
"""


def test_importing_the_cli_imports_neither_art_nor_torch():
    probe = "import art_some.cli, sys; print('art' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("args, code", [
    (["--help"], 0), (["--version"], 0), (["certify", "--help"], 0), (["train", "--help"], 0),
    (["evaluate", "--help"], 0), (["certfy"], 2), (["report", LOG], 0), (["certify", "--modle", "x"], 2),
])
def test_help_version_typos_and_report_start_without_art_or_torch(args, code):
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == f"EXIT {code} False False", proc.stderr


def test_the_console_script_answers_help():
    script = os.path.join(os.path.dirname(sys.executable), "art-some")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Usage: art-some" in proc.stdout and "certify" in proc.stdout


# ----------------------------------------------------------------------------------------------------------------
# The denoised methods and data_dependent from the command line
# ----------------------------------------------------------------------------------------------------------------
def test_denoised_classifier_trains_and_certify_finds_its_random_denoiser(tmp_path):
    out = tmp_path / "dc"
    result = run("train", "--method", "denoised_classifier", "--model", "digits_cnn", "--denoiser", TINY_UNET,
                 "--sigmas", "0.25,0.5", "--epochs", 1, *CPU, "--output-dir", out)
    assert result.exit_code == 0 and "epoch 1/1" in result.output, result.output
    assert (out / "denoiser" / "unet" / "config.json").is_file()
    assert (out / "denoiser" / "scheduler" / "scheduler_config.json").is_file()
    records = tmp_path / "r.jsonl"
    result = run("certify", "--model", out / "model.safetensors", "--n0", 10, "--n", 100, "--max-inputs", 2, *CPU,
                 "--output", records)
    assert result.exit_code == 0, result.output
    record = read_jsonl(records)[0]
    assert record["method"] == "denoised_multiscale" and record["sigmas"] == [0.5, 0.25]
    assert record["denoiser"] == "DiffusionDenoiser"
    # certify loaded the denoiser the classifier was trained with: the saved folder (a random UNet cannot be rebuilt
    # from its name), the same weights as a second random one built like it at the run's seed.
    from art_some.models import DigitsCNN
    from art_some.models.diffusion import DiffusionDenoiser, create_denoiser
    from art_some.runs.header import weights_hash

    saved = DiffusionDenoiser.from_pretrained(out / "denoiser")
    assert read_header(records)["estimator_params"]["denoiser"]["sha256"] == weights_hash(saved)
    torch.manual_seed(0)
    DigitsCNN()  # the run built its model first
    rebuilt = create_denoiser("tiny_diffusion", channels=1, sample_size=8, widths=[8, 16])
    assert weights_hash(rebuilt) == weights_hash(saved)
    assert "denoiser" not in torch.load(out / "train_state.pt", weights_only=True)  # frozen: nothing to resume


def test_diffusion_calibration_tunes_the_denoiser_of_a_trained_classifier_and_resumes_exactly(tmp_path):
    classifier = tmp_path / "classifier"
    assert run("train", "--method", "gaussian", "--model", "digits_cnn", "--epochs", 1, *CPU, "--output-dir",
               classifier).exit_code == 0
    args = ["train", "--method", "diffusion_calibration", "--model", classifier / "model.safetensors",
            "--denoiser", TINY_UNET, "--optimizer", "adam", "--lr", "1e-3", "--option", "num_noise_vec=1", *CPU]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    result = run(*args, "--epochs", 2, "--output-dir", straight)
    assert result.exit_code == 0 and "epoch 2/2" in result.output, result.output
    assert run(*args, "--epochs", 1, "--output-dir", broken).exit_code == 0
    after_one = load_file(broken / "denoiser" / "unet" / "diffusion_pytorch_model.safetensors")
    result = run(*args, "--epochs", 2, "--output-dir", broken)
    assert result.exit_code == 0 and "Resuming" in result.output, result.output

    def unet(folder):
        return load_file(folder / "denoiser" / "unet" / "diffusion_pytorch_model.safetensors")

    a, b = unet(straight), unet(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the denoiser's state was resumed
    assert any(not torch.equal(a[k], after_one[k]) for k in a)  # and tuned further
    frozen, start = load_file(straight / "model.safetensors"), load_file(classifier / "model.safetensors")
    assert all(torch.equal(frozen[k], start[k]) for k in frozen)  # the classifier stayed as it was
    records = tmp_path / "r.jsonl"
    result = run("certify", "--model", straight / "model.safetensors", "--n0", 10, "--n", 100, "--max-inputs", 2,
                 *CPU, "--output", records)
    assert result.exit_code == 0, result.output
    assert read_jsonl(records)[0]["method"] == "denoised_multiscale"
    # Another --sigma certifies the same model and denoiser at that single level.
    result = run("certify", "--model", straight / "model.safetensors", "--sigma", 0.5, "--n0", 10, "--n", 100,
                 "--max-inputs", 1, *CPU, "--output", tmp_path / "s.jsonl")
    assert result.exit_code == 0 and read_jsonl(tmp_path / "s.jsonl")[0]["sigmas"] == [0.5], result.output


@pytest.mark.parametrize("args, words", [
    (["--method", "denoised_classifier"], ["--method denoised_classifier needs --denoiser", "tiny_diffusion"]),
    (["--method", "denoised_classifier", "--denoiser", "nope"], ["--denoiser 'nope' is not registered"]),
    (["--method", "denoised_classifier", "--denoiser", "{bad json"], ["--denoiser is not valid JSON"]),
    (["--method", "diffusion_calibration", "--denoiser", "identity"], ["--denoiser must be", "tiny_adm"]),
    (["--method", "gaussian", "--denoiser", "tiny_diffusion"], ["--denoiser is for the denoised methods"]),
    (["--method", "gaussian", "--sigmas", "0.25,0.5"], ["--sigmas is for the denoised methods"]),
    (["--method", "denoised_classifier", "--denoiser", "identity", "--sigmas", "0,1"], ["--sigmas"]),
    (["--method", "gaussian", "--dataset", "nope"], ["--dataset", "digits"]),
    (["--method", "gaussian", "--num-heads", "3"], ["--num-heads"]),
    (["--method", "gaussian", "--model", "missing.safetensors"], ["checkpoint not found"]),
])
def test_train_errors_name_the_option_and_create_no_files(tmp_path, args, words):
    argv = {"--model": "digits_cnn", "--epochs": "1", "--output-dir": str(tmp_path / "out")}
    argv.update(zip(args[::2], args[1::2]))
    one_line_error(run("train", *CPU, *[item for pair in argv.items() for item in pair]), *words)
    assert not (tmp_path / "out").exists()


def test_data_dependent_certifies_with_the_training_split_as_knn_reference(tmp_path):
    base = ["certify", "--model", "digits_cnn", "--sigma", 0.25, "--estimator", "data_dependent", "--n0", 10,
            "--n", 100, "--max-inputs", 2, *CPU]
    result = run(*base, "--output", tmp_path / "train.jsonl")
    assert result.exit_code == 0 and "kNN reference: the train split of digits (1437 inputs)" in result.stderr
    assert read_jsonl(tmp_path / "train.jsonl")[0]["method"] == "data_dependent"
    from art_some.data import digits_arrays

    np.save(tmp_path / "ref.npy", digits_arrays("train")[0][:300])
    result = run(*base, "--option", f"reference={tmp_path / 'ref.npy'}", "--output", tmp_path / "file.jsonl")
    assert result.exit_code == 0, result.output

    def reference_hash(name):
        return read_header(tmp_path / name)["estimator_params"]["sigma_rule"]["reference"]["sha256"]

    assert reference_hash("train.jsonl") != reference_hash("file.jsonl")
    result = run(*base, "--option", "reference=test", "--output", tmp_path / "test.jsonl")
    assert result.exit_code == 0 and "the test split of digits (360 inputs)" in result.stderr
    one_line_error(run(*base, "--option", "reference=nope.txt", "--output", tmp_path / "bad.jsonl"),
                   "--option reference", "train, test or a .npy file")
    assert not (tmp_path / "bad.jsonl").exists()


# ----------------------------------------------------------------------------------------------------------------
# Short training runs
# ----------------------------------------------------------------------------------------------------------------
def test_the_default_schedule_keeps_short_runs_constant_and_long_ones_in_thirds():
    from art_some.runs.train import TrainConfig, lr_step

    def step(epochs, given=None):
        return lr_step(TrainConfig(method="gaussian", model="digits_cnn", epochs=epochs, lr_step=given))

    assert step(2) > 2 and step(4) > 4 and step(8) > 8  # never drops within the run
    assert (step(9), step(30), step(150)) == (3, 10, 50)
    assert step(2, given=1) == 1


def test_two_epochs_on_digits_learn_and_print_the_rate_each_epoch_used(tmp_path):
    args = ["train", "--method", "gaussian", "--model", "digits_cnn", "--epochs", 2, *CPU]
    # The old defaults (batch 256, the rate dropped every epoch): 12 steps, mostly at lr 0.01 and 0.001, leave the
    # loss at chance level, ln 10 = 2.30; the run now says so.
    old = run(*args, "--batch-size", 256, "--lr-step", 1, "--output-dir", tmp_path / "old")
    assert old.exit_code == 0, old.output
    assert [json.loads(line)["loss"] > 2.25 for line in (tmp_path / "old" / "history.jsonl").open()] == [True] * 2
    epochs = [line for line in old.output.splitlines() if line.startswith("epoch ")]
    assert epochs[0].endswith("lr 0.1") and epochs[1].endswith("lr 0.01")  # what each used
    assert "near chance level (ln 10 = 2.30)" in old.output
    new = run(*args, "--output-dir", tmp_path / "new")
    assert new.exit_code == 0, new.output
    losses = [json.loads(line)["loss"] for line in (tmp_path / "new" / "history.jsonl").open()]
    assert losses[-1] < 2.0 and "chance level" not in new.output, new.output
    assert "Learning rate 0.1 for all 2 epochs" in new.output
    assert "epoch 1/2" in new.output and new.output.count("lr 0.1\n") == 2


# ----------------------------------------------------------------------------------------------------------------
# Errors that name the right thing
# ----------------------------------------------------------------------------------------------------------------
def test_a_registered_model_without_sigma_says_it_is_random_and_needs_sigma(tmp_path):
    result = run("certify", "--model", "digits_cnn", "--n", 10, "--output", tmp_path / "o.jsonl")
    one_line_error(result, "registered model name", "randomly initialised", "--sigma", "checkpoint file")
    assert "records" not in result.output and not (tmp_path / "o.jsonl").exists()


def test_n_below_n0_warns_naming_both_and_the_radius_cap(tmp_path):
    result = run("certify", "--model", "digits_cnn", "--sigma", 0.25, "--n0", 100, "--n", 50, "--max-inputs", 1,
                 *CPU, "--output", tmp_path / "o.jsonl")
    assert result.exit_code == 0, result.output
    assert "--n 50 is below --n0 100" in result.stderr and "sigma * Phi^-1(alpha^(1/n)) = 0.283" in result.stderr
    fine = run("certify", "--model", "digits_cnn", "--sigma", 0.25, "--n0", 10, "--n", 50, "--max-inputs", 1,
               *CPU, "--output", tmp_path / "p.jsonl")
    assert fine.exit_code == 0 and "below --n0" not in fine.output


def test_a_misspelt_budget_fails_before_any_file(tmp_path):
    result = run("evaluate", "--model", "digits_cnn", "--sigma", 0.25, "--budget", "pgd.maxiter=5", *CPU,
                 "--output-dir", tmp_path / "audit")
    one_line_error(result, "pgd.maxiter", "max_iter")
    assert not (tmp_path / "audit").exists()


def _record(idx, label, predict, radius):
    return {"idx": idx, "label": label, "predict": predict, "radius": radius, "correct": int(label == predict),
            "clean_class": predict, "clean_correct": label == predict, "violations": [],
            "attacks": {"pgd": {"flipped": False, "distance": None}}}


def test_the_audit_counts_certified_and_certified_correct_inputs():
    from art_some.evaluation.audit import AuditResult, markdown_table

    records = [_record(0, 1, 1, 0.5), _record(1, 2, 3, 0.4), _record(2, 0, 0, 0.2), _record(3, 0, -1, 0.0)]
    result = AuditResult(records, ["pgd"], np.array([0.0, 0.3]))
    summary = result.summary()
    assert summary["certified_inputs"] == 3 and summary["certified_correct_inputs"] == 2
    assert summary["curves"]["certified"] == [50.0, 25.0]
    table = markdown_table(result)
    assert "certified: 3 (right or wrong), certified correct: 2" in table
    assert "| certified correct | 50.0 | 25.0 |" in table


# ----------------------------------------------------------------------------------------------------------------
# Progress and resume
# ----------------------------------------------------------------------------------------------------------------
def test_the_audit_bar_counts_inputs_and_a_resumed_audit_says_from_where(tmp_path, capsys):
    from art_some.data import digits
    from art_some.estimators.factory import create_estimator
    from art_some.evaluation import audit
    from art_some.models import DigitsCNN

    data, info = digits()
    x = np.stack([data[i][0].numpy() for i in range(5)])
    y = np.array([int(data[i][1]) for i in range(5)])
    torch.manual_seed(0)
    clf = create_estimator("smoothed", DigitsCNN(), info, sigma=0.25, n0=10, batch_size=500)
    kwargs = dict(attacks=["deepfool"], n=50, verify_n=50, budgets={"deepfool": {"max_iter": 1}}, batch_size=2,
                  output_dir=tmp_path)
    audit(clf, x[:3], y[:3], **kwargs)
    err = capsys.readouterr().err
    assert "3/3" in err and "input" in err and "/2 " not in err  # three inputs, in two chunks
    audit(clf, x, y, **kwargs)
    err = capsys.readouterr().err
    assert "Resuming audit.jsonl: 3 of 5 inputs already audited" in err and "5/5" in err


def test_a_resumed_certify_says_how_many_inputs_are_done(tmp_path):
    args = ["certify", "--model", "digits_cnn", "--sigma", 0.25, "--n0", 10, "--n", 50, *CPU, "--output",
            tmp_path / "r.jsonl"]
    first = run(*args, "--max-inputs", 2)
    assert first.exit_code == 0 and "Resuming" not in first.output
    again = run(*args, "--max-inputs", 4)
    assert again.exit_code == 0 and "Resuming r.jsonl: 2 of 4 inputs already certified" in again.stderr
    assert len(read_jsonl(tmp_path / "r.jsonl")) == 4
