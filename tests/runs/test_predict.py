"""
``art-some predict`` (Cohen et al.'s predict.py): PREDICT over a data set into resumable JSONL records and Cohen's
predict log (``idx label predict correct time``, -1 for abstain), both read by ``art-some report``.
"""
import re

import numpy as np
import pytest
from click.testing import CliRunner

from art_some.cli import cli
from art_some.data import digits
from art_some.models import load_checkpoint, save_checkpoint
from art_some.plugins import add_commands
from art_some.runs.estimator import build_estimator
from art_some.runs.records import PREDICT_TSV_COLUMNS, read_header, read_jsonl, read_records

TIME = re.compile(r"^\d+:\d\d:\d\d(\.\d{6})?$")  # str(datetime.timedelta(...)), as Cohen's predict.py writes it
PREDICT = ["predict", "--n", 100, "--alpha", 0.001, "--skip", 7, "--max-inputs", 30, "--device", "cpu",
           "--batch-size", 450]


def run(*args):
    add_commands(cli)  # predict is a built-in added through register_commands, as art-some's main() does
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, trained_digits_classifier):
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_checkpoint(path, trained_digits_classifier.model, "digits_cnn", {"num_classes": 10}, sigma=0.25,
                    dataset="digits", num_classes=10, input_shape=[1, 8, 8])
    return path


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, checkpoint):
    out = tmp_path_factory.mktemp("predict") / "p.jsonl"
    result = run(*PREDICT, "--model", checkpoint, "--output", out)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_the_predict_log_is_cohens_format(predicted):
    out, _ = predicted
    lines = out.with_suffix(".tsv").read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tcorrect\ttime"
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == list(range(0, 30 * 7, 7))
    for idx, label, predict, correct, time in rows:
        assert all(re.fullmatch(r"-?\d+", v) for v in (idx, label, predict, correct))
        assert int(predict) >= -1 and int(correct) == int(int(predict) == int(label))
        assert TIME.match(time), time
    answers = [int(r[2]) for r in rows]
    assert -1 in answers and any(a >= 0 for a in answers)  # abstentions written as -1, next to answers
    assert {r[3] for r in rows} == {"0", "1"}


def test_the_records_are_the_engines_predict_with_n_draws_and_alpha(predicted, checkpoint):
    out, _ = predicted
    header, records = read_header(out), read_jsonl(out)
    assert header["kind"] == "predict" and header["n"] == 100 and header["alpha"] == 0.001
    model, meta = load_checkpoint(checkpoint)
    data, info = digits(split="test")
    clf = build_estimator("smoothed", model, info, sigma=0.25, n0=100, alpha=0.001, batch_size=450, seed=0,
                          device="cpu")
    indices = [r["idx"] for r in records]
    x = np.stack([np.asarray(data[i][0], dtype=np.float32) for i in indices])
    classes, counts, _ = clf.predict_decisions(x, indices=indices)  # one call: records do not depend on batching
    assert [r["predict"] for r in records] == classes.tolist()
    for record, row in zip(records, counts):
        assert record["counts"] == {str(c): int(row[c]) for c in sorted(np.flatnonzero(row), key=lambda c: -row[c])}
        assert sum(record["counts"].values()) == 100 and record["n"] == 100 and "radius" not in record


def test_report_reads_the_records_and_the_log_alike(predicted):
    out, printed = predicted
    records = read_jsonl(out)
    accuracy = 100 * np.mean([r["correct"] for r in records])
    abstained = 100 * np.mean([r["predict"] == -1 for r in records])
    line = f"accuracy {accuracy:.1f}% (abstentions count as errors)   abstained {abstained:.1f}%"
    assert line in printed
    assert read_records(out.with_suffix(".tsv"))[0].keys() == {"idx", "label", "predict", "correct", "seconds"}
    result = run("report", out, out.with_suffix(".tsv"))
    assert result.exit_code == 0, result.output
    assert result.output.count(line) == 2 and "provenance (predict)" in result.output
    table = result.output.split("== side by side\n")[1].splitlines()
    assert table[0].split()[:3] == ["records", "(PREDICT)", "accuracy"]
    assert table[1].split()[1:3] == table[2].split()[1:3] == [f"{accuracy:.1f}", f"{abstained:.1f}"]


def test_a_handwritten_cohen_predict_log_is_reported(tmp_path):
    log = tmp_path / "predict_log.tsv"
    log.write_text("\t".join(PREDICT_TSV_COLUMNS) + "\n0\t3\t3\t1\t0:00:01.250000\n1\t8\t-1\t0\t0:00:02\n"
                   "2\t5\t4\t0\t0:00:01.5\n3\t1\t1\t1\t0:00:01\n")
    result = run("report", log, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1] == "predict_log.tsv,50.0,25.0,66.7,4"
    assert read_records(log)[0]["seconds"] == 1.25


def test_predict_resumes_exactly_and_refuses_other_settings(tmp_path, checkpoint):
    out = tmp_path / "p.jsonl"
    first = run(*PREDICT[:-4], "--max-inputs", 3, "--device", "cpu", "--model", checkpoint, "--output", out)
    assert first.exit_code == 0, first.output
    again = run(*PREDICT, "--model", checkpoint, "--output", out)
    assert again.exit_code == 0 and "Resuming p.jsonl: 3 of 30 inputs already predicted" in again.output
    whole = tmp_path / "whole.jsonl"
    assert run(*PREDICT, "--model", checkpoint, "--output", whole).exit_code == 0

    def strip(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert strip(read_jsonl(out)) == strip(read_jsonl(whole))
    other = run(*PREDICT[:2], 200, *PREDICT[3:], "--model", checkpoint, "--output", out)
    assert other.exit_code == 2 and "n 100" in other.output and "n 200" in other.output


@pytest.mark.parametrize("args, words", [
    (["--n0", "10"], "No such option '--n0'"),
    (["--output", "p.tsv"], "give p.jsonl"),
    (["--n", "0"], "--n"),
])
def test_predict_refuses_bad_options_before_any_file(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    base = ["predict", "--model", "digits_cnn", "--sigma", "0.25", "--device", "cpu", "--output", "p.jsonl"]
    result = run(*base, *args)
    assert result.exit_code == 2 and words in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_each_input_gets_its_share_of_a_packed_predict_calls_time(tmp_path, monkeypatch):
    import itertools
    from types import SimpleNamespace

    import torch

    from art_some.evaluation.runner import predict_dataset
    from art_some.models import DigitsCNN
    from tests.conftest import make_classifier

    torch.manual_seed(0)
    clf = make_classifier(DigitsCNN(), (1, 8, 8), 10, sample_size=50, noise_batch_size=500, scale=0.5)
    ticks = itertools.count()  # each engine call reads the clock twice: 1 s per call of 10 inputs
    monkeypatch.setattr("art_some.evaluation.runner.time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    records = predict_dataset(clf, digits(split="test")[0], range(20), tmp_path / "p.jsonl", progress=False)
    assert [r["seconds"] for r in records] == [0.1] * 20
    assert (tmp_path / "p.tsv").read_text().splitlines()[1].endswith("\t0:00:00.100000")
