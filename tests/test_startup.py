"""Start-up: the command's face imports neither torch nor ART (whose package imports all its attacks); --threads."""
import os
import subprocess
import sys

import torch
from click.testing import CliRunner

from art_some.cli import cli

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PROBE = """
import sys
from art_some.cli import main
for argv in ([], ["--help"], ["certify", "--help"], ["evaluate", "--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted(m for m in ("art", "art.attacks", "torch") if m in sys.modules))
"""


def test_importing_the_cli_and_its_help_import_neither_torch_nor_arts_attacks():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT, ART_SOME_DISABLE_ENTRY_POINTS="1"))
    assert done.returncode == 0, done.stderr
    assert "Usage: art-some certify" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_threads_sets_torchs_threads_and_refuses_zero():
    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(cli, ["--threads", "3", "plugins"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    refused = CliRunner().invoke(cli, ["--threads", "0", "plugins"])
    assert refused.exit_code == 2 and "'--threads'" in refused.output and "x>=1" in refused.output
