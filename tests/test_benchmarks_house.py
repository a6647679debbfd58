"""The benchmark scripts' house: what they share lives once, in benchmarks/harness.py (the
machine's name, the timers, the results JSON, the generated docs sections), and no function
in benchmarks/ is longer than 80 lines. The harness' helpers do what the scripts relied on."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

from .conftest import REPO

BENCHMARKS = REPO / "benchmarks"
HARNESS = BENCHMARKS / "harness.py"
MAX_FUNCTION_LINES = 80
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))
OTHERS = [path for path in SCRIPTS if path != HARNESS]


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Every function of a module: top level, methods, nested ones."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]


def _lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's length, from its first decorator (or `def`) to its last line."""
    first = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
    return node.end_lineno - first + 1


def _calls(node: ast.AST, name: str) -> bool:
    """Whether `node` holds a call of `name` (`name(...)` or `anything.name(...)`)."""
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            func = call.func
            if (isinstance(func, ast.Attribute) and func.attr == name) or (
                    isinstance(func, ast.Name) and func.id == name):
                return True
    return False


def _strings(node: ast.AST) -> list[str]:
    return [c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)]


def _harness_names() -> set[str]:
    tree = _tree(HARNESS)
    return {node.name for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_")}


def test_no_function_in_benchmarks_is_longer_than_80_lines() -> None:
    long = [f"{path.name}:{node.lineno} {node.name} ({_lines(node)} lines)"
            for path in SCRIPTS for node in _functions(_tree(path)) if _lines(node) > MAX_FUNCTION_LINES]
    assert not long, "split these into named steps: " + ", ".join(long)


def test_the_harness_helpers_are_defined_nowhere_else() -> None:
    names = _harness_names()
    assert {"cpu_name", "timed", "interleaved", "clock", "write_generated", "write_json"} <= names
    again = [f"{path.name}:{node.lineno} {node.name}" for path in OTHERS for node in ast.walk(_tree(path))
             if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name in names]
    assert not again, "use benchmarks/harness.py's: " + ", ".join(again)


def test_only_the_harness_reads_the_cpu_name() -> None:
    """/proc/cpuinfo and platform.processor() are the harness' (cpu_name, machine_word)."""
    found = []
    for path in OTHERS:
        tree = _tree(path)
        if any("/proc/cpuinfo" in text for text in _strings(tree)):
            found.append(f"{path.name} reads /proc/cpuinfo")
        if _calls(tree, "processor"):
            found.append(f"{path.name} calls platform.processor()")
    assert not found, found


def test_only_the_harness_times_repeated_calls() -> None:
    """A function with a loop that reads the clock and takes a median is a timer of its own:
    harness.timed / harness.interleaved (and harness.clock for one call) do that."""
    timers = []
    for path in OTHERS:
        for function in _functions(_tree(path)):
            loops = [node for node in ast.walk(function) if isinstance(node, ast.For | ast.While)]
            if any(_calls(loop, "perf_counter") for loop in loops) and _calls(function, "median"):
                timers.append(f"{path.name}:{function.lineno} {function.name}")
    assert not timers, "time with benchmarks/harness.py: " + ", ".join(timers)


def test_only_the_harness_splices_generated_sections_and_writes_results_json() -> None:
    """The markers of a generated docs section are looked for only by harness.write_generated;
    a results JSON (indented) is written only by harness.write_json."""
    found = []
    for path in OTHERS:
        tree = _tree(path)
        markers = {name.id for node in tree.body if isinstance(node, ast.Assign)
                   if any("<!--" in text for text in _strings(node.value))
                   for target in node.targets for name in ast.walk(target) if isinstance(name, ast.Name)}
        for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
            words = [arg for arg in call.args if isinstance(arg, ast.Name) and arg.id in markers]
            words += [arg for arg in call.args if isinstance(arg, ast.Constant) and "<!--" in str(arg.value)]
            if isinstance(call.func, ast.Attribute) and call.func.attr in {
                    "split", "rsplit", "partition", "find", "index", "replace"} and words:
                found.append(f"{path.name}:{call.lineno} splices a generated section")
            if (isinstance(call.func, ast.Attribute) and call.func.attr == "write_text"
                    and any(isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute)
                            and inner.func.attr == "dumps" and any(k.arg == "indent" for k in inner.keywords)
                            for arg in call.args for inner in ast.walk(arg))):
                found.append(f"{path.name}:{call.lineno} writes a results JSON")
        for node in ast.walk(tree):  # `BEGIN in text`
            if isinstance(node, ast.Compare) and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
                if isinstance(node.left, ast.Name) and node.left.id in markers:
                    found.append(f"{path.name}:{node.lineno} looks for a marker")
    assert not found, found


# ---------------------------------------------------------------- the helpers themselves


@pytest.fixture(scope="module")
def harness():
    sys.path.insert(0, str(BENCHMARKS))  # as `python benchmarks/NAME.py` and the scripts' tests do
    try:
        return importlib.import_module("harness")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_write_generated_replaces_appends_refuses_and_makes(harness, tmp_path: Path) -> None:
    begin, end = "<!-- BEGIN GENERATED by x -->", "<!-- END GENERATED by x -->"
    section = f"{begin}\n\nnew\n\n{end}"
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Doc\n\nbefore\n\n{begin}\nold\n{end}\n\nafter\n")
    harness.write_generated(doc, section, begin, end)
    assert doc.read_text() == f"# Doc\n\nbefore\n\n{section}\n\nafter\n"
    bare = tmp_path / "bare.md"
    bare.write_text("# Bare\n\ntext\n\n")
    harness.write_generated(bare, section, begin, end)
    assert bare.read_text() == f"# Bare\n\ntext\n\n{section}\n"
    bare.write_text("# Bare\n")
    with pytest.raises(SystemExit, match="lacks the markers"):
        harness.write_generated(bare, section, begin, end, append=False)
    assert bare.read_text() == "# Bare\n"
    made = tmp_path / "made.md"
    harness.write_generated(made, section, begin, end, append=False)
    assert made.read_text() == f"# Benchmarks\n\n{section}\n"
    assert not list(tmp_path.glob("*.tmp"))


def test_write_json_indents_and_ends_with_a_newline(harness, tmp_path: Path) -> None:
    path = tmp_path / "new" / "r.json"
    harness.write_json(path, {"a": [1, 2], "b": None})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": null\n}\n'


def test_interleaved_warms_up_path_by_path_then_runs_rounds(harness) -> None:
    calls: list[str] = []

    def path(name: str):
        return lambda: calls.append(name) or name

    rounds = harness.interleaved({"a": path("a"), "b": path("b")}, 3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert set(rounds.medians) == {"a", "b"} and [len(t) for t in rounds.times.values()] == [3, 3]
    assert rounds.results == {}
    syncs: list[int] = []
    kept = harness.interleaved({"a": path("a")}, 2, sync=lambda: syncs.append(1), keep_results=True)
    assert kept.results == {"a": "a"} and len(syncs) == 4  # before and after each timed call


def test_timed_warms_up_then_takes_the_median(harness) -> None:
    count = []
    median, times, result = harness.timed(lambda: count.append(1) or len(count), 5, warmup=2)
    assert len(count) == 7 and len(times) == 5 and result == 7
    assert min(times) <= median <= max(times)


def test_cpu_name_and_command_line(harness, monkeypatch) -> None:
    name = harness.cpu_name()
    assert name and name == name.strip()
    assert harness.cpu_name(bf16=True).startswith(name + " (")
    assert harness.cpu_name(bf16=True).endswith(("(AVX512-BF16)", "(no AVX512-BF16)"))
    monkeypatch.setattr(sys, "argv", ["/somewhere/benchmarks/x.py", "--a", "1"])
    assert harness.command_line(str(BENCHMARKS / "speed.py")) == "benchmarks/speed.py --a 1"
    assert harness.command_line(str(BENCHMARKS / "speed.py"), python=True) == "python benchmarks/speed.py --a 1"
