"""Export a Transformer run to CTranslate2, whose own engine then runs the whole search: ctranslate2's
TransformerSpec filled from our weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmt.errors import NmtError
from nmt.export import export_folder, require_export
from nmt.fileio import describe_files
from nmt.runs.loading import LoadedRun, load_model
from nmt.runs.rundir import RunDir
from nmt.tokens import BOS_ID, PAD_ID

NEVER_EMITTED_LOGIT = -1e4
"""A logit bias under which a token's probability is exactly 0 in float32 (the exported projection's bias)."""
MANIFEST = "nmt.json"  # the checkpoint exported, the ctranslate2 version, each other file's size and sha256


def export_ctranslate2(run_dir: Path, which: str = "best", output: Path | None = None) -> Path:
    """Write a Transformer run as a CTranslate2 model folder (model.bin, shared vocabularies by piece), built
    from ctranslate2's own TransformerSpec: the source must end with "</s>" (as `Tokenizer.encode_src` gives)
    and decoding starts from "<s>", as in nmt. It replaces an earlier export whole; nmt.json, which
    ctranslate2 ignores, records every other file's size and sha256."""
    return write_ctranslate2(load_model(run_dir, which), output or RunDir(run_dir).export_dir("ctranslate2"))


def write_ctranslate2(loaded: LoadedRun, folder: Path) -> Path:
    """`export_ctranslate2` of a loaded run, into `folder`."""
    require_export(loaded.model, "ctranslate2")
    try:
        import ctranslate2
        from ctranslate2.specs import common_spec, transformer_spec
    except ImportError:
        raise NmtError("CTranslate2 export needs ctranslate2: pip install 'nmt[export]'") from None
    model: Any = loaded.model  # a Transformer (its exports say so): its submodules are read by name below
    settings = loaded.config.model.transformer
    pre = settings.norm == "pre"
    activation = {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELU,
                  "silu": common_spec.Activation.SWISH}[settings.activation]
    spec = transformer_spec.TransformerSpec.from_config(
        (settings.encoder_layers, settings.decoder_layers), settings.heads, pre_norm=pre, no_final_norm=not pre,
        activation=activation)
    spec.encoder.scale_embeddings = spec.decoder.scale_embeddings = settings.scale_embeddings
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
    bias = torch.zeros(model.output.weight.shape[0]) if model.final_logits_bias is None \
        else model.final_logits_bias.detach().float().clone()  # an imported Marian model's
    bias[[BOS_ID, PAD_ID]] = NEVER_EMITTED_LOGIT  # as our search: BOS (Marian's pad) and PAD are never emitted
    spec.decoder.projection.bias = bias.numpy()
    tokenizer = loaded.tokenizer
    spec.register_source_vocabulary(tokenizer.src_pieces(range(tokenizer.src_vocab_size)))
    spec.register_target_vocabulary(tokenizer.tgt_pieces(range(tokenizer.tgt_vocab_size)))
    spec.validate()
    with export_folder(folder, MANIFEST) as staging:
        spec.save(str(staging))
        (staging / MANIFEST).write_text(json.dumps({"checkpoint": loaded.checkpoint.path.name,
                                                    "moving_average": loaded.checkpoint.files.ema,
                                                    "ctranslate2": ctranslate2.__version__,
                                                    "files": describe_files(staging)}, indent=2) + "\n")
    return folder
