"""ONNX export checked on a real run: token ids from onnxruntime against PyTorch on the whole dev set, and
decoding speed of both.

    NMT_DATA_MIRROR=../shared/data python scripts/export_bench.py runs/enja_bahdanau --beam-size 1 5

Exports the run (RUN/export/onnx), decodes its dev set with each runtime and beam size, and prints one JSON
line per beam size: the share of sentences with identical token ids, sentences/s for each runtime. For a
Transformer run, also a CTranslate2 export decoded greedily by CTranslate2 itself."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nmt.data.splits import eval_set
from nmt.export.ctranslate2 import export_ctranslate2
from nmt.export.onnx import export_onnx
from nmt.inference.translate import Translator, translate_lines
from nmt.runs.loading import load_model, load_run_config
from nmt.runs.rundir import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--beam-size", type=int, nargs="+", default=[1])
    args = parser.parse_args()
    started = time.perf_counter()
    export_onnx(args.run)
    exported = time.perf_counter() - started
    dev = eval_set(load_run_config(RunDir(args.run)).data).sources
    for beam in args.beam_size:
        ids, rates = {}, {}
        for runtime in ("torch", "onnx"):
            translate_lines(args.run, dev[:50], beam_size=beam, runtime=runtime)  # warm-up
            started = time.perf_counter()
            found = translate_lines(args.run, dev, beam_size=beam, runtime=runtime).translations
            rates[runtime] = round(len(dev) / (time.perf_counter() - started), 1)
            ids[runtime] = [t.hypotheses[0].tokens for t in found]
        same = sum(a == b for a, b in zip(ids["torch"], ids["onnx"], strict=True))
        print(json.dumps({"run": str(args.run), "beam_size": beam, "sentences": len(dev),
                          "identical_ids": f"{same}/{len(dev)}", "torch_sent_per_s": rates["torch"],
                          "onnx_sent_per_s": rates["onnx"], "export_s": round(exported, 1),
                          "threads": torch.get_num_threads(), "cpu": torch.backends.cpu.get_cpu_capability()}),
              flush=True)
    if load_run_config(RunDir(args.run)).model.type == "transformer":
        ctranslate2_greedy(args.run, dev)


def ctranslate2_greedy(run: Path, dev: list[str]) -> None:
    import ctranslate2

    folder = export_ctranslate2(run)
    loaded = load_model(run)
    tokenizer = loaded.tokenizer
    sources = [tokenizer.src_pieces(ids) for ids in Translator.for_run(loaded).encode(dev)]
    engine = ctranslate2.Translator(str(folder), device="cpu", intra_threads=torch.get_num_threads())
    engine.translate_batch(sources[:50], beam_size=1)  # warm-up
    started = time.perf_counter()
    found = engine.translate_batch(sources, beam_size=1, max_batch_size=128, max_decoding_length=256)
    rate = round(len(dev) / (time.perf_counter() - started), 1)
    ct2_ids = [[tokenizer.tgt.piece_to_id(p) for p in r.hypotheses[0]] for r in found]
    torch_ids = [t.hypotheses[0].tokens for t in translate_lines(run, dev, beam_size=1).translations]
    same = sum(a == b for a, b in zip(ct2_ids, torch_ids, strict=True))
    print(json.dumps({"run": str(run), "runtime": "ctranslate2", "beam_size": 1, "identical_ids": f"{same}/{len(dev)}",
                      "ctranslate2_sent_per_s": rate}), flush=True)


if __name__ == "__main__":
    main()
