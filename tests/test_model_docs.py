"""Every registered model documents its options where help() and `atrous models NAME` find
them: a Google-style `Args:` block in the docstring of the registered class or builder."""

from __future__ import annotations

import inspect
import pydoc
import re

import pytest

from atrous.cli import main
from atrous.models import describe_model, list_models, model_options, model_summaries
from atrous.models.registry import _get_builder

ENTRY = re.compile(r"(\w+) \((.*)")


def registered_doc(name: str) -> str:
    """The docstring describe_model prints: inspect.getdoc of the registered object."""
    return inspect.getdoc(_get_builder(name)) or ""


def args_block(doc: str) -> dict[str, str]:
    """The entries of the docstring's `Args:` block, each name with the first line after it
    (from its opening parenthesis on)."""
    lines = doc.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "Args:"]
    assert len(starts) == 1, "expected exactly one 'Args:' line"
    indent = len(lines[starts[0]]) - len(lines[starts[0]].lstrip())
    entries: dict[str, str] = {}
    entry_indent = None
    for line in lines[starts[0] + 1 :]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth <= indent:
            break  # the block ends at the next section or paragraph
        entry_indent = depth if entry_indent is None else entry_indent
        match = ENTRY.match(line.strip())
        if depth == entry_indent and match:
            entries[match.group(1)] = match.group(2)
    return entries


def documented_default(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


@pytest.mark.parametrize("name", list_models())
def test_registered_docstring_has_args_block_with_every_option(name: str) -> None:
    doc = registered_doc(name)
    assert any(line.strip() == "Args:" for line in doc.splitlines()), f"{name}: no 'Args:' line"
    entries = args_block(doc)
    for option, default in model_options(name).items():
        assert option in entries, f"{name}: option '{option}' missing from Args as '{option} ('"
        assert f"default {documented_default(default)}" in entries[option], (
            f"{name}: Args gives '{option} ({entries[option]}', the code's default is {default!r}"
        )


@pytest.mark.parametrize("name", list_models())
def test_help_shows_the_args_block(name: str) -> None:
    """help() shows a class's own docstring only (pydoc does not inherit it), so a model
    registered on a subclass needs its own."""
    text = pydoc.render_doc(_get_builder(name), renderer=pydoc.plaintext)
    head = text.split("Method resolution order:")[0]  # a class's own docstring comes first
    assert "Args:" in head
    for option in model_options(name):
        assert f"{option} (" in head, f"{name}: help() does not show '{option} ('"


@pytest.mark.parametrize("name", list_models())
def test_describe_model_prints_summary_docstring_and_options(name: str) -> None:
    text = describe_model(name)
    assert model_summaries()[name] in text
    assert "Args:" in text
    for option, default in model_options(name).items():
        assert f"{option} (" in text
        assert f"{option}={default!r}" in text


def test_cli_models_name_prints_the_args_block(capsys) -> None:
    assert main(["models", "deeplab_v3plus"]) == 0
    out = capsys.readouterr().out
    assert model_summaries()["deeplab_v3plus"] in out
    assert "Args:" in out
    for option in model_options("deeplab_v3plus"):
        assert f"{option} (" in out


def test_cli_models_unknown_name_is_a_one_line_error(capsys) -> None:
    assert main(["models", "nope"]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert "nope" in lines[0]
    for known in list_models():
        assert known in lines[0]
