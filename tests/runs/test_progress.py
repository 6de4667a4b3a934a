"""Progress off a terminal: plain lines, never a bar's carriage returns or cursor codes (a log file stays readable)."""
import io
import os
import re
import subprocess
import sys

from tqdm import tqdm

from art_some.runs.progress import PlainProgress, progress

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_file_gets_plain_lines_with_the_count():
    log = io.StringIO()
    with progress(total=5, initial=2, desc="certify shard 1/3", position=1, stream=log) as bar:
        assert isinstance(bar, PlainProgress)
        bar.update(3)
    assert log.getvalue().startswith("certify shard 1/3: 5/5 inputs (100%), ")
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()


def test_plain_lines_come_at_the_interval_only():
    log = io.StringIO()
    with PlainProgress(total=4, initial=0, desc="audit", unit="input", stream=log, interval=3600) as bar:
        bar.update(1)
        bar.update(1)
        assert log.getvalue() == ""  # nothing before the interval is up...
    assert log.getvalue().count("\n") == 1 and log.getvalue().startswith("audit: 2/4 inputs (50%)")  # ...and at the end
    every = io.StringIO()
    with PlainProgress(total=2, initial=0, desc="audit", unit="input", stream=every, interval=0) as bar:
        bar.update(1)
        bar.update(1)
    assert [line.split(",")[0] for line in every.getvalue().splitlines()] == [
        "audit: 1/2 inputs (50%)", "audit: 2/2 inputs (100%)", "audit: 2/2 inputs (100%)"]


def test_a_terminal_gets_a_bar_and_disabled_progress_writes_nothing():
    bar = progress(total=3, initial=0, desc="certify", stream=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()
    quiet = io.StringIO()
    with progress(total=3, initial=0, desc="certify", enabled=False, stream=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def test_a_sharded_certify_run_logs_to_a_file_without_control_codes(tmp_path):
    log = tmp_path / "shard.log"
    with open(log, "w") as stderr:
        done = subprocess.run([sys.executable, "-m", "art_some.cli", "certify", "--model", "digits_cnn", "--sigma",
                               "0.25", "--n", "100", "--max-inputs", "4", "--shard", "1/2", "--output",
                               str(tmp_path / "r.jsonl")], cwd=tmp_path, stdout=subprocess.PIPE, stderr=stderr,
                              env=dict(os.environ, PYTHONPATH=os.path.abspath(ROOT), OMP_NUM_THREADS="1"), timeout=300)
    text = log.read_text()
    assert done.returncode == 0, text
    assert re.search(r"^certify shard 1/2: 2/2 inputs \(100%\), \d+ s$", text, flags=re.M), text
    assert "\r" not in text and "\x1b" not in text
