"""Sphinx configuration for art-some (autodoc, as ART's own docs)."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "art-some"
author = "art-some developers"
copyright = "2026, art-some developers"
from art_some import __version__ as release  # noqa: E402

version = release
# myst_parser renders the Markdown results pages (included from the .rst pages); sphinx_click documents the CLI.
extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode", "sphinx.ext.napoleon", "myst_parser", "sphinx_click"]
myst_enable_extensions = ["dollarmath"]
# No smart quotes: they turn the CLI reference's "--radii" into an en dash and its JSON examples into curly quotes,
# which fail when copied into a shell (tests/test_docs.py builds the page and checks).
smartquotes = False
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
# The Markdown figures pages are pulled into their method's page by ``.. include::``, not built on their own.
exclude_patterns = ["_build", "*_results.md", "performance.md"]
try:
    import sphinx_rtd_theme  # noqa: F401

    html_theme = "sphinx_rtd_theme"
except ImportError:  # the docs still build with the default theme
    html_theme = "alabaster"
