"""The attention explorer page (nmt/serve/static) inline in a notebook: the page's own HTML, CSS and script,
answered from data embedded in the output instead of the server, inside an iframe so that several views in
one notebook keep their element ids and globals apart. Hover, row highlighting and the kind, layer and head
choice are the page's own code: nothing of its rendering is copied here, and the answers to its requests are
made by the server's own `attention_response`, so the JSON the page reads has one producer."""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

from nmt.serve.service import attention_response

if TYPE_CHECKING:
    from nmt.api.views import AttentionView, KindMaps

PAGE_LINKS = ('<link rel="stylesheet" href="/static/app.css">', '<script src="/static/app.js"></script>')
"""What the page loads from the server; replaced by the files' contents."""

# The page's API calls, answered from DATA: GET /models, POST /translate, POST /attention (each kind's answers
# per layer: the heads averaged, then each head, as the server gives them).
SHIM = """
const DATA = JSON.parse(document.getElementById("nmt-data").textContent);
function answer(path, request) {
  if (path === "/models") return [DATA.model];
  if (path === "/translate") return DATA.translate;
  const layers = DATA.attention[request.kind || "cross"];
  if (!layers) return {error: {field: "kind", message: `call run.attention(text, kind="${request.kind}") for it`}};
  return layers[(request.layer ?? layers.length) - 1][request.head || 0];
}
window.fetch = async (path, options = {}) => {
  const found = answer(path, options.body ? JSON.parse(options.body) : {});
  return {ok: !found.error, statusText: "", json: async () => found};
};
"""

START = """
document.getElementById("text").value = DATA.source;
setTimeout(() => document.getElementById("query").requestSubmit(), 0);
new ResizeObserver(() => {
  if (window.frameElement) window.frameElement.style.height = `${document.body.scrollHeight + 24}px`;
}).observe(document.body);
"""

HIDDEN = "header, form { display: none; } body { margin: 0.5rem; }"


def _answers(model: str, maps: KindMaps) -> list[list[dict[str, Any]]]:
    """What POST /attention answers for each layer of one kind: the heads averaged, then each head."""
    return [[attention_response(model, view), *(attention_response(model, view.with_head(h + 1))
                                                for h in range(len(view.panels)))] for view in maps.views]


def page_data(view: AttentionView, model: dict[str, Any], translate: dict[str, Any]) -> dict[str, Any]:
    """What the page would fetch: the model's description, the translation, and the answer for every layer and
    head of every kind the model has (`model["kinds"]`)."""
    kinds = {view.kind: view.all_maps, **{k: view.kinds(k) for k in model["kinds"] if k != view.kind}}
    return {"model": model, "translate": translate, "source": view.source,
            "attention": {k: _answers(model["name"], maps) for k, maps in kinds.items()}}


def explorer_html(data: dict[str, Any]) -> str:
    """The explorer page answering from `data`, in an iframe (self-contained: no network, no files)."""
    static = resources.files("nmt.serve") / "static"
    page = (static / "index.html").read_text(encoding="utf-8")
    if not all(link in page for link in PAGE_LINKS):
        raise RuntimeError("nmt/serve/static/index.html no longer links app.css and app.js as the inline view expects")
    embedded = json.dumps(data, ensure_ascii=False, default=_plain)  # inside <script>: no markup characters
    embedded = embedded.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    page = page.replace(PAGE_LINKS[0], f"<style>{(static / 'app.css').read_text(encoding='utf-8')}\n{HIDDEN}</style>")
    page = page.replace(PAGE_LINKS[1], f'<script type="application/json" id="nmt-data">{embedded}</script>'
                                       f"<script>{SHIM}</script><script>{(static / 'app.js').read_text('utf-8')}"
                                       f"</script><script>{START}</script>")
    return (f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width: 100%; height: 480px; border: 0" '
            f'title="attention: {html.escape(str(data["source"]))}"></iframe>')


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
