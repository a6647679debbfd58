"""MkDocs hooks for the documentation site (mkdocs.yml: `hooks:`); not a page of the site.

The README is the home page: it is added as `index.md` when the site is built, so it stays
one file, and its links into `docs/` (`docs/training.md#losses`, `docs/images/demo.png`),
written for GitHub from the repository root, are rewritten to point into the site, where
`docs/` is the root.

The pages are written for GitHub (CommonMark), where a list may start right under a line of
text; Python-Markdown needs a blank line first, which every page gets here. (Lists nested by
two spaces are the business of mdx_truly_sane_lists, in mkdocs.yml.)
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

README = Path(__file__).resolve().parent.parent / "README.md"
HOME = "index.md"

# the target of an inline link or image, `](docs/...)`, and of a reference definition, `[x]: docs/...`
_DOCS_LINK = re.compile(r"(\]\(\s*<?|^\s*\[[^\]]+\]:\s*<?)docs/", re.MULTILINE)
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_ITEM = re.compile(r"^\s*([-*+]|1[.)])\s+\S")


def readme_links_into_site(markdown: str) -> str:
    """`docs/X` link targets of the README as the site sees them from its root: `X`."""
    return _DOCS_LINK.sub(r"\1", markdown)


def lists_may_interrupt_paragraphs(markdown: str) -> str:
    """A blank line before a list that starts right under text (not under another item of a
    list, nor inside a fenced block or a `::: identifier` block of mkdocstrings options)."""
    out: list[str] = []
    fence = ""  # the marker of the open fenced block, or ""
    in_list = in_options = False
    previous = ""
    for line in markdown.split("\n"):
        marker = _FENCE.match(line)
        if fence:
            if marker and marker[1][0] == fence[0] and len(marker[1]) >= len(fence) and not line.strip(" `~"):
                fence = ""
        elif marker:
            fence = marker[1]
        elif not line.strip():
            in_list = in_options = False
        elif line.startswith(":::"):
            in_options = True
        elif _ITEM.match(line) and not in_options:
            if not in_list and previous.strip():
                out.append("")
            in_list = True
        out.append(line)
        previous = line
    return "\n".join(out)


def on_files(files: Files, config) -> Files:
    if files.get_file_from_path(HOME) is None:
        files.append(File.generated(config, HOME, abs_src_path=str(README)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == HOME and page.file.abs_src_path == str(README):
        markdown = readme_links_into_site(markdown)
    return lists_may_interrupt_paragraphs(markdown)
