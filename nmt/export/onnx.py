"""Export a trained run to ONNX and decode it with onnxruntime: two graphs, the encoder and one decoder step,
while the search loop (nmt/search.py: greedy, beam, n-best, length penalty) stays in Python. A Transformer
run also exports to CTranslate2, whose own engine then runs the whole search.

The model's memory and decoder state are dataclasses; the graphs take and return them as flat lists of
tensors, in the order `Layout` gives, and `OnnxModel` wraps the two onnxruntime sessions behind the same
interface as a PyTorch model (`encode`, `step_log_probs`, `memory.repeat`, `state.select`), so the
Translator decodes it unchanged."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nmt.errors import ConfigError, NmtError
from nmt.models import Model, Seq2Seq
from nmt.models.rnn import DecoderState, EncoderMemory
from nmt.models.transformer import TransformerMemory, TransformerState
from nmt.runs.checkpoint import LoadedRun, load_model, load_run_config, verify
from nmt.runs.rundir import CheckpointFiles, RunDir
from nmt.tokens import PAD_ID

OPSET = 17
ENCODER, STEP, LAYOUT = "encoder.onnx", "step.onnx", "layout.json"


@dataclass
class Layout:
    """Names of the flat memory and state tensors, and each state tensor's batch axis (for beam reordering)."""

    memory: list[str]
    state: list[str]
    state_batch_axes: list[int]

    @classmethod
    def of(cls, model: Model) -> Layout:
        if isinstance(model, Seq2Seq):
            hidden = ["hidden", "cell"] if model.decoder.is_lstm else ["hidden"]
            return cls(["values", "keys", "mask"], [*hidden, "feed"], [1] * len(hidden) + [0])
        layers = len(model.decoder_layers)
        return cls(["mask", *(f"cross_keys_{i}" for i in range(layers))], [f"cache_{i}" for i in range(layers)],
                   [0] * layers)


def flatten_memory(memory: Any) -> list[torch.Tensor]:
    if isinstance(memory, EncoderMemory):
        return [memory.values, memory.keys, memory.mask]
    return [memory.mask, *memory.cross_keys]


def flatten_state(state: Any) -> list[torch.Tensor]:
    if isinstance(state, DecoderState):
        hidden = list(state.hidden) if isinstance(state.hidden, tuple) else [state.hidden]
        return [*hidden, state.feed]
    return list(state.cache)


def rebuild(model: Model, memory: list[torch.Tensor], state: list[torch.Tensor]) -> tuple[Any, Any]:
    if isinstance(model, Seq2Seq):
        hidden: torch.Tensor | tuple[torch.Tensor, torch.Tensor] = (state[0], state[1]) if model.decoder.is_lstm \
            else state[0]
        return EncoderMemory(*memory), DecoderState(hidden, state[-1])
    # The step reads neither the encoder output (its keys are projected; the mask stands in for it) nor the
    # position, which the cache's length gives: a dynamic dimension of the exported graph.
    return (TransformerMemory(memory[0], memory[0], tuple(memory[1:])),
            TransformerState(tuple(state), state[0].shape[1]))


class EncoderGraph(nn.Module):
    def __init__(self, model: Model):
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory, state = self.model.encode(src, lengths, src != PAD_ID)
        return (*flatten_memory(memory), *flatten_state(state))


class StepGraph(nn.Module):
    def __init__(self, model: Model, layout: Layout):
        super().__init__()
        self.model, self.memory_count = model, len(layout.memory)

    def forward(self, prev: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory, state = rebuild(self.model, list(tensors[:self.memory_count]), list(tensors[self.memory_count:]))
        log_probs, state, weights = self.model.step_log_probs(prev, state, memory)
        return (log_probs, weights, *flatten_state(state))


def _dynamic_axes(layout: Layout, names: list[str], sequence: str) -> dict[str, dict[int, str]]:
    """Batch (B) and source (S) or cache (T) lengths vary; everything else is fixed by the model."""
    axes: dict[str, dict[int, str]] = {}
    for name in names:
        base = name.removeprefix("new_")
        if base in layout.state:
            batch = layout.state_batch_axes[layout.state.index(base)]
            axes[name] = {batch: "B", **({1: sequence} if base.startswith("cache") else {})}
        else:
            axes[name] = {0: "B", 1: "S"}
    return axes


def export_onnx(run_dir: Path, which: str = "best", output: Path | None = None) -> Path:
    """Write encoder.onnx, step.onnx and layout.json for a run's checkpoint into `output` (RUN/export/onnx)."""
    loaded = load_model(run_dir, which)
    model, layout = loaded.model, Layout.of(loaded.model)
    folder = output or RunDir(run_dir).export_dir("onnx")
    folder.mkdir(parents=True, exist_ok=True)
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, PAD_ID, PAD_ID]]) % loaded.tokenizer.src_vocab_size
    lengths = (src != PAD_ID).sum(dim=1)
    # torch's TorchScript-based exporter traces the graphs and warns about every shape it reads in Python;
    # the dynamic batch, source and cache axes are what the export tests check on other shapes.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoded = EncoderGraph(model)(src, lengths)
        memory = list(encoded[:len(layout.memory)])
        state = list(encoded[len(layout.memory):])
        # Trace the step one position in, so every cache has a non-empty (and dynamic) length.
        _, first, _ = model.step_log_probs(torch.tensor([2, 2]), *reversed(rebuild(model, memory, state)))
        state = flatten_state(first)
        encoder_outputs = [*layout.memory, *layout.state]
        torch.onnx.export(EncoderGraph(model), (src, lengths), str(folder / ENCODER), dynamo=False,
                          opset_version=OPSET, input_names=["src", "lengths"], output_names=encoder_outputs,
                          dynamic_axes={"src": {0: "B", 1: "S"}, "lengths": {0: "B"},
                                        **_dynamic_axes(layout, encoder_outputs, "T")})
        step_inputs = ["prev", *layout.memory, *layout.state]
        step_outputs = ["log_probs", "weights", *(f"new_{name}" for name in layout.state)]
        torch.onnx.export(StepGraph(model, layout), (torch.tensor([4, 5]), *memory, *state), str(folder / STEP),
                          dynamo=False, opset_version=OPSET, input_names=step_inputs, output_names=step_outputs,
                          dynamic_axes={"prev": {0: "B"}, "log_probs": {0: "B"}, "weights": {0: "B", 1: "S"},
                                        **_dynamic_axes(layout, step_inputs[1:], "T"),
                                        **_dynamic_axes(layout, step_outputs[2:], "T1")})
    (folder / LAYOUT).write_text(json.dumps({**layout.__dict__, "checkpoint": loaded.checkpoint.path.name},
                                            indent=2) + "\n")
    return folder


@dataclass
class OnnxMemory:
    tensors: list[np.ndarray]

    def repeat(self, times: int) -> OnnxMemory:
        return OnnxMemory([np.repeat(t, times, axis=0) for t in self.tensors])


@dataclass
class OnnxState:
    tensors: list[np.ndarray]
    batch_axes: list[int]

    def select(self, index: torch.Tensor) -> OnnxState:
        rows = index.cpu().numpy()
        return OnnxState([np.take(t, rows, axis=axis) for t, axis in zip(self.tensors, self.batch_axes, strict=True)],
                         self.batch_axes)


class OnnxModel(nn.Module):
    """The exported graphs on onnxruntime's CPU provider, decoding through the PyTorch search code."""

    def __init__(self, folder: Path):
        super().__init__()
        try:
            import onnxruntime
        except ImportError:
            raise NmtError("ONNX decoding needs onnxruntime: pip install 'nmt[export]'") from None
        if not (folder / LAYOUT).is_file():
            raise ConfigError(f"{folder}: no exported model (write one with: nmt export --model RUN --format onnx)")
        saved = json.loads((folder / LAYOUT).read_text())
        self.layout = Layout(saved["memory"], saved["state"], saved["state_batch_axes"])
        self.checkpoint: str = saved["checkpoint"]  # the folder name of the checkpoint it was exported from
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the threads PyTorch decoding would use
        # Spinning threads wait for work by burning CPU: on shared cores that starves everything else.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.encoder, self.step = (onnxruntime.InferenceSession(str(folder / name), options,
                                                                providers=["CPUExecutionProvider"])
                                   for name in (ENCODER, STEP))
        self.encoder_inputs = {i.name for i in self.encoder.get_inputs()}  # a Transformer's ignores `lengths`
        self.step_inputs = [i.name for i in self.step.get_inputs()]

    def encode(self, src: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> tuple[OnnxMemory, OnnxState]:
        feed = {"src": src.cpu().numpy(), "lengths": lengths.cpu().numpy()}
        outputs = self.encoder.run(None, {k: v for k, v in feed.items() if k in self.encoder_inputs})
        count = len(self.layout.memory)
        return OnnxMemory(outputs[:count]), OnnxState(outputs[count:], self.layout.state_batch_axes)

    def step_log_probs(self, prev: torch.Tensor, state: OnnxState, memory: OnnxMemory
                       ) -> tuple[torch.Tensor, OnnxState, torch.Tensor]:
        values = dict(zip([*self.layout.memory, *self.layout.state], [*memory.tensors, *state.tensors], strict=True))
        values["prev"] = prev.cpu().numpy()
        log_probs, weights, *new_state = self.step.run(None, {name: values[name] for name in self.step_inputs})
        return torch.from_numpy(log_probs), OnnxState(new_state, state.batch_axes), torch.from_numpy(weights)


def load_onnx(run_dir: Path, overrides: Sequence[str] = ()) -> LoadedRun:
    """A run's exported model as a LoadedRun that the Translator decodes like a PyTorch one."""
    run = RunDir(run_dir)
    model = OnnxModel(run.export_dir("onnx"))
    checkpoint = verify(CheckpointFiles(run.checkpoints_dir / model.checkpoint))
    return LoadedRun(run, load_run_config(run, overrides), run.tokenizer(), model, checkpoint)  # type: ignore[arg-type]


def export_ctranslate2(run_dir: Path, which: str = "best", output: Path | None = None) -> Path:
    """Write a Transformer run as a CTranslate2 model folder (model.bin, shared vocabularies by piece), built
    from ctranslate2's own TransformerSpec: the source must end with "</s>" (as `Tokenizer.encode_src` gives)
    and decoding starts from "<s>", as in nmt."""
    try:
        import ctranslate2
        from ctranslate2.specs import transformer_spec
    except ImportError:
        raise NmtError("CTranslate2 export needs ctranslate2: pip install 'nmt[export]'") from None
    loaded = load_model(run_dir, which)
    model: Any = loaded.model  # a Transformer: its submodules are read by name below
    if isinstance(model, Seq2Seq):
        raise ConfigError("--format ctranslate2 is for Transformer runs; export an RNN with --format onnx")
    settings = loaded.config.model.transformer
    pre = settings.norm == "pre"
    spec = transformer_spec.TransformerSpec.from_config(
        (settings.encoder_layers, settings.decoder_layers), settings.heads, pre_norm=pre, no_final_norm=not pre)
    table = model.sinusoids if model.sinusoids is not None else model.learned_positions.weight

    def linear(target: Any, *sources: nn.Linear) -> None:
        target.weight = torch.cat([s.weight for s in sources]).detach().float().numpy()
        target.bias = torch.cat([s.bias for s in sources]).detach().float().numpy()

    def norm(target: Any, source: nn.LayerNorm) -> None:
        target.gamma, target.beta = source.weight.detach().numpy(), source.bias.detach().numpy()

    for stack, layers, embed, final in ((spec.encoder, model.encoder_layers, model.src_embed, model.encoder_norm),
                                        (spec.decoder, model.decoder_layers, model.tgt_embed, model.decoder_norm)):
        embeddings = stack.embeddings[0] if isinstance(stack.embeddings, list) else stack.embeddings
        embeddings.weight = embed.weight.detach().numpy()
        stack.position_encodings.encodings = table.detach().float().numpy()
        if pre:
            norm(stack.layer_norm, final)
        for ours, theirs in zip(layers, stack.layer, strict=True):
            linear(theirs.self_attention.linear[0], ours.self_attn.query_proj, ours.self_attn.memory_proj)  # Q, K, V
            linear(theirs.self_attention.linear[1], ours.self_attn.out_proj)
            subs = [ours.attn_sub, ours.ff_sub] if stack is spec.encoder else [ours.self_sub, ours.cross_sub,
                                                                                 ours.ff_sub]
            norm(theirs.self_attention.layer_norm, subs[0].norm)
            if stack is spec.decoder:
                linear(theirs.attention.linear[0], ours.cross_attn.query_proj)
                linear(theirs.attention.linear[1], ours.cross_attn.memory_proj)  # K, V
                linear(theirs.attention.linear[2], ours.cross_attn.out_proj)
                norm(theirs.attention.layer_norm, subs[1].norm)
            linear(theirs.ffn.linear_0, ours.ff.inner)
            linear(theirs.ffn.linear_1, ours.ff.outer)
            norm(theirs.ffn.layer_norm, subs[-1].norm)
    spec.decoder.projection.weight = model.output.weight.detach().numpy()
    tokenizer = loaded.tokenizer
    spec.register_source_vocabulary(tokenizer.src_pieces(range(tokenizer.src_vocab_size)))
    spec.register_target_vocabulary(tokenizer.tgt_pieces(range(tokenizer.tgt_vocab_size)))
    spec.validate()
    folder = output or RunDir(run_dir).export_dir("ctranslate2")
    folder.mkdir(parents=True, exist_ok=True)
    spec.save(str(folder))
    (folder / "nmt.json").write_text(json.dumps({"checkpoint": loaded.checkpoint.path.name,
                                                 "ctranslate2": ctranslate2.__version__}, indent=2) + "\n")
    return folder
