"""The documentation site (mkdocs.yml, `make docs`) builds in strict mode: a broken link or
anchor in README.md or docs/, a page left out of the nav, a docstring whose `Args:` name a
parameter the signature lacks, or a reference to an object that is gone fails the build.
The build reads the code statically (griffe): a few seconds, no model is built."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _needs_mkdocs():
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[docs]' (make venv installs it)")


def test_the_site_builds_strict(tmp_path):
    _needs_mkdocs()
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"[-6000:]
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "Quick start" in home  # the README is the home page
    assert 'href="training/#losses"' in home  # its docs/ links point into the site
    assert 'src="images/demo.png"' in home
    for page, anchor in [("reference/crf", "atrous.crf.DenseCRF"), ("reference/crf", "atrous.crf.ConvCRF"),
                         ("reference/metrics", "atrous.metrics.ConfusionMatrix"),
                         ("reference/training", "atrous.training.hooks.TrainingFeature"),
                         ("reference/atrous", "atrous.checkpoints.checkpoint.load_checkpoint"),
                         ("reference/models", "atrous.models.deeplab.DeepLabV3Plus")]:
        assert f'id="{anchor}"' in (site / page / "index.html").read_text(encoding="utf-8"), (page, anchor)


def _hooks():
    _needs_mkdocs()
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks


def test_readme_links_are_rewritten_into_the_site():
    text = "[a](docs/training.md#losses) ![b](docs/images/x.png) `docs/models.md` [c](#demo)\n[d]: docs/crf.md\n"
    assert _hooks().readme_links_into_site(text) == (
        "[a](training.md#losses) ![b](images/x.png) `docs/models.md` [c](#demo)\n[d]: crf.md\n")


def test_a_list_right_under_text_gets_its_blank_line():
    fix = _hooks().lists_may_interrupt_paragraphs
    assert fix("Text:\n- a\n  more\n- b\n") == "Text:\n\n- a\n  more\n- b\n"
    assert fix("  ```\n  x\n  ```\n  - c\n") == "  ```\n  x\n  ```\n\n  - c\n"  # after a fence
    unchanged = [
        "- a\n  + b\n",  # inside a list
        "```python\nx = 1\n- 2\n```\n",  # inside a fenced block
        "::: atrous.crf\n    options:\n      members:\n        - DenseCRF\n",  # mkdocstrings options
        "Text\n\n- a\n",
    ]
    for text in unchanged:
        assert fix(text) == text
