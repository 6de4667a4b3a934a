import html
import os
import re
import shutil
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


def _body_text(html_page: str) -> str:
    """The page's own text as a reader copies it (not the theme's title or footer): tags dropped, entities decoded."""
    body = re.split(r'<footer|class="footer"', html_page.split('role="main"', 1)[1].split(">", 1)[1])[0]
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def test_the_cli_reference_keeps_options_and_json_examples_copyable(tmp_path):
    """Smart quotes off: '--radii' stays two hyphens and the --option JSON keeps straight quotes (shell-ready)."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(os.path.join(DOCS, "modules", "cli.rst"), source / "index.rst")  # only the CLI page: seconds
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-c", DOCS, "-b", "html", str(source), str(tmp_path / "html")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    text = _body_text((tmp_path / "html" / "index.html").read_text(encoding="utf-8"))
    assert "with --radii or --sequential" in text  # the certify command's own help, in prose
    assert "up to --n" in text
    assert """'patches={"layout": "grid", "size": 8, "stride": 1}'""" in text
    assert """'denoiser={"name": "diffusion", "path": "unet_dir"}'""" in text
    for typographic in "\u2013\u2014\u2018\u2019\u201c\u201d":  # en and em dash, curly quotes
        assert typographic not in text, f"the CLI page holds {typographic!r}"
