"""Every Python snippet of README.md runs as written, on its own (in a fresh process and an empty folder)."""
import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def python_snippets() -> list[tuple[str, str]]:
    """(section title, code) of each ```python block, in order."""
    text = open(README, encoding="utf-8").read()
    snippets = []
    for match in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
        title = re.findall(r"^## (.+)$", text[: match.start()], flags=re.M)[-1]
        snippets.append((title, match.group(1)))
    return snippets


def test_the_readme_has_snippets():
    assert len(python_snippets()) >= 6


@pytest.mark.parametrize("title,code", python_snippets(), ids=[t for t, _ in python_snippets()])
def test_readme_snippet_runs_as_written(title, code, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"README snippet '{title}' failed:\n{done.stderr[-3000:]}"
