import os
import subprocess
import sys

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs")


def test_sphinx_docs_build_without_warnings(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", DOCS, str(tmp_path)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "modules" / "estimators.html").is_file()
    assert "SmoothedClassifier" in (tmp_path / "modules" / "estimators.html").read_text()
    cli = (tmp_path / "modules" / "cli.html").read_text()
    for command in ("certify", "evaluate", "train", "demo", "report", "plugins", "predict"):
        assert f'id="art-some-{command}"' in cli, f"the CLI page does not document art-some {command}"
    assert "--n0" in cli
    for page in ("some", "smooth_reduce", "denoised", "trainers", "audit", "performance", "sequential"):
        html = (tmp_path / f"{page}.html").read_text()
        assert "<table" in html and "|---|" not in html, f"{page}: its results are not rendered as tables"
    assert "Copyright 2026, art-some developers" in (tmp_path / "index.html").read_text()
