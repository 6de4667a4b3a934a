"""Sphinx configuration for art-some (autodoc, as ART's own docs)."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "art-some"
author = "art-some developers"
from art_some import __version__ as release  # noqa: E402

version = release
extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode", "sphinx.ext.napoleon"]
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
exclude_patterns = ["_build"]
try:
    import sphinx_rtd_theme  # noqa: F401

    html_theme = "sphinx_rtd_theme"
except ImportError:  # the docs still build with the default theme
    html_theme = "alabaster"
