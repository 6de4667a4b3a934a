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
