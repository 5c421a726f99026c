"""The attention explorer page in a real browser: Debian's chromium driven by Playwright against a real
`nmt serve` process on 127.0.0.1 (the translation streamed as it is decoded, steered by a prefix and phrases),
and inline as a notebook shows it. Skipped, with the reason, where chromium or Playwright is missing (CI
installs chromium first: .ci/run)."""

from __future__ import annotations

import html
import http.client
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from toy import reverse_words

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from serve_bench import free_port, start_server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")]


def post(port: int, path: str, body: dict) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return json.loads(connection.getresponse().read())


@pytest.fixture(scope="module")
def server(trained_run, trained_transformer, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("page") / "server.log"
    process = start_server([Path(f"transformer={trained_transformer}"), Path(f"rnn={trained_run}")], port, [], log)
    yield port
    process.terminate()
    process.wait(timeout=30)


def cell_weights(page, panel: str, table: str = ".attention > table.heatmap") -> list[float]:
    return page.eval_on_selector_all(f"{panel} {table} td.cell", "cells => cells.map(c => Number(c.dataset.weight))")


def signed(value: float | None) -> str:
    """A correlation as the page shows it."""
    return "–" if value is None else f"{value:+.3f}"


def open_page(p, port: int):
    """Chromium on the served page, both models listed, "ab ca de" typed and beam 3 set: (browser, page)."""
    browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_function("document.querySelectorAll('#model-a option').length == 2")
    page.fill("#text", "ab ca de")
    page.fill("#beam", "3")
    return browser, page


def test_the_page_translates_draws_attention_and_switches_heads_and_models(server, tmp_path):
    port = server
    with playwright.sync_playwright() as p:
        browser, page = open_page(p, port)
        page.click("#translate")
        transformer = ".panel[data-model=transformer]"
        page.wait_for_selector(f"{transformer} .attention > table.heatmap td.cell")

        expected = post(port, "/attention", {"text": "ab ca de", "model": "transformer", "beam_size": 3})
        assert page.inner_text(f"{transformer} .translation") == expected["translation"] == reverse_words("ab ca de")
        assert cell_weights(page, transformer) == pytest.approx(sum(expected["weights"], []), abs=1e-6)
        shown_entropy = page.eval_on_selector_all(f"{transformer} .attention > table.heatmap td.entropy",
                                                  "cells => cells.map(c => c.textContent)")
        assert shown_entropy == [f"{e:.3f}" for e in expected["entropy"]]
        assert page.locator(f"{transformer} .grid figure").count() == 4  # every head of the last layer
        assert page.locator(f"{transformer} .nbest li").count() == 3

        page.select_option(f"{transformer} .layer-select", "1")
        page.wait_for_selector(f"{transformer} .attention .meta:has-text('layer 1')")
        page.select_option(f"{transformer} .head-select", "2")
        page.wait_for_selector(f"{transformer} .attention .meta:has-text('head 2')")
        head = post(port, "/attention", {"text": "ab ca de", "model": "transformer", "beam_size": 3, "layer": 1,
                                         "head": 2})
        assert cell_weights(page, transformer) == pytest.approx(sum(head["weights"], []), abs=1e-6)

        first = page.locator(f"{transformer} .attention > table.heatmap td.cell").first
        first.hover()
        hover = page.inner_text(f"{transformer} .hover")
        assert f"{head['row_tokens'][0]} → {head['col_tokens'][0]}" in hover and f"{head['weights'][0][0]:.4f}" in hover
        page.locator(f"{transformer} .attention > table.heatmap th.row").first.click()
        above = sum(w > 0.1 for w in head["weights"][0])
        assert page.locator(f"{transformer} .attention > table.heatmap td.cell.hl").count() == above
        assert page.locator(f"{transformer} .attention > table.heatmap th.col.hl").count() == above

        page.check("#words")  # redraws the panel: words, then EOS left out, as POST /attention gives them
        page.wait_for_selector(f"{transformer} .attention .meta:has-text('(words)')")
        words = post(port, "/attention", {"text": "ab ca de", "model": "transformer", "beam_size": 3, "layer": 1,
                                          "head": 2, "words": True})
        assert cell_weights(page, transformer) == pytest.approx(sum(words["weights"], []), abs=1e-6)
        page.uncheck("#eos")
        page.wait_for_selector(f"{transformer} .attention .meta:has-text('(words, no EOS)')")
        no_eos = post(port, "/attention", {"text": "ab ca de", "model": "transformer", "beam_size": 3, "layer": 1,
                                           "head": 2, "words": True, "eos": False})
        assert cell_weights(page, transformer) == pytest.approx(sum(no_eos["weights"], []), abs=1e-6)
        headers = page.eval_on_selector_all(f"{transformer} .attention > table.heatmap th.col",
                                            "cells => cells.map(c => c.textContent)")
        assert headers == [*no_eos["col_tokens"], "entropy", "max"] and "</s>" not in headers
        shown_entropy = page.eval_on_selector_all(f"{transformer} .attention > table.heatmap td.entropy",
                                                  "cells => cells.map(c => c.textContent)")
        assert shown_entropy == [f"{e:.3f}" for e in no_eos["entropy"]]
        page.check("#eos")
        page.uncheck("#words")
        page.wait_for_selector(f"{transformer} .attention .meta:has-text('(subwords)')")

        page.select_option("#model-b", "rnn")
        page.click("#translate")
        rnn = ".panel[data-model=rnn]"
        page.wait_for_selector(f"{rnn} .attention > table.heatmap td.cell")
        expected_rnn = post(port, "/attention", {"text": "ab ca de", "model": "rnn", "beam_size": 3})
        assert page.inner_text(f"{rnn} .translation") == expected_rnn["translation"]
        assert cell_weights(page, rnn) == pytest.approx(sum(expected_rnn["weights"], []), abs=1e-6)
        assert page.locator(f"{rnn} .head-select").count() == 0  # an RNN has one map
        assert "error" not in (page.get_attribute("#status", "class") or "")
        shot = page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        assert len(shot) > 20_000
        browser.close()


def test_the_page_draws_the_attribution_under_the_attention_with_its_spearman(server):
    port = server
    with playwright.sync_playwright() as p:
        browser, page = open_page(p, port)
        page.select_option("#attribution", "input_x_gradient")
        page.click("#translate")
        transformer = ".panel[data-model=transformer]"
        attribution = f"{transformer} .attention > .attribution"
        page.wait_for_selector(f"{attribution} table.heatmap td.cell", timeout=120_000)  # the child starts first

        expected = post(port, "/attention", {"text": "ab ca de", "model": "transformer", "beam_size": 3,
                                             "attribution": "input_x_gradient"})
        explained = expected["attribution"]
        assert cell_weights(page, transformer) == pytest.approx(sum(expected["weights"], []), abs=1e-6)
        assert cell_weights(page, transformer, ".attribution table.heatmap") == pytest.approx(
            sum(explained["weights"], []), abs=1e-6)
        caption = page.inner_text(f"{attribution} .caption")
        assert "input × gradient attribution" in caption and signed(explained["mean_spearman"]) in caption
        shown = page.eval_on_selector_all(f"{attribution} td.spearman", "cells => cells.map(c => c.textContent)")
        assert shown == [signed(r) for r in explained["spearman"]]

        page.select_option(f"{transformer} .kind-select", "encoder")  # attribution is over the source only
        page.wait_for_selector(f"{transformer} .attention .meta:has-text('Attribution is over the source tokens')")
        assert page.locator(attribution).count() == 0
        page.select_option(f"{transformer} .kind-select", "cross")
        page.wait_for_selector(f"{attribution} table.heatmap")
        page.select_option("#attribution", "")
        page.wait_for_selector(attribution, state="detached")
        assert "error" not in (page.get_attribute("#status", "class") or "")
        browser.close()


RECORD_TRANSLATIONS = """() => {
  window.shownTranslations = [];
  new MutationObserver((records) => records.forEach((record) => {
    if (record.target.matches?.(".panel[data-model=transformer] .translation")) {
      record.addedNodes.forEach((node) => window.shownTranslations.push(node.textContent));
    }
  })).observe(document.querySelector("#panels"), {childList: true, subtree: true});
}"""
"""Records every text the transformer panel's translation shows (each a text node added in its turn)."""


def test_the_page_shows_the_translation_growing_as_it_is_streamed_with_its_prefix_and_phrases(server):
    port = server
    text, prefix, phrases = "ab ca de fo gu", "GU", ["PA", "MI"]
    with playwright.sync_playwright() as p:
        browser, page = open_page(p, port)
        page.fill("#text", text)
        page.fill("#beam", "1")  # greedy: every token is final as soon as it is decoded
        page.fill("#prefix", prefix)
        page.fill("#constraints", ", ".join(phrases))
        page.evaluate(RECORD_TRANSLATIONS)
        page.click("#translate")
        transformer = ".panel[data-model=transformer]"
        page.wait_for_selector(f"{transformer} .nbest li")
        page.wait_for_selector(f"{transformer} .attention > table.heatmap td.cell")

        expected = post(port, "/translate", {"text": text, "model": "transformer", "beam_size": 1,
                                             "prefix": prefix, "constraints": phrases})["translations"][0]
        final = page.inner_text(f"{transformer} .translation")
        assert final == expected["text"] and final.startswith(prefix) and all(p in final for p in phrases)
        assert page.inner_text(f"{transformer} .nbest li .hyp") == final
        states = page.evaluate("window.shownTranslations")
        assert states[-1] == final and len(set(states)) > 2, states  # shown growing, token by token
        assert all(final.startswith(state) for state in states)
        unsteered = post(port, "/attention", {"text": text, "model": "transformer", "beam_size": 1})["translation"]
        assert unsteered != final  # the attention drawn is of the plain translation, and says so
        assert unsteered in page.inner_text(f"{transformer} .attention .unsteered")
        assert "error" not in (page.get_attribute("#status", "class") or "")
        browser.close()


def test_the_page_inline_in_a_notebook_translates_from_its_embedded_data(trained_transformer):
    """Without a server the page cannot stream: it answers from the data embedded (nmt.api.inline)."""
    import nmt

    view = nmt.load(trained_transformer).attention("ab ca de")
    srcdoc = html.unescape(re.search(r'srcdoc="([^"]*)"', view._repr_html_()).group(1))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.set_content(srcdoc)
        page.wait_for_selector(".attention > table.heatmap td.cell")
        assert page.inner_text(".panel .translation") == reverse_words("ab ca de")
        assert page.locator(".panel .attention .unsteered").count() == 0
        assert "error" not in (page.get_attribute("#status", "class") or "")
        browser.close()


def words_inside(markup: str) -> dict[str, list[str]]:
    """Each inline tag of a flat HTML translation (no nesting) and the words it encloses: {"<b>": ["AB"], ...}."""
    return {f"<{name}>": inner.split() for name, inner in re.findall(r"<(\w+)>(.*?)</\1>", markup)}


def test_the_page_translates_markup_and_marks_each_tags_words_on_the_heatmap(server):
    """The markup example wraps the first and last words in tags. The page must show the server's placement of
    each tag: the source words a tag enclosed (columns) and the target words it was placed on (rows), in the
    legend too. Where the attention puts a tag is the aligner's business (tests/test_documents.py); on three
    words the toy model's averaged heads may link CA to "de", so here only the words and the tags' sources are
    fixed."""
    port = server
    with playwright.sync_playwright() as p:
        browser, page = open_page(p, port)
        page.select_option("#model-b", "")
        page.click("#markup-example")
        transformer = ".panel[data-model=transformer]"
        page.wait_for_selector(f"{transformer} .attention > table.heatmap td.cell")
        assert page.input_value("#text") == "<b>ab</b> ca <i>de</i>"
        expected = post(port, "/translate", {"text": "<b>ab</b> ca <i>de</i>", "model": "transformer",
                                             "beam_size": 3, "format": "html"})["translations"][0]["text"]
        assert re.sub(r"</?\w+>", "", expected) == "DE CA AB"
        placed = words_inside(expected)
        assert set(placed) == {"<b>", "<i>"} and all(placed.values())
        assert page.inner_text(f"{transformer} .translation") == expected
        table = f"{transformer} .attention > table.heatmap"
        cols = page.eval_on_selector_all(f"{table} tr:first-child th.col.tagged", "hs => hs.map(h => h.textContent)")
        rows = page.eval_on_selector_all(f"{table} th.row.tagged", "hs => hs.map(h => h.textContent)")
        assert cols == ["ab", "de"]
        assert rows == [word for word in "DE CA AB".split() if any(word in words for words in placed.values())]
        bold = page.eval_on_selector_all(f"{table} th.row.tag-0", "hs => hs.map(h => h.textContent)")
        assert bold == placed["<b>"]  # tag 0 is the source's first tag, <b>
        legend = page.inner_text(f"{transformer} .attention .tags")
        assert f"<b> ab → {' '.join(placed['<b>'])}" in legend and f"<i> de → {' '.join(placed['<i>'])}" in legend
        assert "error" not in (page.get_attribute("#status", "class") or "")
        browser.close()
