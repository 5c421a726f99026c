"""mkdocs hooks. A page whose line is `--8<-- "README.md"` is that file of the repository root, whole, so the guide
is the README itself; its links to docs/images/ and to the other root files point at the site's pages. The executed
notebooks (build/notebooks/, written by `make notebooks`) are rendered to HTML pages under notebooks/."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
PAGES = {"README.md": "index.md", "RELIABILITY.md": "reliability.md", "BENCHMARKS.md": "benchmarks.md"}
EXECUTED = ROOT / "build" / "notebooks"


def _include(match: re.Match) -> str:
    text = (ROOT / match.group(1)).read_text(encoding="utf-8")
    text = text.replace("](docs/images/", "](images/")
    return re.sub(r"\]\((README|RELIABILITY|BENCHMARKS)\.md(#[^)]*)?\)",
                  lambda m: f"]({PAGES[m.group(1) + '.md']}{m.group(2) or ''})", text)


def on_page_markdown(markdown: str, **_: object) -> str:
    return re.sub(r'^--8<-- "([A-Z]+\.md)"$', _include, markdown, flags=re.M)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Each notebook's executed copy as notebooks/NAME.html (nbconvert's JupyterLab template, outputs included);
    a notebook never executed fails the build, naming the command that executes it."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    for source in sorted((ROOT / "notebooks").glob("*.ipynb")):
        executed = EXECUTED / source.name
        if not executed.is_file():
            raise PluginError(f"{executed.relative_to(ROOT)} is missing: `make notebooks` executes the notebooks "
                              "(`make docs` does it first)")
        body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
        files.append(File.generated(config, f"notebooks/{source.stem}.html", content=body))
    return files
