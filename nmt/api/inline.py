"""The attention explorer page (nmt/serve/static) inline in a notebook: the page's own HTML, CSS and script,
answered from data embedded in the output instead of the server, inside an iframe so that several views in
one notebook keep their element ids and globals apart. Hover, row highlighting and the kind, layer and head
choice are the page's own code: nothing of its rendering is copied here."""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nmt.api.views import AttentionMap, AttentionView, KindMaps

PAGE_LINKS = ('<link rel="stylesheet" href="/static/app.css">', '<script src="/static/app.js"></script>')
"""What the page loads from the server; replaced by the files' contents."""

# The page's API calls, answered from DATA: GET /models, POST /translate, POST /attention.
SHIM = """
const DATA = JSON.parse(document.getElementById("nmt-data").textContent);
function answer(path, request) {
  if (path === "/models") return [DATA.model];
  if (path === "/translate") return DATA.translate;
  const kind = DATA.kinds[request.kind || "cross"];
  if (!kind) return {error: {field: "kind", message: `call run.attention(text, kind="${request.kind}") for it`}};
  const layer = kind.layers.find((l) => l.layer === (request.layer ?? kind.layers.at(-1).layer));
  const map = request.head ? layer.heads[request.head - 1] : layer.average;
  const panels = request.head ? [map] : (layer.heads.length ? layer.heads : [layer.average]);
  return {model: DATA.model.name, source: DATA.source, translation: DATA.translation, kind: kind.kind,
          layer: layer.layer, head: request.head || null, row_tokens: kind.row_tokens, col_tokens: kind.col_tokens,
          weights: map.weights, entropy: map.entropy, max_weight: map.max_weight,
          above_threshold: map.above_threshold, threshold: DATA.threshold, summary: map.summary,
          words: DATA.words, eos: DATA.eos,
          panels: panels.map((p) => ({caption: `${kind.kind} ${p.caption}`, weights: p.weights})),
          heads: kind.heads};
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


def _map(found: AttentionMap) -> dict[str, Any]:
    return {"caption": found.caption, "weights": found.weights.tolist(), "entropy": found.entropy.tolist(),
            "max_weight": found.max_weight.tolist(), "above_threshold": found.above_threshold.tolist(),
            "summary": found.summary()}


def _kind(maps: KindMaps) -> dict[str, Any]:
    heads = [{"layer": m.layer, "head": m.head, "entropy": float(m.entropy.mean()),
              "max_weight": float(m.max_weight.mean())} for layer in maps.heads for m in layer]
    return {"kind": maps.kind, "row_tokens": maps.row_tokens, "col_tokens": maps.col_tokens, "heads": heads,
            "layers": [{"layer": average.layer, "average": _map(average), "heads": [_map(m) for m in heads]}
                       for average, heads in zip(maps.averages, maps.heads, strict=True)]}


def page_data(view: AttentionView, model: dict[str, Any], translate: dict[str, Any]) -> dict[str, Any]:
    """What the page would fetch: the model's description, the translation, and every map of every kind
    (one kind for an RNN)."""
    kinds = [view.kind] + ([k for k in ("cross", "encoder", "decoder") if k != view.kind]
                           if view.all_maps.averages[0].layer is not None else [])
    return {"model": model, "translate": translate, "source": view.source, "translation": view.translation,
            "threshold": view.threshold, "words": view.words, "eos": view.eos,
            "kinds": {k: _kind(view.all_maps if k == view.kind else view.kinds(k)) for k in kinds}}


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
