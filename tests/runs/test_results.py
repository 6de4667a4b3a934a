import json
import os

import numpy as np
import pytest

from art_some.runs.metrics import abstention_rate, average_certified_radius, certified_accuracy, summary_table
from art_some.runs.records import RecordWriter, read_jsonl, read_records, read_tsv, write_tsv
from tests.conftest import PUBLISHED_LOGS as LOGS

# (file, ACR) from the published_logs README / the SOME spec's table.
PUBLISHED_ACR = [
    ("some_cifar10_r110/Gaussian_noise-0.25.tsv", 0.537),
    ("some_cifar10_r110/Gaussian_noise-0.50.tsv", 0.668),
    ("some_cifar10_r110/Gaussian_noise-1.00.tsv", 0.656),
    ("some_cifar10_r110/Consistency_noise-0.25.tsv", 0.580),
    ("some_cifar10_r110/Consistency_noise-0.50.tsv", 0.745),
    ("some_cifar10_r110/Consistency_noise-1.00.tsv", 0.830),
    ("some_cifar10_r110/SmoothMix_noise-0.25.tsv", 0.589),
    ("some_cifar10_r110/SmoothMix_noise-0.50.tsv", 0.759),
    ("some_cifar10_r110/SmoothMix_noise-1.00.tsv", 0.870),
    ("smoothmix_cifar10/smoothmix_noise-0.25.tsv", 0.553),
    ("smoothmix_cifar10/smoothmix_noise-0.5.tsv", 0.712),
    ("smoothmix_cifar10/smoothmix_onestep_noise-0.25.tsv", 0.548),
    ("smoothmix_cifar10/smoothmix_onestep_noise-0.5.tsv", 0.736),
    ("consistency_cifar10_r110/consistency_lbd10_noise-0.25.tsv", 0.544),
    ("consistency_cifar10_r110/consistency_lbd10_noise-0.50.tsv", 0.720),
    ("consistency_cifar10_r110/consistency_lbd10_noise-1.00.tsv", 0.756),
]
GRID = [0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5]


@pytest.mark.parametrize("name,acr", PUBLISHED_ACR)
def test_published_acr_is_reproduced(name, acr):
    assert round(average_certified_radius(read_tsv(os.path.join(LOGS, name))), 3) == acr


@pytest.mark.parametrize(
    "name,row,abstained",
    [
        ("Gaussian_noise-0.25.tsv", [83.4, 71.6, 54.4, 40.4, 0], 20),
        ("Gaussian_noise-1.00.tsv", [50.6, 45.2, 37.8, 31.6, 27.8, 22.4, 18.4, 14.8, 12.0, 10.6, 7.8], 119),
        ("Consistency_noise-0.50.tsv", [65.2, 59.6, 52.4, 45.0, 37.6, 30.4, 23.8, 17.6, 0], 41),
        ("SmoothMix_noise-1.00.tsv", [38.4, 36.2, 33.8, 32.0, 30.2, 28.4, 26.2, 24.2, 22.0, 19.0, 17.8], 34),
    ],
)
def test_published_certified_accuracy_table_is_reproduced(name, row, abstained):
    records = read_records(os.path.join(LOGS, "some_cifar10_r110", name))
    acc = np.round(100 * certified_accuracy(records, GRID[: len(row)]), 1)
    np.testing.assert_array_equal(acc, row)
    assert round(abstention_rate(records) * len(records)) == abstained


def record(i, radius=0.5, correct=1, predict=3):
    return {"idx": i, "label": 3, "predict": predict, "radius": radius, "correct": correct, "pA_lower": 0.8,
            "counts": {"3": 90}, "n0": 10, "n": 100, "alpha": 0.001, "sigma": 0.25, "method": "smoothed",
            "seconds": 1.5}


def test_acr_and_accuracy_by_hand():
    records = [record(0, 1.0), record(1, 0.5), record(2, 0.0, correct=0, predict=-1), record(3, 2.0, correct=0)]
    assert average_certified_radius(records) == pytest.approx(1.5 / 4)
    np.testing.assert_allclose(certified_accuracy(records, [0, 0.5, 1.0, 1.5]), [0.5, 0.5, 0.25, 0.0])
    assert abstention_rate(records) == 0.25
    assert "ACR 0.375" in summary_table(records, [0, 0.5])


def test_writer_resumes_and_refuses_duplicates(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordWriter(path) as w:
        w.append(record(0))
        w.append(record(1))
    # A torn last line, as left by a kill during a write.
    with open(path, "a") as f:
        f.write('{"idx": 2, "lab')
    with RecordWriter(path) as w:
        assert w.done == {0, 1}
        with pytest.raises(ValueError, match="already"):
            w.append(record(1))
        w.append(record(2))
    assert [r["idx"] for r in read_jsonl(path)] == [0, 1, 2]


def test_corrupt_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record(0)) + "\nnot json\n")
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path)


def test_tsv_round_trip(tmp_path):
    records = [record(5, 0.1234), record(1, 0.0, correct=0, predict=-1)]
    write_tsv(records, tmp_path / "r.tsv")
    text = (tmp_path / "r.tsv").read_text().splitlines()
    assert text[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    assert text[1] == "1\t3\t-1\t0.000\t0\t0:00:01.500000"
    back = read_tsv(tmp_path / "r.tsv")
    assert [r["idx"] for r in back] == [1, 5] and back[1]["radius"] == 0.123 and back[0]["seconds"] == 1.5


def test_tsv_with_wrong_header_is_rejected(tmp_path):
    (tmp_path / "x.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="header"):
        read_tsv(tmp_path / "x.tsv")


def test_duplicate_records_in_a_file_are_an_error(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text(json.dumps(record(0)) + "\n" + json.dumps(record(0)) + "\n")
    with pytest.raises(ValueError, match="repeats idx 0"):
        read_jsonl(path)
    with pytest.raises(ValueError, match="repeats idx 0"):
        RecordWriter(path)


def test_tsv_times_beyond_a_day_and_radii_rounded_down(tmp_path):
    records = [record(0, radius=0.49951), record(1, radius=0.25)]
    records[0]["seconds"] = 90061.5
    write_tsv(records, tmp_path / "r.tsv")
    back = read_tsv(tmp_path / "r.tsv")
    assert back[0]["seconds"] == pytest.approx(90061.5)
    assert back[0]["radius"] == 0.499 and back[1]["radius"] == 0.25
    assert certified_accuracy(back, [0.5]).tolist() == [0.0]


def test_report_shows_several_logs_side_by_side():
    from click.testing import CliRunner

    from art_some.cli import cli

    logs = [os.path.join(LOGS, "some_cifar10_r110", f"{m}_noise-0.25.tsv") for m in ("Gaussian", "SmoothMix")]
    result = CliRunner().invoke(cli, ["report", *logs, "--radii", "0,0.25,0.5"])
    assert result.exit_code == 0, result.output
    table = result.output.split("== side by side\n")[1].splitlines()
    assert table[0].split() == ["records", "(L2", "radii)", "r=0", "r=0.25", "r=0.5", "ACR", "abstain", "%", "inputs"]
    assert table[1].split()[:5] == ["Gaussian_noise-0.25.tsv", "83.4", "71.6", "54.4", "0.537"]
    assert table[2].split()[0] == "SmoothMix_noise-0.25.tsv" and table[2].split()[4] == "0.589"
