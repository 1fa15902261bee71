"""Sphinx configuration: `python -m sphinx -W -b html docs docs/_build/html`."""

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
# Importing the library must not start accelerators or print device warnings.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

project = "second-order-optimizers"
author = "The second-order-optimizers authors"
copyright = "2026, " + author  # noqa: A001 (Sphinx's name)
release = "0.2.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "project_docs",
]

exclude_patterns = ["_build", "_generated"]  # _generated/*.rst are included, not pages
templates_path = []
html_theme = "alabaster"
html_static_path = []

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
nitpicky = False
