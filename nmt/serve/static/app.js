// The attention explorer: one panel per chosen model, each with its translation (shown as it is decoded, from
// POST /translate/stream, optionally begun with a prefix and holding required phrases), n-best list and
// heatmap, and on demand the gradient attribution of the same translation under it, drawn from POST /translate
// and POST /attention. Plain DOM, no external files (works offline).
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
let models = {};  // name -> GET /models entry
let shown = [];  // the panels on the page, redrawn when the word, EOS or attribution switch changes
const METHODS = {input_x_gradient: "input × gradient", integrated_gradients: "integrated gradients"};

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function post(body) {
  return {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
}

// An error answer ({"error": {"field", "message"}}) as an Error naming the field.
function apiError(data, response) {
  const error = data.error || {};
  return new Error(error.field ? `${error.field}: ${error.message}` : (error.message || response.statusText));
}

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : post(body));
  const data = await response.json();
  if (!response.ok) throw apiError(data, response);
  return data;
}

// The server-sent events of a response body as [name, data] pairs, as they arrive.
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
      const fields = Object.fromEntries(buffer.slice(0, end).split("\n").map((line) => {
        const colon = line.indexOf(":");
        return [line.slice(0, colon), line.slice(colon + 1).trim()];
      }));
      buffer = buffer.slice(end + 2);
      yield [fields.event, JSON.parse(fields.data)];
    }
  }
}

// One translation from POST /translate/stream: `shown` gets the text so far at each token that adds to it; returns
// the `done` event's data (a /translate translation). Where the answer has no body to read (the page inline in a
// notebook answers from embedded data), one POST /translate instead.
async function translateStreaming(request, shown) {
  const response = await fetch("/translate/stream", post(request));
  if (!response.body) return (await api("/translate", request)).translations[0];
  if (!response.ok) throw apiError(await response.json(), response);
  let text = "";
  for await (const [name, data] of serverSentEvents(response.body)) {
    if (name === "token" && data.delta) {
      text += data.delta;
      shown(text);
    } else if (name === "done") return data;
    else if (name === "error") throw apiError(data, response);
  }
  throw new Error("the translation stream ended before its last event");
}

// The prefix and the required phrases (comma- or newline-separated) typed, as request fields.
function steering() {
  const prefix = $("#prefix").value;
  const constraints = $("#constraints").value.split(/[,\n]/).map((phrase) => phrase.trim()).filter(Boolean);
  return {...(prefix.trim() ? {prefix} : {}), ...(constraints.length ? {constraints} : {})};
}

function setStatus(message, isError = false) {
  const status = $("#status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

function fixed(value, digits = 3) {
  return Number(value).toFixed(digits);
}

// A correlation with its sign; null (undefined: a constant row) as a dash.
function signed(value) {
  return value == null ? "–" : (value >= 0 ? "+" : "") + fixed(value);
}

// A heatmap table: rows attend to columns; each of `columns` ([header, class, one text per row]) beside it.
function heatmap(rows, cols, weights, {columns = [], small = false, threshold = 0.1, hover = null} = {}) {
  const table = element("table", {class: "heatmap"});
  const head = element("tr", {}, element("th"));
  cols.forEach((token) => head.append(element("th", {class: "col", text: token})));
  columns.forEach(([header]) => head.append(element("th", {class: "col", text: header})));
  table.append(head);
  rows.forEach((token, i) => {
    const rowHeader = element("th", {class: "row", text: token, title: "click: highlight what it attends to"});
    const row = element("tr", {"data-row": i}, rowHeader);
    weights[i].forEach((weight, j) => {
      const cell = element("td", {
        class: "cell", "data-weight": weight, "data-row": i, "data-col": j,
        title: `${token} → ${cols[j]}: ${fixed(weight, 4)}`,
      });
      cell.style.background = `rgba(33, 102, 172, ${weight})`;
      cell.style.color = weight > 0.6 ? "#fff" : "#000";
      if (!small) cell.textContent = weight >= 0.005 ? fixed(weight, 2).replace(/^0/, "") : "";
      if (hover) cell.addEventListener("mouseenter", () => hover(`${token} → ${cols[j]}: ${fixed(weight, 4)}`));
      row.append(cell);
    });
    columns.forEach(([, cls, texts]) => row.append(element("td", {class: `stat ${cls}`, text: texts[i]})));
    rowHeader.addEventListener("click", () => highlight(table, i, threshold));
    table.append(row);
  });
  return table;
}

// Outline the cells of row `i` above the threshold and mark their column headers; a second click clears.
function highlight(table, i, threshold) {
  const already = table.querySelector(`tr[data-row="${i}"] th.row.selected`);
  table.querySelectorAll(".hl, th.selected").forEach((node) => node.classList.remove("hl", "selected"));
  if (already) return;
  table.querySelector(`tr[data-row="${i}"] th.row`).classList.add("selected");
  const headers = table.querySelectorAll("tr:first-child th.col");
  table.querySelectorAll(`td.cell[data-row="${i}"]`).forEach((cell) => {
    if (Number(cell.dataset.weight) > threshold) {
      cell.classList.add("hl");
      headers[Number(cell.dataset.col)].classList.add("hl");
    }
  });
}

function selector(label, cls, options, value) {
  const select = element("select", {class: cls});
  for (const [optionValue, text] of options) {
    const option = element("option", {value: optionValue, text});
    if (String(optionValue) === String(value)) option.selected = true;
    select.append(option);
  }
  return [element("label", {}, `${label} `, select), select];
}

// One model's panel: translation (growing as it is decoded), n-best, then the attention view for its kind /
// layer / head selection.
class Panel {
  constructor(name) {
    this.info = models[name];
    this.node = element("section", {class: "panel", "data-model": name});
    this.choice = {kind: "cross", layer: this.info.kinds.cross, head: null};
  }

  async show(text, beam, threshold, steered, format = "text") {
    if (format === "html") return this.showMarkup(text, beam, threshold);
    this.markup = null;
    this.text = text;
    this.beam = beam;
    this.threshold = threshold;
    const info = this.info;
    const bleu = info.dev_bleu == null ? "" : `, dev BLEU ${fixed(info.dev_bleu, 2)}`;
    this.node.replaceChildren(
      element("h2", {text: info.name}),
      element("div", {class: "meta", text: `${info.architecture}, ${info.src_lang} → ${info.tgt_lang}, ` +
        `${info.parameters.toLocaleString()} parameters${bleu}`}),
    );
    const request = {text, model: info.name, beam_size: beam, ...steered};
    const translation = element("div", {class: "translation"});
    const list = element("ol", {class: "nbest"});
    this.attentionNode = element("div", {class: "attention"});
    this.node.append(translation,
      element("details", {open: ""}, element("summary", {text: `n-best (beam ${beam}), score = log p / length penalty`}), list),
      this.attentionNode);
    const found = await translateStreaming(request, (sofar) => { translation.textContent = sofar; });
    this.translation = found.text;
    translation.textContent = found.text;
    if (found.missing.length) translation.after(element("div", {class: "meta missing",
      text: `lacks ${found.missing.join(", ")}: no room in the length limit, or an n-gram ban`}));
    await Promise.all([this.listBest(request, list), this.drawAttention()]);
  }

  // An HTML fragment: translated as a document (POST /translate, format html), its markup shown as text, and
  // the attention of its text drawn over words with each tag's words marked on both sides.
  async showMarkup(markup, beam, threshold) {
    const info = this.info;
    const found = (await api("/translate", {text: markup, model: info.name, beam_size: beam, format: "html"}))
      .translations[0];
    this.markup = {source: tagSpans(markup), target: tagSpans(found.text)};
    this.text = this.markup.source.text;
    this.translation = this.markup.target.text;
    this.beam = beam;
    this.threshold = threshold;
    this.attentionNode = element("div", {class: "attention"});
    this.node.replaceChildren(element("h2", {text: info.name}),
      element("div", {class: "meta", text: `${info.architecture}, ${info.src_lang} → ${info.tgt_lang}, tags ` +
        "placed by word alignment"}),
      element("pre", {class: "translation markup", text: found.text}), this.attentionNode);
    await this.drawAttention();
  }

  async listBest(request, list) {
    const found = (await api("/translate", {...request, n_best: Math.min(this.beam, 5)})).translations[0];
    found.hypotheses.forEach((h) => list.append(
      element("li", {}, element("span", {class: "score", text: fixed(h.score)}), element("span", {class: "hyp", text: h.text}))));
  }

  selectors() {
    // Only the choices the model has (its description: attention kinds and the layers of each, heads) are offered.
    const bar = element("div", {class: "selectors"});
    const info = this.info;
    const names = {cross: "cross (target → source)", encoder: "encoder self", decoder: "decoder self"};
    const kinds = Object.keys(info.kinds);
    const [kindLabel, kind] = selector("Attention", "kind-select", kinds.map((k) => [k, names[k] || k]),
      this.choice.kind);
    const count = info.kinds[this.choice.kind];
    const layers = Array.from({length: count}, (_, i) => [i + 1, `layer ${i + 1}`]);
    const [layerLabel, layer] = selector("Layer", "layer-select", layers, this.choice.layer);
    const heads = [["", "all heads (grid)"], ...Array.from({length: info.heads}, (_, i) => [i + 1, `head ${i + 1}`])];
    const [headLabel, head] = selector("Head", "head-select", heads, this.choice.head ?? "");
    const redraw = () => {
      // another kind starts at its own last layer: the kinds may have different numbers of layers
      const changed = kind.value !== this.choice.kind;
      this.choice = {kind: kind.value, layer: changed ? info.kinds[kind.value] : Number(layer.value),
                     head: head.value ? Number(head.value) : null};
      this.drawAttention().catch((err) => setStatus(err.message, true));
    };
    [kind, layer, head].forEach((select) => select.addEventListener("change", redraw));
    const offered = [[kinds.length > 1, kindLabel], [count > 1, layerLabel], [info.heads > 1, headLabel]];
    bar.append(...offered.filter(([shown]) => shown).map(([, label]) => label));
    return bar;
  }

  async drawAttention() {
    const request = {text: this.text, model: this.info.name, beam_size: this.beam, threshold: this.threshold,
                     words: $("#words").checked || this.markup !== null, eos: $("#eos").checked, ...this.choice};
    const method = $("#attribution").value;
    if (method && this.choice.kind === "cross") request.attribution = method;
    const view = await api("/attention", request);
    this.view = view;
    const hoverLine = element("div", {class: "hover", text: " "});
    const hover = (message) => { hoverLine.textContent = message; };
    const what = view.head ? `head ${view.head}` : (view.panels.length > 1 ? "heads averaged" : "");
    const unit = (view.words ? "words" : "subwords") + (view.eos ? "" : ", no EOS");
    const layer = this.info.kinds[view.kind] > 1 ? `, layer ${view.layer}` : "";
    const where = `${view.kind} attention${layer}${what ? `, ${what}` : ""} (${unit})`;
    const [entropy, std] = view.summary.entropy;
    const map = heatmap(view.row_tokens, view.col_tokens, view.weights, {threshold: this.threshold, hover, columns: [
      ["entropy", "entropy", view.entropy.map((e) => fixed(e))],
      ["max", "max-weight", view.max_weight.map((m) => fixed(m))]]});
    const legend = this.markup ? markTags(map, this.markup.source, this.markup.target) : [];
    const children = [this.selectors(),
      element("div", {class: "meta", text: `${where}: mean entropy ${fixed(entropy)} ± ${fixed(std)} nats, ` +
        `mean max weight ${fixed(view.summary.max_weight[0])}`}),
      ...(view.translation === this.translation ? [] : [element("div", {class: "meta unsteered",
        text: `of the translation without the prefix and phrases: ${view.translation}`})]),
      ...legend, map, hoverLine];
    if (view.attribution) children.push(this.attribution(view, hover));
    else if (method) children.push(element("div", {class: "meta", text: "Attribution is over the source tokens: " +
      "choose the cross attention to see it."}));
    if (view.panels.length > 1) {
      const grid = element("div", {class: "grid"});
      view.panels.forEach((panel) => grid.append(element("figure", {},
        element("figcaption", {text: panel.caption}),
        heatmap(view.row_tokens, view.col_tokens, panel.weights, {small: true, threshold: this.threshold, hover}))));
      children.push(element("h3", {text: `every head of layer ${view.layer}`}), grid);
    }
    if (view.heads.length > 1) {
      const table = element("table", {class: "heads-table"},
        element("tr", {}, ...["layer", "head", "entropy", "max weight"].map((h) => element("th", {text: h}))));
      view.heads.forEach((h) => table.append(element("tr", {}, element("td", {text: h.layer}),
        element("td", {text: h.head}), element("td", {text: fixed(h.entropy)}), element("td", {text: fixed(h.max_weight)}))));
      children.push(element("details", {}, element("summary", {text: `${view.kind} attention statistics of every head`}), table));
    }
    this.attentionNode.replaceChildren(...children);
  }

  // The gradient attribution of the same translation, shaped as the attention map, with the rank correlation
  // (Spearman) of each of its rows with the attention's.
  attribution(view, hover) {
    const found = view.attribution;
    const caption = `${METHODS[found.method]} attribution: each target token's gradient relevance over the ` +
      `source tokens (rows sum to 1); mean Spearman with the attention above ${signed(found.mean_spearman)}`;
    return element("div", {class: "attribution"}, element("div", {class: "meta caption", text: caption}),
      heatmap(view.row_tokens, view.col_tokens, found.weights, {threshold: this.threshold, hover, columns: [
        ["Spearman", "spearman", found.spearman.map(signed)]]}));
  }
}

// An HTML fragment's text (tags out, whitespace collapsed) and its elements in document order, each with the
// whitespace-separated words it encloses and a key that finds the same tag in a translation (its start tag and
// how many times that start tag came before). The browser's own parser reads it; nothing is inserted.
function tagSpans(markup) {
  const body = new DOMParser().parseFromString(markup, "text/html").body;
  let text = "";
  const tags = [];
  const seen = {};
  const walk = (node) => {
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) text += child.textContent;
      if (child.nodeType !== Node.ELEMENT_NODE) continue;
      const open = child.outerHTML.slice(0, child.outerHTML.indexOf(">") + 1);
      seen[open] = (seen[open] || 0) + 1;
      const tag = {key: `${open}#${seen[open]}`, open, start: text.length};
      tags.push(tag);
      walk(child);
      tag.end = text.length;
    }
  };
  walk(body);
  const words = [...text.matchAll(/\S+/g)].map((m) => [m.index, m.index + m[0].length]);
  for (const tag of tags) {
    tag.words = words.flatMap(([a, b], k) => (a < tag.end && b > tag.start ? [k] : []));
  }
  return {text: words.map(([a, b]) => text.slice(a, b)).join(" "), tags};
}

const TAG_COLOURS = ["#e6550d", "#31a354", "#756bb1", "#d6616b", "#3182bd", "#8c6d31"];

// Underline, in one colour per tag, the source words (columns) and target words (rows) each tag encloses;
// returns the legend to show above the map.
function markTags(table, source, target) {
  const cols = [...table.querySelectorAll("tr:first-child th.col")];
  const rows = [...table.querySelectorAll("th.row")];
  const legend = element("div", {class: "meta tags"});
  source.tags.forEach((tag, n) => {
    const colour = TAG_COLOURS[n % TAG_COLOURS.length];
    const placed = target.tags.find((other) => other.key === tag.key);
    const mark = (header, side) => {
      if (!header) return;
      header.classList.add("tagged", `tag-${n}`);
      header.style.boxShadow = `inset 0 -3px 0 ${colour}`;
      header.title = `${header.title ? `${header.title}; ` : ""}${side} ${tag.open}`;
    };
    tag.words.forEach((k) => mark(cols[k], "inside"));
    (placed ? placed.words : []).forEach((k) => mark(rows[k], "placed in"));
    const say = (side, found) => found.words.map((w) => side.text.split(" ")[w]).join(" ");
    legend.append(element("span", {class: "tag-key", style: `border-bottom: 3px solid ${colour}`,
      text: `${tag.open} ${say(source, tag)} → ${placed ? say(target, placed) || "(empty)" : "(not placed)"}`}));
  });
  return [legend];
}

// The text with its first word in <b> and its last in <i>: an HTML example in any source language.
function markupExample() {
  const words = $("#text").value.trim().split(/\s+/).filter(Boolean);
  if (!words.length) {
    setStatus("type a sentence first: the example wraps its first and last words in tags", true);
    return;
  }
  const escape = (word) => word.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  const wrapped = words.map(escape);
  wrapped[0] = `<b>${wrapped[0]}</b>`;
  if (wrapped.length > 1) wrapped[wrapped.length - 1] = `<i>${wrapped[wrapped.length - 1]}</i>`;
  $("#text").value = wrapped.join(" ");
  $("#format").value = "html";
  $("#query").requestSubmit();
}

async function translate(event) {
  event.preventDefault();
  const text = $("#text").value;
  const beam = Number($("#beam").value) || 1;
  const threshold = Number($("#threshold").value);
  const names = [$("#model-a").value, $("#model-b").value].filter((name, i, all) => name && all.indexOf(name) === i);
  setStatus("translating…");
  const panels = names.map((name) => new Panel(name));
  shown = panels;
  $("#panels").replaceChildren(...panels.map((panel) => panel.node));
  try {
    const started = performance.now();
    const steered = steering();
    const format = $("#format").value;
    await Promise.all(panels.map((panel) => panel.show(text, beam, threshold, steered, format)));
    setStatus(`done in ${Math.round(performance.now() - started)} ms`);
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function start() {
  try {
    const found = await api("/models");
    models = Object.fromEntries(found.map((m) => [m.name, m]));
    for (const m of found) {
      const label = `${m.name} (${m.architecture})`;
      $("#model-a").append(element("option", {value: m.name, text: label}));
      $("#model-b").append(element("option", {value: m.name, text: label}));
    }
    $("#beam").value = found[0].beam_size;
    setStatus(`${found.length} model${found.length > 1 ? "s" : ""} served`);
  } catch (err) {
    setStatus(`cannot list the models: ${err.message}`, true);
  }
  $("#query").addEventListener("submit", translate);
  $("#markup-example").addEventListener("click", markupExample);
  const redraw = (busy = "") => {
    setStatus(busy);
    return Promise.all(shown.map((panel) => panel.drawAttention()))
      .then(() => setStatus(""), (err) => setStatus(err.message, true));
  };
  $("#words").addEventListener("change", () => redraw());
  $("#eos").addEventListener("change", () => redraw());
  $("#attribution").addEventListener("change", () => redraw(shown.length ? "computing the attribution…" : ""));
}

start();
