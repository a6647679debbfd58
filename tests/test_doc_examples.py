"""Every ```python block of README.md and docs/**/*.md runs.

Each block runs in a fresh namespace, in a temporary working directory, with line numbers of
its markdown file in a traceback (README.md:231). A block that cannot run here (it needs data
files, weights from the internet, a GPU or a server) carries, on the line before its fence,

    <!-- no-run: why -->

and is reported as skipped with that reason. Anything else a block raises fails the test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

NO_RUN = re.compile(r"^\s*<!--\s*no-run:\s*(?P<reason>.*?)\s*-->\s*$")
OPEN = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")

# Files whose blocks could not be marked in the change that added this test (being rewritten
# elsewhere at the time): their unmarked python blocks are skipped with this reason. Once each
# of them carries its `<!-- no-run: ... -->`, delete the entry.
UNMARKED_FILES: dict[str, str] = {}  # a file whose blocks are skipped as a whole, with why


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository root
    line: int  # of the first line of code, 1-based
    code: str
    skip: str | None  # why it does not run, or None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """The python blocks of one markdown file (fences of backticks or tildes, indented ones in
    lists too; a fence closes on the same character, at least as long)."""
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = OPEN.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = (opening["info"].split() or [""])[0].lower()
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if language == "python":
            body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:end]]
            marked = NO_RUN.match(lines[i - 1]) if i > 0 else None
            skip = marked["reason"] if marked else UNMARKED_FILES.get(rel)
            found.append(Block(rel, i + 2, "\n".join(body) + "\n", skip))
        i = end + 1
    return found


BLOCKS = [block for path in FILES for block in blocks_of(path)]


def test_the_examples_are_found():
    assert any(block.file == "README.md" and block.skip is None for block in BLOCKS)
    assert sum(block.skip is None for block in BLOCKS) >= 3


def test_every_no_run_mark_sits_on_a_python_fence():
    """A mark that is not on the line before a ```python fence would skip nothing: refuse it."""
    stray = []
    for path in FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not re.search(r"<!--\s*no-run", line):
                continue
            following = OPEN.match(lines[number]) if number < len(lines) else None
            if not (NO_RUN.match(line) and following and following["info"].split()[:1] == ["python"]):
                stray.append(f"{path.relative_to(ROOT).as_posix()}:{number}: {line.strip()}")
    assert not stray, "no-run marks not directly above a ```python fence:\n" + "\n".join(stray)


def test_unmarked_files_still_hold_python_blocks():
    for name in UNMARKED_FILES:
        assert any(block.file == name for block in BLOCKS), f"{name}: no python block left, drop it from UNMARKED_FILES"


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_example_runs(block: Block, tmp_path, monkeypatch):
    if block.skip is not None:
        pytest.skip(f"{block.where}: {block.skip}")
    import torch

    monkeypatch.chdir(tmp_path)  # the files an example writes land here
    torch.manual_seed(0)
    # padded so that a traceback names the markdown file's own line numbers
    code = compile("\n" * (block.line - 1) + block.code, str(ROOT / block.file), "exec")
    exec(code, {"__name__": "__doc_example__"})
