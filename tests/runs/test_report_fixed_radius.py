"""
Fixed-radius runs (``certify --radii``): their tables hold the requested radii and no ACR (an input stops drawing
once its radii are decided, so its radius field says nothing about how robust it is), in certify, merge and report.
"""
import re

import pytest
from click.testing import CliRunner

from art_some.cli import cli
from art_some.runs.metrics import comparison_table, summary_table, table_radii
from art_some.runs.records import read_jsonl

CERTIFY = ["certify", "--model", "digits_cnn", "--sigma", "0.5", "--n0", 20, "--n", 400, "--max-inputs", 12,
           "--device", "cpu", "--seed", 1]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    out = tmp_path_factory.mktemp("fixed") / "f.jsonl"
    result = run(*CERTIFY, "--radii", "0.1,0.2", "--output", out)
    assert result.exit_code == 0, result.output
    return out, result.stdout


def record(i, radius, correct=1):
    return {"idx": i, "label": 1, "predict": 1 if correct else 2, "radius": radius, "correct": correct,
            "certified_at": {"0.1": radius >= 0.1, "0.2": radius >= 0.2}}


def test_certify_prints_the_requested_radii_and_no_acr(fixed):
    out, printed = fixed
    table = printed.split("records:")[0].strip().splitlines()[-4:]
    assert table[0].split() == ["L2", "r", "0.1", "0.2"]
    records = read_jsonl(out)
    expected = [100 * sum(r["correct"] and r["certified_at"][k] for r in records) / len(records)
                for k in ("0.1", "0.2")]
    assert table[1].split()[-2:] == [f"{v:.1f}" for v in expected]
    assert not re.search(r"ACR \d", printed) and table[2].startswith("fixed-radius run: no ACR")


def test_report_shows_a_fixed_radius_run_at_its_radii_and_refuses_others(fixed):
    out, printed = fixed
    result = run("report", out)
    assert result.exit_code == 0, result.output
    assert summary_table(read_jsonl(out)) in result.output and not re.search(r"ACR \d", result.output)
    assert [line for line in result.output.splitlines() if line.strip().startswith("L2 r")][0].split() == \
        ["L2", "r", "0.1", "0.2"]
    refused = run("report", out, "--radii", "0.1,0.5")
    assert refused.exit_code == 2
    assert "asked to decide (0.1, 0.2), not at 0.5" in refused.output and "== " not in refused.output
    assert run("report", out, "--radii", "0.2").output.count("0.2") >= 1


def test_merged_shards_of_a_fixed_radius_run_print_its_radii(tmp_path):
    shards = [tmp_path / f"s{i}.jsonl" for i in range(2)]
    for i, shard in enumerate(shards):
        assert run(*CERTIFY, "--radii", "0.1,0.2", "--shard", f"{i}/2", "--output", shard).exit_code == 0
    merged = run("merge", *shards, "--output", tmp_path / "m.jsonl")
    assert merged.exit_code == 0, merged.output
    assert merged.stdout.splitlines()[0].split() == ["L2", "r", "0.1", "0.2"] and "no ACR" in merged.stdout


def test_side_by_side_a_fixed_radius_run_has_no_acr():
    fixed = [record(0, 0.15), record(1, 0.3), record(2, 0.0, correct=0)]
    plain = [{"idx": i, "label": 1, "predict": 1, "radius": r, "correct": 1} for i, r in enumerate([0.1, 0.4])]
    lines = comparison_table([("fixed", fixed), ("plain", plain)]).splitlines()
    assert lines[0].split() == ["records", "(L2", "radii)", "r=0.1", "r=0.2", "ACR", "abstain", "%", "inputs"]
    assert lines[1].split() == ["fixed", "66.7", "33.3", "-", "0.0", "3"]
    assert lines[2].split() == ["plain", "100.0", "50.0", "0.250", "0.0", "2"]
    assert table_radii(plain).tolist() == [0.25 * k for k in range(9)]
    with pytest.raises(ValueError, match="different radii"):
        table_radii(fixed + [{**record(3, 0.2), "certified_at": {"0.3": False}}])
