"""Where training's or decoding's time goes on this CPU: torch.profiler over optimizer steps of the trainer
(`Trainer.train_step`, as scripts/bench.py times them), or over our search decoding the dev split with a
trained run; CPU self time grouped into what bounds it.

    NMT_DATA_MIRROR=../shared/data python scripts/where_time_goes.py --config configs/multi30k_deen_transformer.yaml \\
        [--set training.precision=fp32] [--steps 10] [--top 15]
        [--decode RUN --beam 5 --sentences 300 [--quantize int8] [--batch-sentences N]]

Prints one JSON object: the CPU, the precision, the share of self time per group (matmul: GEMMs and their
backward; attention: the fused kernel; elementwise: adds, multiplies, activations, casts, copies; norm:
LayerNorm; dropout: masks; loss: softmax and cross-entropy (in decoding: the log-softmax over the
vocabulary); optimizer: Adam; other), and the top operators. Emulate another CPU's kernels with
ATEN_CPU_CAPABILITY=avx2."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

GROUPS = (  # the first group whose words appear in an operator's name takes its time
    ("matmul", ("mm", "matmul", "linear", "addmm", "bmm", "baddbmm")),
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("loss", ("softmax", "cross_entropy", "nll_loss", "log_softmax")),
    ("norm", ("layer_norm",)),
    ("dropout", ("dropout", "random_", "bernoulli", "bitwise_and", "ge")),
    ("optimizer", ("adam", "_foreach", "fused")),
    ("elementwise", ("add", "mul", "div", "relu", "gelu", "silu", "copy_", "to", "clamp", "where", "sum", "mean",
                     "fill_", "zero_", "embedding", "index", "cat", "masked", "sqrt", "sub", "neg", "exp", "log")),
)


def group_of(name: str) -> str:
    bare = name.split("::", 1)[-1].lower()
    parts = bare.split("_")
    for group, words in GROUPS:
        if any(word in parts or ("_" in word and word in bare) for word in words):
            return group
    return "other"


def profile_training(args) -> tuple[profile, int, dict]:
    from nmt.config import load_config
    from nmt.training.recipe import Trainer

    run_dir = Path(tempfile.mkdtemp(prefix="profile-train-"))
    trainer = Trainer(load_config(args.config, [*args.set, f"run_dir={run_dir}"]))
    trainer.setup()
    trainer.model.train()
    order = trainer.batches.order(trainer.progress)
    for _ in range(args.warmup):
        trainer.train_step(trainer.batches.next_share(order), trainer.progress)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            trainer.train_step(trainer.batches.next_share(order), trainer.progress)
    trainer.cleanup()
    return prof, args.steps, {"phase": "train", "precision": trainer.precision}


def profile_decoding(args) -> tuple[profile, int, dict]:
    """Our search on the first --sentences of the dev split; a "step" is one sentence."""
    from nmt.config import load_config
    from nmt.data.prepare import prepare_data
    from nmt.inference.translate import Translator
    from nmt.runs.loading import load_model

    loaded = load_model(args.decode, quantize=args.quantize)
    translator = Translator.for_run(loaded)
    if args.batch_sentences:
        decoding = loaded.config.decoding.model_copy(update={"batch_sentences": args.batch_sentences})
        translator = Translator(loaded.model, loaded.tokenizer, decoding, loaded.config.data.clean)
    split = prepare_data(load_config(args.config, args.set)).splits["dev"]
    src = [list(split.src_ids(i)) for i in range(min(args.sentences, len(split)))]
    translator.search_ids(src[:32], beam_size=args.beam)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        translator.search_ids(src, beam_size=args.beam)
    return prof, len(src), {"phase": f"decode, beam {args.beam}", "run": str(args.decode),
                            "quantize": args.quantize}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--decode", type=Path, help="profile decoding the dev split with this trained run instead")
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--batch-sentences", type=int, help="sentences per decoding batch (default: the run's)")
    parser.add_argument("--quantize", choices=["int8"], help="decode with the int8 model (nmt translate --quantize)")
    args = parser.parse_args()

    from nmt.training.precision import cpu_name

    prof, steps, what = profile_decoding(args) if args.decode else profile_training(args)
    events = [e for e in prof.key_averages() if e.key.startswith(("aten::", "quantized::"))]  # int8: quantized::
    total = sum(e.self_cpu_time_total for e in events)
    groups: dict[str, float] = defaultdict(float)
    for event in events:
        groups[group_of(event.key)] += event.self_cpu_time_total
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    print(json.dumps({
        "cpu": cpu_name(), "threads": torch.get_num_threads(), **what, "config": str(args.config),
        "overrides": args.set, "ms_per_step": round(total / steps / 1e3, 2),
        "share": {g: round(t / total, 3) for g, t in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top": [{"op": e.key, "group": group_of(e.key), "share": round(e.self_cpu_time_total / total, 3),
                 "calls_per_step": round(e.count / steps, 1)} for e in top]}, indent=1))


if __name__ == "__main__":
    main()
