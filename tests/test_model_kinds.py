"""A third kind of model, defined here and nowhere in nmt, goes through translation, attention views, the Python
API, the server and export: the rest of nmt talks to the model interface (nmt.models.interface), never to a
model type. Export refuses it in one line, because its description lists no export format."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from nmt.api.run import Run
from nmt.errors import ArgumentError, ConfigError
from nmt.export.ctranslate2 import write_ctranslate2
from nmt.export.onnx import write_onnx
from nmt.inference.translate import Translator
from nmt.inspect.view import attention_view
from nmt.models.interface import ModelDescription
from nmt.runs.loading import LoadedRun, load_model
from nmt.serve.server import create_app
from nmt.serve.service import ModelRegistry, ServedModel


@dataclass
class LookupMemory:
    keys: torch.Tensor  # (B, S, D) the source embeddings
    mask: torch.Tensor  # (B, S)
    beams: int = 1

    def repeat(self, times: int) -> LookupMemory:
        return LookupMemory(self.keys.repeat_interleave(times, 0), self.mask.repeat_interleave(times, 0),
                            self.beams * times)

    def select(self, index: torch.Tensor) -> LookupMemory:
        rows = (index.unsqueeze(1) * self.beams + torch.arange(self.beams)).view(-1)
        return LookupMemory(self.keys.index_select(0, rows), self.mask.index_select(0, rows), self.beams)


@dataclass
class NoState:
    rows: int

    def select(self, index: torch.Tensor) -> NoState:
        return NoState(index.shape[0])


class LookupModel(nn.Module):
    """Each target position attends (dot product) from its previous token's embedding to the source
    embeddings: no recurrence, no layers, one map."""

    max_positions = None
    cache_floats_per_position = 0

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, dim: int = 16):
        super().__init__()
        self.src_embed, self.tgt_embed = nn.Embedding(src_vocab_size, dim), nn.Embedding(tgt_vocab_size, dim)
        self.output = nn.Linear(2 * dim, tgt_vocab_size)

    def _attend(self, query: torch.Tensor, memory: LookupMemory) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, T, D) -> logits (B, T, V), weights (B, T, S)."""
        scores = (query @ memory.keys.transpose(1, 2)).masked_fill(~memory.mask[:, None], float("-inf"))
        weights = scores.softmax(-1)
        return self.output(torch.cat([weights @ memory.keys, query], dim=-1)), weights

    def encode(self, src: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> tuple[LookupMemory, NoState]:
        return LookupMemory(self.src_embed(src), mask), NoState(src.shape[0])

    def step_log_probs(self, prev_ids: torch.Tensor, state: NoState, memory: LookupMemory
                       ) -> tuple[torch.Tensor, NoState, torch.Tensor]:
        logits, weights = self._attend(self.tgt_embed(prev_ids)[:, None], memory)
        return logits[:, 0].log_softmax(-1), state, weights[:, 0]

    def forward_with_attention(self, src: torch.Tensor, lengths: torch.Tensor, src_mask: torch.Tensor,
                               tgt_in: torch.Tensor, layer: int, teacher_forcing: float = 1.0
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, weights = self._attend(self.tgt_embed(tgt_in), self.encode(src, lengths, src_mask)[0])
        return logits, weights[:, None]

    def forward(self, src: torch.Tensor, lengths: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor,
                teacher_forcing: float = 1.0) -> torch.Tensor:
        return self.forward_with_attention(src, lengths, src_mask, tgt_in, 0)[0]

    @torch.no_grad()
    def attention_maps(self, src: torch.Tensor, lengths: torch.Tensor, src_mask: torch.Tensor,
                       tgt_in: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cross": self.forward_with_attention(src, lengths, src_mask, tgt_in, 0)[1][None]}

    def describe(self) -> ModelDescription:
        return ModelDescription("lookup, dot", "lookup", "dot", layers=1, heads=1, kinds={"cross": 1}, exports=())

    def forward_flops(self, src_tokens: int, tgt_tokens: int, sentences: int) -> float:
        return 0.0


@pytest.fixture(scope="module")
def lookup(trained_run) -> LoadedRun:
    """The toy run's config, tokenizer and checkpoint record, with the third kind of model in it."""
    loaded = load_model(trained_run)
    torch.manual_seed(0)
    model = LookupModel(loaded.tokenizer.src_vocab_size, loaded.tokenizer.tgt_vocab_size).eval()
    return dataclasses.replace(loaded, model=model)


def test_a_third_model_kind_translates_and_shows_its_attention(lookup):
    [found] = Translator.for_run(lookup).translate(["ab ca de"], beam_size=3, n_best=2)
    assert len(found.hypotheses) == 2
    view = attention_view(lookup, "ab ca de")
    assert (view.layer, view.head) == (1, None) and len(view.panels) == 1
    torch.testing.assert_close(view.weights.sum(-1), torch.ones(len(view.row_labels)).numpy(), check_dtype=False)
    run = Run(lookup)
    shown = run.attention("ab ca de", beam_size=1)
    assert shown.weights.shape == (len(shown.row_tokens), len(shown.col_tokens))
    assert "<iframe" in shown._repr_html_()
    with pytest.raises(ConfigError, match="kind: encoder: this model has cross attention only"):
        run.attention("ab ca de", kind="encoder")


def test_a_third_model_kind_is_served(lookup):
    registry = ModelRegistry([ServedModel("lookup", lookup, Translator.for_run(lookup))])
    with TestClient(create_app(registry)) as client:
        [described] = client.get("/models").json()
        assert (described["type"], described["layers"], described["heads"], described["kinds"]) == \
               ("lookup", 1, 1, {"cross": 1})
        translated = client.post("/translate", json={"text": "ab ca de", "beam_size": 2}).json()
        assert translated["translations"][0]["text"]
        view = client.post("/attention", json={"text": "ab ca de", "layer": 1, "head": 1}).json()
        assert (view["layer"], view["head"]) == (1, 1) and len(view["panels"]) == 1
        refused = client.post("/attention", json={"text": "ab ca de", "kind": "decoder"})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "kind"


@pytest.mark.parametrize("write", [write_onnx, write_ctranslate2], ids=["onnx", "ctranslate2"])
def test_a_model_without_an_export_format_is_refused_in_one_line(lookup, write, tmp_path):
    with pytest.raises(ArgumentError, match=r"^format: \w+: a lookup, dot model cannot be exported to \w+$") as refused:
        write(lookup, tmp_path / "export")
    assert refused.value.field == "format"
    assert not (tmp_path / "export").exists()
