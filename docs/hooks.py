"""mkdocs hook: a page whose line is `--8<-- "README.md"` is that file of the repository root, whole, so the
guide is the README itself; its links to docs/images/ and to the other root files point at the site's pages."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = {"README.md": "index.md", "RELIABILITY.md": "reliability.md", "BENCHMARKS.md": "benchmarks.md"}


def _include(match: re.Match) -> str:
    text = (ROOT / match.group(1)).read_text(encoding="utf-8")
    text = text.replace("](docs/images/", "](images/")
    return re.sub(r"\]\((README|RELIABILITY|BENCHMARKS)\.md(#[^)]*)?\)",
                  lambda m: f"]({PAGES[m.group(1) + '.md']}{m.group(2) or ''})", text)


def on_page_markdown(markdown: str, **_: object) -> str:
    return re.sub(r'^--8<-- "([A-Z]+\.md)"$', _include, markdown, flags=re.M)
