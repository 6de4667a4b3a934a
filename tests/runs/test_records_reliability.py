"""
Record files that say what made them (header, resume checks), one writer at a time, training exports that never
lag the resume state, and one-line errors for full disks and read-only folders (issue 14, records).
"""
import errno
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

from art_some.cli import cli
from art_some.data import digits
from art_some.evaluation import audit, certify_dataset
from art_some.models import DigitsCNN
from art_some.runs.estimator import build_estimator
from art_some.runs.header import SCHEMA_VERSION, RunMismatchError, check_same_run, weights_hash
from art_some.runs.records import HEADER_KEY, FileInUseError, RecordWriter, read_header, read_jsonl, read_records

CERTIFY = ["certify", "--model", "digits_cnn", "--sigma", "0.25", "--n0", "10", "--n", "100", "--max-inputs", "3",
           "--device", "cpu"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, *words):
    """Exit code 2, no traceback, and the output ends with one ``Error:`` line holding ``words``."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.count("Error") == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and all(w in last for w in words), result.output


def files_under(path):
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.fixture(scope="module")
def test_data():
    return digits(split="test")


def estimator(info, seed=0, sigma=0.25, model=None, **options):
    if model is None:
        torch.manual_seed(0)
        model = DigitsCNN()
    return build_estimator("smoothed", model, info, sigma=sigma, n0=10, alpha=0.001, batch_size=500, seed=seed,
                           device="cpu", options=options)


# ----------------------------------------------------------------------------------------------------------------
# The header
# ----------------------------------------------------------------------------------------------------------------
def test_header_comes_first_and_readers_return_records_only(tmp_path, test_data):
    data, info = test_data
    clf = estimator(info)
    out = tmp_path / "r.jsonl"
    records = certify_dataset(clf, data, [0, 1, 2], out, n=100, progress=False,
                              run_info={"dataset": "digits", "split": "test", "source": {"model": "here"}})
    first = json.loads(out.read_text().splitlines()[0])
    assert set(first) == {HEADER_KEY}
    header = read_header(out)
    assert header["schema"] == SCHEMA_VERSION and header["kind"] == "certify"
    assert (header["sigma"], header["n"], header["n0"], header["alpha"], header["seed"]) == (0.25, 100, 10, 0.001, 0)
    assert header["model_sha256"] == weights_hash(clf.model) and len(header["model_sha256"]) == 64
    assert header["estimator"] == "art_some.estimators.smoothed.SmoothedClassifier"
    params = header["estimator_params"]
    assert params["input_shape"] == [1, 8, 8] and "noise_batch_size" not in params and "scale" not in params
    assert header["art_some"] and header["torch"] == torch.__version__ and header["device"] == "cpu"
    assert (header["dataset"], header["split"]) == ("digits", "test")
    assert read_jsonl(out) == records == read_records(out) and len(records) == 3
    assert all(len(r["input_sha256"]) == 16 for r in records)
    assert out.with_suffix(".tsv").read_text().count("\n") == 4  # the TSV has no header object


@pytest.mark.parametrize("name", ["data_dependent", "denoised_multiscale", "smooth_reduce", "smoothed", "some"])
def test_every_estimator_has_a_stable_json_header(name, trained_digits_classifier, digits):
    from art_some.plugins import registered
    from art_some.runs.header import provenance
    from tests.evaluation.test_audit import _tiny

    (x_train, _), _ = digits
    est = _tiny(name, registered("estimators")[name], trained_digits_classifier, x_train[:300])
    header = provenance(est, n=100)
    assert header == json.loads(json.dumps(header)) == provenance(est, n=100)
    assert header["model_sha256"] == weights_hash(est.model)
    if name == "data_dependent":  # the kNN rule's reference data decides the sigmas: it is in the header
        assert len(header["estimator_params"]["sigma_rule"]["reference"]["sha256"]) == 64
    if name == "denoised_multiscale":
        assert header["estimator_params"]["denoiser"]["sha256"] and header["estimator_params"]["sigmas"] == [0.5, 0.25]
    est.set_params(seed=5)
    assert check_same_run(header, provenance(est, n=100)) == {"seed": (0, 5)}


def test_weights_hash_follows_the_weights_not_the_object():
    torch.manual_seed(0)
    a = DigitsCNN()
    b = DigitsCNN()
    b.load_state_dict(a.state_dict())
    assert weights_hash(a) == weights_hash(b)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6
    assert weights_hash(a) != weights_hash(b)


def test_check_same_run_names_fields_and_ignores_the_source():
    saved = {"schema": 1, "sigma": 0.25, "n": 100, "estimator_params": {"resize": 10, "gradient_samples": None},
             "source": {"model": "a.safetensors"}}
    now = {**saved, "sigma": 0.5, "estimator_params": {"resize": 12, "gradient_samples": None},
           "source": {"model": "moved/a.safetensors"}, "split": "train"}
    assert check_same_run(saved, saved) == {}
    assert check_same_run(saved, now) == {"sigma": (0.25, 0.5), "estimator_params.resize": (10, 12),
                                          "split": (None, "train")}
    assert check_same_run(saved, {**now, "schema": 2}) == {"schema": (1, 2)}  # nothing else is comparable


@pytest.mark.parametrize("change, words", [
    ({"sigma": 0.5}, ["sigma 0.25", "sigma 0.5"]),
    ({"seed": 1}, ["seed 0", "seed 1"]),
    ({"n": 200}, ["n 100", "n 200"]),
    ({"n0": 20}, ["n0 10", "n0 20"]),
    ({"alpha": 0.01}, ["alpha 0.001", "alpha 0.01"]),
    ({"weights": True}, ["model_sha256"]),
    ({"gradient_samples": 4}, ["estimator_params.gradient_samples none", "estimator_params.gradient_samples 4"]),
    ({"run_info": {"split": "train"}}, ["split test", "split train"]),
    ({"method": "other"}, ["method smoothed", "method other"]),
])
def test_resume_refuses_another_run_naming_the_field_and_both_values(tmp_path, test_data, change, words):
    data, info = test_data
    out = tmp_path / "r.jsonl"
    certify_dataset(estimator(info), data, [0, 1], out, n=100, progress=False, run_info={"split": "test"})
    before = out.read_bytes()
    model = None
    if change.get("weights"):
        torch.manual_seed(1)
        model = DigitsCNN()
    options = {"gradient_samples": change["gradient_samples"]} if "gradient_samples" in change else {}
    clf = estimator(info, seed=change.get("seed", 0), sigma=change.get("sigma", 0.25), model=model, **options)
    kwargs = {k: change[k] for k in ("n0", "alpha") if k in change}
    with pytest.raises(RunMismatchError) as err:
        certify_dataset(clf, data, [0, 1, 2], out, n=change.get("n", 100), progress=False,
                        run_info=change.get("run_info", {"split": "test"}), method=change.get("method", "smoothed"),
                        **kwargs)
    message = str(err.value)
    assert str(out) in message and "this run has" in message and "--output" in message, message
    assert all(w in message for w in words), message
    assert "\n" not in message and out.read_bytes() == before


def test_resume_accepts_more_inputs_another_batch_size_and_a_moved_model(tmp_path, test_data):
    data, info = test_data
    out = tmp_path / "r.jsonl"
    first = certify_dataset(estimator(info), data, [0, 1], out, n=100, progress=False,
                            run_info={"split": "test", "source": {"model": "a"}})
    clf = estimator(info)
    clf.set_params(noise_batch_size=37)
    resumed = certify_dataset(clf, data, [0, 1, 2, 3], out, n=100, batch_size=50, progress=False,
                              run_info={"split": "test", "source": {"model": "b"}})
    assert [r["idx"] for r in resumed] == [0, 1, 2, 3] and resumed[:2] == first
    fresh = certify_dataset(estimator(info), data, [0, 1, 2, 3], tmp_path / "fresh.jsonl", n=100, progress=False)

    def strip(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert strip(resumed) == strip(fresh)


def test_resume_refuses_other_inputs_at_recorded_indices(tmp_path, test_data):
    data, info = test_data
    out = tmp_path / "r.jsonl"
    certify_dataset(estimator(info), data, [0, 1], out, n=100, progress=False)

    class Shifted(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            x, y = data[i]
            return np.asarray(x) * 0.5, y

    with pytest.raises(RunMismatchError, match="input 0 \\(sha256\\)"):
        certify_dataset(estimator(info), Shifted(), [0, 1, 2], out, n=100, progress=False)


def test_header_less_files_still_read_but_are_not_resumed_with_a_header(tmp_path, test_data):
    old = tmp_path / "old.jsonl"
    rows = [{"idx": i, "label": 1, "predict": 1, "radius": 0.5, "correct": 1, "seconds": 1.0} for i in range(2)]
    old.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_jsonl(old) == rows == read_records(old) and read_header(old) is None
    with RecordWriter(old) as writer:  # the low-level writer without a header still resumes it
        assert writer.done == {0, 1} and writer.header is None
    data, info = test_data
    with pytest.raises(RunMismatchError, match="has no art-some header"):
        certify_dataset(estimator(info), data, [0], old, n=100, progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({HEADER_KEY: {"schema": 1}}) + "\n")
    with pytest.raises(ValueError, match="line 2 is a header"):
        read_jsonl(bad)


# ----------------------------------------------------------------------------------------------------------------
# One writer at a time
# ----------------------------------------------------------------------------------------------------------------
def test_a_second_writer_is_refused_until_the_first_closes(tmp_path):
    path = tmp_path / "r.jsonl"
    first = RecordWriter(path, header={"schema": SCHEMA_VERSION})
    with pytest.raises(FileInUseError, match="being written by another"):
        RecordWriter(path, header={"schema": SCHEMA_VERSION})
    first.append({"idx": 0, "radius": 0.1, "correct": 1})
    first.close()
    with RecordWriter(path, header={"schema": SCHEMA_VERSION}) as second:
        assert second.done == {0}
    dropped = RecordWriter(path)
    del dropped  # a writer that is garbage-collected without close() releases its lock
    RecordWriter(path).close()
    assert read_jsonl(path) == [{"idx": 0, "radius": 0.1, "correct": 1}]


def test_two_certify_processes_on_one_output(tmp_path):
    out = tmp_path / "run.jsonl"
    args = [sys.executable, "-m", "art_some.cli", "certify", "--model", "digits_cnn", "--sigma", "0.25", "--n0", "20",
            "--n", "50000", "--max-inputs", "200", "--device", "cpu", "--output", str(out)]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 2):
            time.sleep(0.05)
        second = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert "being written by another art-some run" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.kill()  # SIGKILL: the lock must go with the process
        first.wait(timeout=60)
    records = read_jsonl(out)
    assert len(records) >= 1 and len({r["idx"] for r in records}) == len(records)
    with RecordWriter(out) as writer:
        assert writer.done == {r["idx"] for r in records}


# ----------------------------------------------------------------------------------------------------------------
# The command line: resume checks, report, demo, evaluate
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--sigma", "0.5"], ["sigma 0.25", "sigma 0.5"]),
    (["--n", "200"], ["n 100", "n 200"]),
    (["--n0", "20"], ["n0 10", "n0 20"]),
    (["--alpha", "0.01"], ["alpha 0.001", "alpha 0.01"]),
    (["--seed", "3"], ["seed 0", "seed 3"]),
    (["--split", "train"], ["split test", "split train"]),
    (["--model", "some_digits_cnn"], ["model_sha256", "method smoothed"]),
    (["--estimator", "smooth_reduce", "--option", 'patches={"layout": "grid", "size": 8, "stride": 1}'],
     ["method smoothed", "method smooth_reduce"]),
    (["--option", "gradient_samples=7"], ["estimator_params.gradient_samples none"]),
])
def test_certify_refuses_to_resume_another_run(tmp_path, args, words):
    out = tmp_path / "r.jsonl"
    assert run(*CERTIFY, "--output", out).exit_code == 0
    before = out.read_bytes()
    argv = list(CERTIFY)
    for flag, value in zip(args[::2], args[1::2]):
        if flag in argv and flag != "--option":
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    result = run(*argv, "--output", out)
    one_line_error(result, "was written with", "this run has", "use another --output", *words)
    assert out.read_bytes() == before


def test_certify_resumes_with_another_batch_size_and_more_inputs_and_report_shows_provenance(tmp_path):
    out = tmp_path / "r.jsonl"
    assert run(*CERTIFY, "--output", out).exit_code == 0
    argv = [a if a != "3" else "5" for a in CERTIFY]
    result = run(*argv, "--batch-size", "64", "--output", out)
    assert result.exit_code == 0, result.output
    assert [r["idx"] for r in read_jsonl(out)] == [0, 1, 2, 3, 4]
    report = run("report", out)
    assert report.exit_code == 0, report.output
    header = read_header(out)
    for text in (f"art-some {header['art_some']}", f"torch {torch.__version__}", "sigma 0.25", "n0 10", "n 100",
                 "seed 0", "digits test", header["model_sha256"][:12], "ACR"):
        assert text in report.output, (text, report.output)


def test_demo_refuses_to_extend_records_of_other_settings(tmp_path):
    out = tmp_path / "demo"
    demo = ["demo", "--output-dir", out, "--epochs", 1, "--max-inputs", 3]
    assert run(*demo, "--n", 100).exit_code == 0
    before = (out / "records.jsonl").read_bytes()
    for args, words in ((["--n", 200], ["n 100", "n 200"]), (["--n", 100, "--alpha", 0.01], ["alpha 0.001"]),
                        (["--n", 100, "--seed", 2], ["seed 0", "seed 2"])):
        result = run(*demo, *args)
        one_line_error(result, "records.jsonl was written with", "--retrain", *words)
    assert (out / "records.jsonl").read_bytes() == before
    assert read_header(out / "records.jsonl")["source"]["model"] == str(out / "model.safetensors")


EVALUATE = ["evaluate", "--model", "digits_cnn", "--sigma", "0.25", "--n0", "10", "--n", "100", "--verify-n", "100",
            "--max-inputs", "2", "--attack", "deepfool", "--budget", "deepfool.max_iter=2", "--device", "cpu"]


def test_evaluate_refuses_another_sigma_split_or_model_and_checks_budgets_first(tmp_path):
    out = tmp_path / "audit"
    assert run(*EVALUATE, "--output-dir", out).exit_code == 0
    # The audit keeps its header beside its records (audit.jsonl holds records only); report finds it there.
    assert read_header(out / "audit.jsonl") == json.loads((out / "audit_config.json").read_text())
    assert json.loads((out / "audit.jsonl").read_text().splitlines()[0])["idx"] == 0
    assert "deepfool" in run("report", out / "audit.jsonl").output
    before = (out / "audit.jsonl").read_bytes()
    for args, words in ((["--sigma", "0.5"], ["sigma 0.25", "sigma 0.5"]),
                        (["--split", "train"], ["split test", "split train"]),
                        (["--seed", "1"], ["seed 0", "seed 1"]),
                        (["--model", "some_digits_cnn"], ["model_sha256"])):
        argv = list(EVALUATE)
        if args[0] in argv:
            argv[argv.index(args[0]) + 1] = args[1]
        else:
            argv += args
        result = run(*argv, "--output-dir", out)
        one_line_error(result, "other settings", "--output-dir", *words)
        assert "output_dir " not in result.output
    assert (out / "audit.jsonl").read_bytes() == before
    fresh = tmp_path / "typo"
    result = run(*EVALUATE, "--attack", "pgd", "--budget", "pgd.maxiter=5", "--output-dir", fresh)
    one_line_error(result, "pgd.maxiter", "max_iter")
    assert files_under(fresh) == []
    result = run(*EVALUATE, "--attack", "pgd", "--budget", "pgd.max_iter=-3", "--output-dir", fresh)
    one_line_error(result, "pgd attack rejected its budget")
    assert files_under(fresh) == []


def test_audit_api_refuses_other_inputs_at_recorded_indices(tmp_path, test_data):
    data, info = test_data
    x = np.stack([np.asarray(data[i][0], dtype=np.float32) for i in range(3)])
    y = np.array([int(data[i][1]) for i in range(3)])
    kwargs = dict(attacks=["deepfool"], n=100, verify_n=100, budgets={"deepfool": {"max_iter": 2}}, progress=False,
                  output_dir=tmp_path)
    audit(estimator(info), x[:2], y[:2], **kwargs)
    with pytest.raises(ValueError, match="other settings: its input 1 has sha256"):
        audit(estimator(info), x[[0, 2]], y[[0, 2]], indices=[0, 1], **kwargs)
    with pytest.raises(ValueError, match="being written by another"):
        with RecordWriter(tmp_path / "audit.jsonl"):
            audit(estimator(info), x, y, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Operating-system errors: one line, exit code 2, nothing left behind
# ----------------------------------------------------------------------------------------------------------------
def _fail_under(monkeypatch, root, code, on="write"):
    """Make writes (``os.write``) or opens for writing (``os.open``) of files under ``root`` fail with ``code``."""
    real_write, real_open = os.write, os.open

    def under(path):
        return str(path).startswith(str(root))

    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if under(target):
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    def open_(path, flags, *args, **kwargs):
        if under(os.path.abspath(path)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "write", write) if on == "write" else monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize("code, on, words", [
    (errno.ENOSPC, "write", ["No space left on device", "r.jsonl", "free some space"]),
    (errno.EROFS, "open", ["Read-only file system", "r.jsonl", "another location"]),
])
def test_certify_disk_full_or_read_only_is_a_one_line_error(tmp_path, monkeypatch, code, on, words):
    folder = tmp_path / "out"
    folder.mkdir()
    _fail_under(monkeypatch, folder, code, on)
    result = run(*CERTIFY, "--output", folder / "r.jsonl")
    one_line_error(result, *words)
    assert files_under(folder) == []


def test_evaluate_disk_full_is_a_one_line_error_leaving_no_files(tmp_path, monkeypatch):
    out = tmp_path / "audit"
    _fail_under(monkeypatch, tmp_path, errno.ENOSPC)
    result = run(*EVALUATE, "--output-dir", out)
    one_line_error(result, "No space left on device", "audit_config.json")
    assert files_under(out) == []


def test_demo_disk_full_is_a_one_line_error(tmp_path, monkeypatch):
    _fail_under(monkeypatch, tmp_path, errno.ENOSPC)
    result = run("demo", "--output-dir", tmp_path / "demo", "--epochs", 1, "--n", 100, "--max-inputs", 2)
    one_line_error(result, "No space left on device", "records.jsonl")
    assert not (tmp_path / "demo" / "records.jsonl").exists()


def test_train_disk_full_is_a_one_line_error_leaving_no_files(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    result = run(*TRAIN, "--epochs", 1, "--output-dir", tmp_path / "t")
    one_line_error(result, "No space left on device", "train_state.pt")
    assert files_under(tmp_path / "t") == []


@pytest.mark.parametrize("command", ["certify", "demo", "evaluate", "train"])
def test_an_output_under_a_file_is_a_one_line_error(tmp_path, command):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    where = blocker / "sub"
    argv = {"certify": [*CERTIFY, "--output", where / "r.jsonl"],
            "demo": ["demo", "--output-dir", where, "--epochs", 1, "--n", 100, "--max-inputs", 2],
            "evaluate": [*EVALUATE, "--output-dir", where],
            "train": [*TRAIN, "--epochs", 1, "--output-dir", where]}[command]
    one_line_error(run(*argv), str(blocker))
    assert files_under(tmp_path) == [blocker]


# ----------------------------------------------------------------------------------------------------------------
# Training: exports never lag the resume state
# ----------------------------------------------------------------------------------------------------------------
TRAIN = ["train", "--method", "gaussian", "--model", "digits_cnn", "--optimizer", "adam", "--lr", "1e-3",
         "--batch-size", "256", "--device", "cpu"]


def _exported_epoch(path):
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["art_some"])["epoch"]


def test_a_crash_between_the_state_and_the_export_is_repaired_on_rerun(tmp_path, monkeypatch):
    import art_some.models

    out = tmp_path / "run"
    real = art_some.models.save_checkpoint

    def crash_in_the_last_epoch(path, model, name, kwargs=None, **meta):
        if meta["epoch"] == 2:
            raise RuntimeError("simulated crash after the state was written")
        return real(path, model, name, kwargs, **meta)

    monkeypatch.setattr(art_some.models, "save_checkpoint", crash_in_the_last_epoch)
    crashed = run(*TRAIN, "--epochs", 2, "--output-dir", out)
    assert crashed.exit_code != 0 and isinstance(crashed.exception, RuntimeError)
    assert _exported_epoch(out / "model.safetensors") == 1  # stale: the state already holds epoch 2
    assert not (out / "model.safetensors.tmp").exists()
    monkeypatch.setattr(art_some.models, "save_checkpoint", real)

    result = run(*TRAIN, "--epochs", 2, "--output-dir", out)
    assert result.exit_code == 0 and "Re-exporting model.safetensors" in result.output, result.output
    assert "epoch 2/2" not in result.output  # nothing was trained again
    state = torch.load(out / "train_state.pt", weights_only=True)
    exported = load_file(out / "model.safetensors")
    assert exported.keys() == state["model"].keys()
    assert all(torch.equal(exported[k], state["model"][k]) for k in exported)
    assert _exported_epoch(out / "model.safetensors") == 2
    assert [json.loads(line)["epoch"] for line in (out / "history.jsonl").read_text().splitlines()] == [1, 2]
    straight = tmp_path / "straight"
    assert run(*TRAIN, "--epochs", 2, "--output-dir", straight).exit_code == 0
    reference = load_file(straight / "model.safetensors")
    assert all(torch.equal(exported[k], reference[k]) for k in exported)
    again = run(*TRAIN, "--epochs", 2, "--output-dir", out)  # up to date: nothing to re-export
    assert again.exit_code == 0 and "Re-exporting" not in again.output


# ----------------------------------------------------------------------------------------------------------------
# Non-finite values end to end (the trainers and load_checkpoint refuse them; the command line says so)
# ----------------------------------------------------------------------------------------------------------------
def test_train_with_a_diverging_learning_rate_stops_at_the_first_non_finite_loss(tmp_path):
    out = tmp_path / "t"
    result = run("train", "--method", "gaussian", "--model", "digits_cnn", "--optimizer", "sgd", "--lr", "1e6",
                 "--epochs", 2, "--device", "cpu", "--output-dir", out)
    one_line_error(result, "non-finite", "loss")
    assert files_under(out) == []  # that epoch's checkpoint was not saved


def test_certify_refuses_a_checkpoint_with_nan_weights(tmp_path):
    from art_some.models import save_checkpoint

    model = DigitsCNN(num_classes=10)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    checkpoint = tmp_path / "nan.safetensors"
    save_checkpoint(checkpoint, model, "digits_cnn", {"num_classes": 10}, sigma=0.25, dataset="digits",
                    num_classes=10, input_shape=[1, 8, 8])
    result = run("certify", "--model", checkpoint, "--n", 100, "--device", "cpu", "--output", tmp_path / "r.jsonl")
    one_line_error(result, "non-finite", str(checkpoint))
    assert files_under(tmp_path) == [checkpoint]
