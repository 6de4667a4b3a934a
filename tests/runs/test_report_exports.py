"""
``art-some report`` and ``certify`` exports: tables as Markdown, CSV and LaTeX that parse and hold the report's
numbers, and the certified-accuracy plot (Cohen et al.'s analyze.py) as a PNG with one line per run.
"""
import csv
import io
import os

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import norm

from art_some.cli import DEFAULT_RADII, cli
from art_some.evaluation.plots import plot_certified_accuracy
from art_some.runs.metrics import CERTIFY_RADII, average_certified_radius, certified_accuracy
from art_some.runs.records import read_tsv
from art_some.runs.tables import Table, render
from tests.conftest import PUBLISHED_LOGS as LOGS

PNG = b"\x89PNG\r\n\x1a\n"
GAUSSIAN = os.path.join(LOGS, "some_cifar10_r110", "Gaussian_noise-0.25.tsv")
SMOOTHMIX = os.path.join(LOGS, "some_cifar10_r110", "SmoothMix_noise-0.25.tsv")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_certifys_table_radii_are_the_command_lines():
    assert [float(r) for r in DEFAULT_RADII.split(",")] == list(CERTIFY_RADII)


def report(form):
    result = run("report", GAUSSIAN, SMOOTHMIX, "--radii", "0,0.25,0.5", "--format", form)
    assert result.exit_code == 0, result.output
    return result.output


def test_csv_export_parses_and_holds_the_numbers():
    rows = list(csv.reader(io.StringIO(report("csv"))))
    assert rows[0] == ["records (L2 radii)", "r=0", "r=0.25", "r=0.5", "ACR", "abstain %", "inputs"]
    assert rows[1] == ["Gaussian_noise-0.25.tsv", "83.4", "71.6", "54.4", "0.537", "4.0", "500"]
    assert rows[2][0] == "SmoothMix_noise-0.25.tsv" and rows[2][4] == "0.589" and len(rows) == 3


def test_markdown_export_is_a_pipe_table_with_the_numbers():
    lines = report("markdown").strip().splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0][:2] == ["records (L2 radii)", "r=0"] and set(cells[1][1:]) == {"---:"} and len(lines) == 4
    assert cells[2] == ["Gaussian_noise-0.25.tsv", "83.4", "71.6", "54.4", "0.537", "4.0", "500"]


def test_latex_export_is_a_booktabs_tabular_with_escaped_names():
    lines = report("latex").strip().splitlines()
    assert lines[0] == r"\begin{tabular}{lrrrrrr}" and lines[1] == r"\toprule" and lines[-1] == r"\end{tabular}"
    assert lines[2] == r"records (L2 radii) & r=0 & r=0.25 & r=0.5 & ACR & abstain \% & inputs \\"
    assert lines[4] == r"Gaussian\_noise-0.25.tsv & 83.4 & 71.6 & 54.4 & 0.537 & 4.0 & 500 \\"
    body = [line.removesuffix(r" \\").split(" & ") for line in lines[4:6]]
    assert all(len(row) == 7 for row in body)


def test_the_text_format_stays_the_default_and_a_bad_format_is_refused():
    text = run("report", GAUSSIAN, "--radii", "0,0.25").output
    assert text.startswith(f"== {GAUSSIAN}\nprovenance: none recorded") and "ACR 0.537" in text
    bad = run("report", GAUSSIAN, "--format", "html")
    assert bad.exit_code == 2 and "'html' is not one of 'text', 'markdown', 'csv', 'latex'" in bad.output
    with pytest.raises(ValueError, match="--format must be one of text, markdown, csv, latex"):
        render(Table(["a"], [["1"]]), "html")


def test_report_plot_is_a_png_with_one_line_per_run(tmp_path):
    out = tmp_path / "figures" / "cmp.png"
    result = run("report", GAUSSIAN, SMOOTHMIX, "--plot", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG and result.output.strip().endswith(f"plot: {out}")
    runs = {os.path.basename(p): read_tsv(p) for p in (GAUSSIAN, SMOOTHMIX)}
    fig = plot_certified_accuracy(runs)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["Gaussian_noise-0.25.tsv, ACR 0.537",
                                                    "SmoothMix_noise-0.25.tsv, ACR 0.589"]
    x, y = lines[0].get_data()
    np.testing.assert_allclose(y, 100 * certified_accuracy(runs["Gaussian_noise-0.25.tsv"], x))


def test_plot_marks_the_largest_certifiable_radius_and_titles_n_and_alpha():
    records = [{"idx": i, "label": 1, "predict": 1, "correct": 1, "radius": r, "pA_lower": 0.9, "n": 1000,
                "alpha": 0.001, "sigma": 0.5, "noise": "gaussian", "norm": "l2"} for i, r in enumerate([0.2, 0.9])]
    fig = plot_certified_accuracy({"mine": records, "again": records}, title="digits")
    ax = fig.axes[0]
    cap = 0.5 * norm.ppf(0.001 ** (1 / 1000))  # sigma * Phi^-1(alpha^(1/n)): all n votes for the class
    marks = [line for line in ax.get_lines() if line.get_gid() == "largest certifiable radius"]
    assert len(marks) == 2 and marks[0].get_xdata()[0] == pytest.approx(cap)
    assert ax.get_title() == "digits; n = 1,000, alpha = 0.001; dotted: largest certifiable radius"
    assert ax.get_xlim()[1] > cap and average_certified_radius(records) == pytest.approx(0.55)


@pytest.mark.parametrize("args, words", [
    (["--plot", "cmp.txt"], "--plot cmp.txt must name a png, pdf, svg file"),
    (["--plot", GAUSSIAN.replace(".tsv", ".png"), "--radii", "x"], "--radii must be comma-separated numbers"),
])
def test_report_refuses_a_bad_plot_or_radii_before_writing(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    result = run("report", GAUSSIAN, *args)
    assert result.exit_code == 2 and words in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_a_predict_only_report_cannot_plot(tmp_path):
    log = tmp_path / "p.tsv"
    log.write_text("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0:00:01\n")
    result = run("report", log, "--plot", tmp_path / "p.png")
    assert result.exit_code == 2 and "PREDICT records only" in result.output
    assert not (tmp_path / "p.png").exists()


def test_certify_plot_writes_a_png_and_a_bad_name_is_refused_first(tmp_path):
    base = ["certify", "--model", "digits_cnn", "--sigma", "0.5", "--n0", 20, "--n", 100, "--max-inputs", 4,
            "--device", "cpu", "--output", tmp_path / "r.jsonl"]
    refused = run(*base, "--plot", tmp_path / "r.jpg")
    assert refused.exit_code == 2 and "must name a png, pdf, svg file" in refused.output
    clash = run(*base[:-1], tmp_path / "r.png", "--plot", tmp_path / "r.png")  # records named .png, and the plot
    assert clash.exit_code == 2 and "would overwrite r.png, a file this command reads" in clash.output
    assert list(tmp_path.iterdir()) == []
    result = run(*base, "--plot", tmp_path / "r.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG and f"; plot: {tmp_path / 'r.png'}" in result.output


def test_report_refuses_a_plot_over_one_of_its_files(tmp_path):
    log = tmp_path / "log.png"  # a TSV log with an odd name
    log.write_bytes(open(GAUSSIAN, "rb").read())
    result = run("report", log, "--plot", log)
    assert result.exit_code == 2 and "would overwrite log.png" in result.output
    assert log.read_bytes() == open(GAUSSIAN, "rb").read()
