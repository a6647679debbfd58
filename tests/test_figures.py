"""Figures that must not drift: every speed or accuracy figure that README.md and docs/*.md
quote from benchmarks/results/*.json is checked against that JSON.

Two kinds of figure, two checks:

- A **generated section** (docs/benchmarks.md's CamVid results, CPU speed and int8 tables,
  the whole of docs/models.md) is rendered again from its JSON by the benchmark script
  that wrote it (its `write_docs`, or model_table's `markdown`) and must equal the text in
  the docs, byte for byte.
- A **figure quoted in prose or in a table written by hand** carries its source in an HTML
  comment right after the number (invisible once rendered):

      **0.427**<!-- figure: best.heldout.mIoU -->

  The comment is an expression: references `FILE.json:PATH` (PATH: `.key`, `[index]`,
  `["key with / or spaces"]`, into benchmarks/results/FILE.json) or `ALIAS.PATH`, joined by
  numbers, + - * /, parentheses and `mean(...)` (`100 * ...` for a percentage, `... / 60`
  for minutes, a difference or a ratio of two entries, the mean over seeds). An alias is
  declared once in the document, anywhere in it:
  `<!-- figures: best = camvid.json:rows["camvid_best/deeplab_v3plus_resnet18_60min"] -->`.
  The figure is the number just before the comment on the same line (markup and a unit,
  "x", "s", "%", may stand between); it must equal the expression's value at the figure's
  own rounding (its decimals: "42.7" is the value within 0.05). A reference to a file or a
  key that is not there fails, as does a marker with no number before it.
"""

from __future__ import annotations

import ast
import importlib
import json
import operator
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from .conftest import REPO

RESULTS = REPO / "benchmarks" / "results"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*figure:\s*(.*?)\s*-->")
ALIAS = re.compile(r"<!--\s*figures:\s*([A-Za-z_]\w*)\s*=\s*(.*?)\s*-->")
REFERENCE = re.compile(r"""([A-Za-z_][\w-]*\.json):((?:[A-Za-z_]\w*|\[\d+\]|\["[^"]*"\])"""
                       r"""(?:\.[A-Za-z_]\w*|\[\d+\]|\["[^"]*"\])*)""")
STEP = re.compile(r"""\.?([A-Za-z_]\w*)|\[(\d+)\]|\["([^"]*)"\]""")
NUMBER = re.compile(r"(?<![\w.])([-+−]?)(\d+(?:\.\d+)?)(?![\w.]*\d)")
# what may stand between a figure and its marker: markup and a unit, no other number
GAP = re.compile(r"[\s*_`)%]*(?:x|s|ms|min|%|MiB|GiB|GFLOPs|s/iter|s/iteration|s/step)?[\s*_`)]*")
# the fewest marked figures the docs hold today (a broken MARKER regex finds none)
FEWEST_MARKED = 400


class Figure(NamedTuple):
    where: str  # "docs/x.md:12"
    quoted: str  # the number as the docs write it, "-0.18"
    expression: str


# ---------------------------------------------------------------- the checker


def find_figures(text: str, name: str) -> tuple[list[Figure], list[str]]:
    """The marked figures of a document, and the markers that do not follow a number."""
    figures, orphans = [], []
    for number, line in enumerate(text.splitlines(), 1):
        for marker in MARKER.finditer(line):
            before = MARKER.sub("", line[:marker.start()])
            found = list(NUMBER.finditer(before))
            where = f"{name}:{number}"
            if not found or not GAP.fullmatch(before[found[-1].end():]):
                orphans.append(f"{where}: no number just before <!-- figure: {marker.group(1)} -->")
                continue
            sign, digits = found[-1].groups()
            figures.append(Figure(where, ("-" if sign in "-−" and sign else sign) + digits, marker.group(1)))
    return figures, orphans


def lookup(results: Callable[[str], Any], file: str, path: str) -> float:
    """The number at `path` in benchmarks/results/`file` (KeyError, IndexError: not there)."""
    value = results(file)
    for key, index, quoted in (m.groups() for m in STEP.finditer(path)):
        value = value[int(index)] if index is not None else value[key if key is not None else quoted]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{file}:{path} is {value!r}, not a number")
    return float(value)


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _arithmetic(node: ast.AST, values: dict[str, float]) -> float:
    """Numbers, the looked-up values, + - * / and mean() over them; anything else is refused."""
    if isinstance(node, ast.Expression):
        return _arithmetic(node.body, values)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id in values:
        return values[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_arithmetic(node.left, values), _arithmetic(node.right, values))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_arithmetic(node.operand, values))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "mean"
            and node.args and not node.keywords):
        return sum(_arithmetic(arg, values) for arg in node.args) / len(node.args)
    raise ValueError(f"not arithmetic on results: {ast.unparse(node)}")


def expand(expression: str, aliases: dict[str, str]) -> str:
    """`expression` with each `ALIAS.PATH` written out as the alias' `FILE.json:PATH...`
    (outside quoted keys)."""
    if not aliases:
        return expression
    name = re.compile(r"\b(" + "|".join(map(re.escape, aliases)) + r")(?!\.json\b)(?:\.(?=[A-Za-z_])|(?=\[))")

    def written_out(match: re.Match) -> str:  # a whole file's alias takes the path after a colon
        source = aliases[match.group(1)]
        return source + (":" if source.endswith(".json") else "." if match.group(0).endswith(".") else "")

    parts = re.split(r'("[^"]*")', expression)
    return "".join(part if part.startswith('"') else name.sub(written_out, part) for part in parts)


def evaluate(expression: str, results: Callable[[str], Any], aliases: dict[str, str] | None = None) -> float:
    """The value of a marker's expression (lookup() for each reference)."""
    values: dict[str, float] = {}

    def name(match: re.Match) -> str:
        values[f"_r{len(values)}"] = lookup(results, *match.groups())
        return f"_r{len(values) - 1}"

    arithmetic = REFERENCE.sub(name, expand(expression, aliases or {}))
    if not values:
        raise ValueError(f"no FILE.json:PATH reference in {expression!r}")
    return _arithmetic(ast.parse(arithmetic, mode="eval"), values)


def agrees(quoted: str, value: float) -> bool:
    """Whether `value` rounds to the quoted figure at the figure's decimals."""
    decimals = len(quoted.split(".", 1)[1]) if "." in quoted else 0
    return abs(float(quoted) - value) <= 0.5 * 10 ** -decimals * (1 + 1e-9)


def problems(text: str, name: str, results: Callable[[str], Any]) -> list[str]:
    """Every marked figure of `text` that is not its JSON's value, or whose source is not there."""
    aliases = dict(ALIAS.findall(text))
    figures, found = find_figures(text, name)
    if len(aliases) < len(ALIAS.findall(text)):
        found.append(f"{name}: an alias is declared twice: {ALIAS.findall(text)}")
    for figure in figures:
        try:
            value = evaluate(figure.expression, results, aliases)
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError, SyntaxError, OSError) as error:
            found.append(f"{figure.where}: {figure.quoted} <- {figure.expression}: "
                         f"{type(error).__name__}: {error}")
            continue
        if not agrees(figure.quoted, value):
            found.append(f"{figure.where}: the docs say {figure.quoted}, {figure.expression} is {value:.6g}")
    return found


def results_folder(folder: Path) -> Callable[[str], Any]:
    cache: dict[str, Any] = {}

    def read(file: str) -> Any:
        if file not in cache:
            cache[file] = json.loads((folder / file).read_text())
        return cache[file]

    return read


# ---------------------------------------------------------------- the docs


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_marked_figure_equals_its_json(doc: Path) -> None:
    found = problems(doc.read_text(), str(doc.relative_to(REPO)), results_folder(RESULTS))
    assert not found, "figures that drifted from benchmarks/results:\n" + "\n".join(found)


def test_the_docs_mark_their_figures() -> None:
    """The marked figures are found (a marker syntax the checker no longer reads would pass
    every document above), in the README and the benchmark pages."""
    counts = {doc.name: len(find_figures(doc.read_text(), doc.name)[0]) for doc in DOCS}
    assert sum(counts.values()) >= FEWEST_MARKED, counts
    assert all(counts[name] for name in ("README.md", "benchmarks.md", "inference.md", "crf.md", "training.md", "serve.md")), counts


# ---------------------------------------------------------------- the generated sections


def _benchmark(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))  # as `python benchmarks/NAME.py` does
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


@pytest.mark.parametrize("script, results", [("camvid", "camvid.json"), ("speed", "speed.json"),
                                              ("int8", "int8.json"), ("multispectral", "multispectral.json")])
def test_generated_sections_of_benchmarks_md_equal_their_json(script: str, results: str, tmp_path: Path) -> None:
    """The script's --docs-only, run on a copy of docs/benchmarks.md, changes nothing."""
    module = _benchmark(script)
    doc = REPO / "docs" / "benchmarks.md"
    copy = tmp_path / "benchmarks.md"
    shutil.copy(doc, copy)
    module.write_docs(json.loads((RESULTS / results).read_text()), copy)
    assert copy.read_text() == doc.read_text(), (
        f"docs/benchmarks.md's section of benchmarks/{script}.py differs from results/{results}: "
        f"run `python benchmarks/{script}.py --docs-only`")


def test_models_md_equals_model_table_json() -> None:
    pytest.importorskip("timm")
    table = json.loads((RESULTS / "model_table.json").read_text())
    text = _benchmark("model_table").markdown(table["models"], table["size"])
    assert text == (REPO / "docs" / "models.md").read_text(), (
        "docs/models.md differs from benchmarks/results/model_table.json: rerun benchmarks/model_table.py")


# ---------------------------------------------------------------- the checker bites


@pytest.fixture()
def results(tmp_path: Path) -> Callable[[str], Any]:
    (tmp_path / "r.json").write_text(json.dumps(
        {"rows": [{"seconds": 0.2114}, {"seconds": 0.8579}], "val": {"mIoU": 0.42569, "a/b c": {"x": 3}},
         "name": "cpu", "flag": True}))
    return results_folder(tmp_path)


def test_a_figure_at_its_rounding_passes(results) -> None:
    text = ("| x | **42.6**<!-- figure: 100 * r.json:val.mIoU --> |\n"
            "0.25x<!-- figure: r.json:rows[0].seconds / r.json:rows[1].seconds --> the time, "
            "in 0.21 s<!-- figure: r.json:rows[0].seconds -->, -0.43<!-- figure: -r.json:val.mIoU -->; "
            "3<!-- figure: r.json:val[\"a/b c\"].x -->\n")
    assert problems(text, "doc.md", results) == []
    assert len(find_figures(text, "doc.md")[0]) == 5


def test_aliases_and_mean(results) -> None:
    text = ('<!-- figures: first = r.json:rows[0] -->\n<!-- figures: v = r.json:val -->\n'
            '<!-- figures: all = r.json -->\n'
            "0.53 s<!-- figure: mean(first.seconds, all.rows[1].seconds) --> on average, "
            '42.6<!-- figure: 100 * v.mIoU -->, 3<!-- figure: v["a/b c"].x -->\n')
    assert problems(text, "doc.md", results) == []
    assert problems(text.replace("0.53", "0.54"), "doc.md", results) != []
    assert "KeyError" in problems(text.replace("rows[0] -->", "rows[0].gone -->"), "doc.md", results)[0]
    twice = "<!-- figures: v = r.json:val -->\n" + text
    assert "declared twice" in problems(twice, "doc.md", results)[0]


@pytest.mark.parametrize("text, says", [
    ("**42.7**<!-- figure: 100 * r.json:val.mIoU -->", "the docs say 42.7"),  # drifted
    ("42.56<!-- figure: 100 * r.json:val.mIoU -->", "the docs say 42.56"),  # at more decimals
    ("0.2<!-- figure: r.json:rows[1].seconds -->", "the docs say 0.2"),
    ("+0.43<!-- figure: -r.json:val.mIoU -->", "the docs say +0.43"),  # the sign counts
    ("42.6<!-- figure: 100 * r.json:val.miou -->", "KeyError"),  # a key the JSON lacks
    ("42.6<!-- figure: 100 * r.json:rows[2].seconds -->", "IndexError"),
    ("42.6<!-- figure: 100 * gone.json:val.mIoU -->", "FileNotFoundError"),
    ("42.6<!-- figure: r.json:name -->", "not a number"),
    ("1<!-- figure: r.json:flag -->", "not a number"),
    ("42.6<!-- figure: 42.6 -->", "no FILE.json:PATH"),
    ("42.6<!-- figure: __import__('os') or r.json:val.mIoU -->", "not arithmetic"),
    ("42.6<!-- figure: 100 * nothere.mIoU -->", "no FILE.json:PATH"),  # an alias never declared
    ("mIoU<!-- figure: r.json:val.mIoU -->", "no number just before"),
    ("42.6 on 0006R0<!-- figure: 100 * r.json:val.mIoU -->", "no number just before"),
])
def test_a_figure_that_drifted_or_lost_its_source_fails(results, text: str, says: str) -> None:
    found = problems(text + "\n", "doc.md", results)
    assert len(found) == 1 and says in found[0], found
    assert found[0].startswith("doc.md:1: ")
