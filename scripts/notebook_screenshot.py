"""The README's picture of the attention view inline in Jupyter (docs/images/notebook_attention.png): a run's
`run.attention(text)` view, its `_repr_html_()` (the explorer page in an iframe) under a notebook-like input
cell, drawn by headless chromium (Debian's /usr/bin/chromium, driven by Playwright) and screenshotted once the
heatmap is drawn. The README's picture (the model: 870 steps in 25 minutes on one thread, dev BLEU 35.36):

    NMT_DATA_MIRROR=../shared/data nmt train --config configs/multi30k_deen_transformer.yaml \\
        --set training.max_minutes=25 --set training.threads=1
    python scripts/notebook_screenshot.py runs/multi30k_deen_transformer "Zwei Hunde spielen im Schnee." \\
        docs/images/notebook_attention.png
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import tempfile
import time
from pathlib import Path

import nmt

CELL = """<!doctype html>
<html><head><meta charset="utf-8"><style>
body {{ margin: 0; padding: 12px 8px; background: #fff; font-family: sans-serif; }}
.cell {{ display: flex; gap: 8px; }}
.prompt {{ width: 40px; flex: none; text-align: right; color: #303f9f; font: 14px monospace; padding-top: 8px; }}
.input {{ flex: 1; background: #f5f5f5; border: 1px solid #e0e0e0; padding: 8px; margin: 0;
          font: 13px monospace; white-space: pre; }}
.output {{ flex: 1; padding-top: 10px; }}
</style></head><body>
<div class="cell"><div class="prompt">[{count}]:</div><pre class="input">{code}</pre></div>
<div class="cell" id="output"><div class="prompt"></div><div class="output">{view}</div></div>
</body></html>
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory (what nmt.load takes)")
    parser.add_argument("text", help="the source sentence")
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1100, help="viewport width in CSS pixels (default 1100)")
    parser.add_argument("--max-height", type=int, default=1250,
                        help="crop the picture to this many pixels (default 1250; 0: the whole cell)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium",
                        help="the chromium executable (default: chromium on PATH)")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    view = nmt.load(args.run).attention(args.text)
    code = f"view = run.attention({json.dumps(args.text, ensure_ascii=False)})\nview"
    page_html = CELL.format(count=4, code=html.escape(code), view=view._repr_html_())
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as p:
        path = Path(folder) / "cell.html"
        path.write_text(page_html, encoding="utf-8")
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": args.width, "height": 800})
        page.goto(path.as_uri())
        frame = page.frame_locator("iframe")
        frame.locator(".attention > table.heatmap td.cell").first.wait_for()
        settle(page)
        cell = page.locator("body").bounding_box()
        height = cell["height"] if args.max_height <= 0 else min(cell["height"], args.max_height)
        page.screenshot(path=str(args.output), full_page=True,
                        clip={"x": 0, "y": 0, "width": args.width, "height": height})
        browser.close()
    print(f"{args.output}: {view.translation}")


def settle(page, quiet: float = 0.5, limit: float = 10.0) -> None:
    """Wait until the iframe's height (which follows its page's content) stops changing."""
    last, since, start = None, time.monotonic(), time.monotonic()
    while time.monotonic() - start < limit:
        height = page.eval_on_selector("iframe", "f => f.style.height")
        if height != last:
            last, since = height, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)


if __name__ == "__main__":
    main()
