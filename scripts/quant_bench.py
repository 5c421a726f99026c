"""int8 against fp32 CPU decoding of a run's dev set: sentences/s and BLEU.

    NMT_DATA_MIRROR=../shared/data python scripts/quant_bench.py runs/enja_bahdanau runs/multi30k_deen_transformer

Each run's dev set is decoded greedily (or with --beam-size) once to warm up, then --repeats times per
precision, alternating fp32 and int8; the median time counts. One JSON line per run."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from nmt.data.splits import eval_set
from nmt.inference.scoring import decode_and_score
from nmt.inference.translate import Translator
from nmt.runs.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for run in args.runs:
        translators = {name: Translator.for_run(load_model(run, quantize=quantize))
                       for name, quantize in (("fp32", None), ("int8", "int8"))}
        run_config = load_model(run).config
        dev = eval_set(run_config.data)
        seconds: dict[str, list[float]] = {name: [] for name in translators}
        decoded = {name: decode_and_score(translator, dev, run_config.evaluation, args.beam_size)  # also a warm-up
                   for name, translator in translators.items()}
        for _ in range(args.repeats):
            for name, translator in translators.items():
                started = time.perf_counter()
                translator.translate(dev.sources, args.beam_size)
                seconds[name].append(time.perf_counter() - started)
        result = {"run": str(run), "sentences": len(dev.sources), "beam_size": args.beam_size,
                  "threads": torch.get_num_threads(), "cpu": torch.backends.cpu.get_cpu_capability()}
        for name in translators:
            result[f"{name}_sent_per_s"] = round(len(dev.sources) / statistics.median(seconds[name]), 1)
            result[f"{name}_bleu"] = round(decoded[name].bleu.score, 2)
        result["speedup"] = round(result["int8_sent_per_s"] / result["fp32_sent_per_s"], 2)
        result["identical"] = round(sum(a == b for a, b in zip(decoded["fp32"].hypotheses, decoded["int8"].hypotheses,
                                                               strict=True))
                                    / len(dev.sources), 3)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
