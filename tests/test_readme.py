"""
Every Python snippet of README.md runs as written, on its own (in a fresh process and an empty folder), and prints
what the README says it prints: one meaningful line at least, checked against the patterns below.
"""
import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
# What each section's snippet prints (regular expressions, each found in its standard output, line by line).
PRINTS = {
    "Use it as an ART estimator": [r"^certified correct: \d+ of 20$"],
    "Sequential certification: stop each input once it is decided": [
        r"^fixed-radius mode: certified at 0\.25: \d+ of 20; draws per input: (?P<fixed>\d+) of 10,000$",
        r"^radius mode: certified correct: \d+ of 20; draws per input: (?P<radius>\d+) of 10,000$"],
    "Noise families and norms: L1 certificates": [r"^uniform l1 radii: \[[\d. \n]+\]"],
    "SOME: one network, M heads": [r"^certified correct: \d+ of 10; mean radius \d+(\.\d+)?$"],
    "Smooth-Reduce: patches, sound by default": [r"^certified correct: \d+ of 10; radii \[[\d. \n]+\]"],
    "Denoised smoothing and multi-scale cascades": [
        r"^classes: \[[-\d ]+\] levels visited: .*\(untrained models: no meaning\)$"],
    "Robust trainers and data-dependent smoothing": [
        r"^certified correct: \d+ of 20; sigma per input \d\.\d{3} to \d\.\d{3}$"],
    "Attack-vs-certificate audit": [
        r"^\| accuracy \(%\) at L2 radius \|", r"^\| certified correct \|", r"^\| empirical, pgd \|",
        r"^\| gap \(best attack - certified\) \|", r"^Inputs: 8, certified: \d+ .*violations: 0 on 0 input\(s\)"],
}


def python_snippets() -> list[tuple[str, str]]:
    """(section title, code) of each ```python block, in order."""
    text = open(README, encoding="utf-8").read()
    snippets = []
    for match in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
        title = re.findall(r"^## (.+)$", text[: match.start()], flags=re.M)[-1]
        snippets.append((title, match.group(1)))
    return snippets


def test_every_snippet_says_what_it_prints():
    assert [title for title, _ in python_snippets()] == list(PRINTS)


@pytest.mark.parametrize("title,code", python_snippets(), ids=[t for t, _ in python_snippets()])
def test_readme_snippet_runs_as_written(title, code, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"README snippet '{title}' failed:\n{done.stderr[-3000:]}"
    found = {}
    for pattern in PRINTS[title]:
        match = re.search(pattern, done.stdout, flags=re.M)
        assert match, f"README snippet '{title}' printed no line like {pattern!r}:\n{done.stdout}"
        found.update(match.groupdict())
    if "fixed" in found:  # the README's claim: the fixed-radius mode saves several times, the radius mode little
        assert 2 * int(found["fixed"]) < int(found["radius"]), done.stdout
