import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from art_some import __version__
from art_some.cli import cli
from art_some.runs.records import read_jsonl
from tests.conftest import PUBLISHED_LOGS

COMMANDS = ["certify", "demo", "report", "plugins", "train"]


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_version_and_help():
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.output
    assert run("--help").exit_code == 0
    for command in COMMANDS:
        result = run(command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output


def test_certify_writes_records_and_prints_the_table(tmp_path):
    out = tmp_path / "r.jsonl"
    result = run("certify", "--model", "digits_cnn", "--sigma", "0.25", "--n0", "10", "--n", "100", "--max-inputs",
                 "5", "--output", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    records = read_jsonl(out)
    assert [r["idx"] for r in records] == [0, 1, 2, 3, 4]
    assert records[0]["n"] == 100 and records[0]["sigma"] == 0.25 and records[0]["method"] == "smoothed"
    assert (tmp_path / "r.tsv").read_text().startswith("idx\tlabel\tpredict\tradius\tcorrect\ttime")
    assert "ACR" in result.output and "cert. acc." in result.output


def test_certify_with_smooth_reduce_options(tmp_path):
    out = tmp_path / "r.jsonl"
    result = run("certify", "--model", "digits_cnn", "--sigma", "0.25", "--n0", "10", "--n", "100", "--max-inputs",
                 "2", "--output", str(out), "--device", "cpu", "--estimator", "smooth_reduce",
                 "--option", 'patches={"layout": "grid", "size": 8, "stride": 1}', "--option", "resize=10",
                 "--option", "noise_mode=independent", "--option", "aggregation=max")
    assert result.exit_code == 0, result.output
    record = read_jsonl(out)[0]
    assert record["method"] == "smooth_reduce" and record["noise_mode"] == "independent" and record["m_max"] == 9
    assert record["aggregation"] == "max" and record["sound"] is True


def test_certify_with_a_local_diffusers_denoiser_and_a_cascade(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from art_some.models.diffusion import tiny_unet

    torch.manual_seed(0)
    pipe = diffusers.DDPMPipeline(unet=tiny_unet(widths=(8, 16)), scheduler=diffusers.DDPMScheduler())
    pipe.save_pretrained(tmp_path / "unet")
    out = tmp_path / "r.jsonl"
    denoiser = json.dumps({"name": "diffusion", "path": str(tmp_path / "unet")})
    result = run("certify", "--model", "digits_cnn", "--sigma", "0.25", "--n0", "10", "--n", "100", "--max-inputs",
                 "2", "--output", str(out), "--device", "cpu", "--estimator", "denoised_multiscale",
                 "--option", f"denoiser={denoiser}", "--option", "sigmas=[0.25, 0.5]")
    assert result.exit_code == 0, result.output
    record = read_jsonl(out)[0]
    assert record["method"] == "denoised_multiscale" and record["sigmas"] == [0.5, 0.25]
    assert record["levels_visited"] in (1, 2) and record["denoiser"] == "DiffusionDenoiser"
    seq = tmp_path / "s.jsonl"  # the cascade certified sequentially, level by level
    result = run("certify", "--model", "digits_cnn", "--sigma", "0.25", "--n0", "10", "--n", "200", "--max-inputs",
                 "2", "--output", str(seq), "--device", "cpu", "--estimator", "denoised_multiscale",
                 "--option", f"denoiser={denoiser}", "--option", "sigmas=[0.25, 0.5]", "--radii", "0.1,0.2")
    assert result.exit_code == 0, result.output
    record = read_jsonl(seq)[0]
    assert record["levels_visited"] in (1, 2) and record["sequence_bound"] == "mixture"
    assert 40 <= record["draws"] <= 400 and set(record["certified_at"]) == {"0.1", "0.2"}
    records = read_jsonl(seq)
    passes = np.mean([10 * r["levels_visited"] + r["draws"] for r in records])  # n0 once per level visited
    assert f"forward passes per input {passes:,.0f}" in result.output, result.output
    result = run("certify", "--model", "digits_cnn", "--sigma", "0.25", "--n", "10", "--estimator",
                 "denoised_multiscale", "--output", str(tmp_path / "o.jsonl"))
    assert result.exit_code == 2 and "needs --option denoiser=" in result.output, result.output


@pytest.mark.parametrize(
    "options,word",
    [
        ([], "patches is required"),
        (["--option", "patch=3"], "--option patch is not an argument of SmoothReduceClassifier"),
        (["--option", 'patches={"layout": "grid", "size": 9, "stride": 1}'], "larger than the input"),
    ],
)
def test_smooth_reduce_bad_options_are_one_line_errors(tmp_path, options, word):
    result = run("certify", "--model", "digits_cnn", "--sigma", "0.25", "--n", "10", "--estimator", "smooth_reduce",
                 "--output", str(tmp_path / "o.jsonl"), *options)
    assert result.exit_code == 2 and word in result.output, result.output
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(
    "args,word",
    [
        (["--sigma", "0"], "--sigma"),
        (["--sigma", "-1"], "--sigma"),
        (["--alpha", "1.5"], "--alpha"),
        (["--alpha", "0"], "--alpha"),
        (["--n", "0"], "--n"),
        (["--n0", "0"], "--n0"),
        (["--model", "no_such_model"], "no_such_model"),
        (["--dataset", "no_such_data"], "no_such_data"),
        (["--model", "missing.safetensors"], "not found"),
        (["--dataset", "cifar10"], "data root"),
    ],
)
def test_bad_input_is_a_one_line_error_with_exit_code_2(tmp_path, args, word):
    base = {"--model": "digits_cnn", "--sigma": "0.25", "--n": "10", "--output": str(tmp_path / "o.jsonl")}
    for key, value in zip(args[::2], args[1::2]):
        base[key] = value
    flat = [item for pair in base.items() for item in pair]
    result = run("certify", *flat)
    assert result.exit_code == 2, result.output
    assert word in result.output
    assert not (tmp_path / "o.jsonl").exists()


def test_corrupt_checkpoint_is_rejected(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage that is not a checkpoint")
    result = run("certify", "--model", str(bad), "--sigma", "0.25", "--output", str(tmp_path / "o.jsonl"))
    assert result.exit_code == 2 and "corrupt" in result.output
    assert not (tmp_path / "o.jsonl").exists()


def test_report_on_a_published_log():
    path = os.path.join(PUBLISHED_LOGS, "some_cifar10_r110", "Gaussian_noise-0.25.tsv")
    result = run("report", path, "--radii", "0,0.25,0.5")
    assert result.exit_code == 0
    assert "83.4" in result.output and "71.6" in result.output and "ACR 0.537" in result.output


def test_report_errors():
    assert run("report", "does_not_exist.tsv").exit_code == 2
    assert run("report", __file__, "--radii", "a,b").exit_code == 2


def test_interrupted_certify_resumes_without_loss_or_duplicates(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    args = [sys.executable, "-m", "art_some.cli", "certify", "--model", "digits_cnn", "--sigma", "0.5", "--n0", "20",
            "--n", "20000", "--max-inputs", "12", "--device", "cpu", "--seed", "4"]
    out = tmp_path / "run.jsonl"
    proc = subprocess.Popen(args + ["--output", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Two records after the header line.
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    partial = read_jsonl(out)
    assert 2 <= len(partial) < 12
    subprocess.run(args + ["--output", str(out)], env=env, check=True, capture_output=True)
    resumed = read_jsonl(out)
    reference = tmp_path / "ref.jsonl"
    subprocess.run(args + ["--output", str(reference)], env=env, check=True, capture_output=True)
    expected = read_jsonl(reference)

    def strip(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in sorted(records, key=lambda r: r["idx"])]

    assert [r["idx"] for r in resumed] == sorted(r["idx"] for r in resumed)
    assert strip(resumed) == strip(expected)


def test_demo_runs_end_to_end_small(tmp_path):
    out = tmp_path / "demo"
    result = run("demo", "--output-dir", str(out), "--epochs", "2", "--n", "200", "--max-inputs", "15")
    assert result.exit_code == 0, result.output
    for name in ("model.safetensors", "records.jsonl", "records.tsv", "certified_accuracy.png"):
        assert (out / name).is_file()
    assert (out / "certified_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(read_jsonl(out / "records.jsonl")) == 15
    # A second run reuses the model and the records.
    again = run("demo", "--output-dir", str(out), "--epochs", "2", "--n", "200", "--max-inputs", "15")
    assert again.exit_code == 0 and "Reusing" in again.output
    assert len(read_jsonl(out / "records.jsonl")) == 15
    mismatch = run("demo", "--output-dir", str(out), "--sigma", "0.5", "--n", "200", "--max-inputs", "15")
    assert mismatch.exit_code == 2 and "--retrain" in mismatch.output
    json.dumps(read_jsonl(out / "records.jsonl"))
