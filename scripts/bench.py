"""Benchmark nmt on this machine: training throughput and achieved GFLOP/s against the measured matmul peak of
the precision trained in, against a plain-PyTorch floor (nn.Transformer of the same size on the same token
batches, eager, same precision), decoding speed and BLEU (greedy and beam 5, on the fp32 model and on its int8
quantization) against CTranslate2 (float32 and int8) on the same export, threads and sentences, peak memory,
and optionally dev BLEU after a wall-clock training budget.

    python scripts/bench.py --config configs/multi30k_deen_transformer.yaml [--model RUN] \
        [--budget-minutes 20] [--compile] [--json bench.json]

Each phase runs in its own process (so each peak resident memory, ru_maxrss, is its own) and prints one JSON
object; a summary object with the ratios closes. Every object names the CPU (`cpu`: model name and the
kernels torch dispatches to: emulate others with ATEN_CPU_CAPABILITY=avx2).

FLOPs are the model's own count (`forward_flops` on each model class: multiply-adds x 2 of the forward
pass; training = 3x forward for the backward pass).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak(dtype: torch.dtype, size: int = 2048, seconds: float = 3.0, windows: int = 5) -> float:
    """Achieved GFLOP/s of a large square matmul, the practical ceiling of this CPU for dense work: the best of
    `windows` timings (one 3-second timing read 142 GFLOP/s here once, and 174 in the next invocation)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)
    best = 0.0
    for _ in range(windows):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / windows:
            torch.matmul(a, b)
            count += 1
        best = max(best, 2 * size**3 * count / (time.perf_counter() - start) / 1e9)
    return best


def cpu() -> str:
    from nmt.training.precision import cpu_name

    return cpu_name()


def phase_train(args) -> dict:
    """Optimizer steps through the trainer's own step (`Trainer.train_step`), validation left out."""
    from nmt.config import load_config
    from nmt.training.recipe import Trainer
    from nmt.training.reporting import peak_memory_mb

    run_dir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    config = load_config(args.config, [*args.set, f"run_dir={run_dir}"])
    trainer = Trainer(config)
    trainer.setup()
    trainer.model.train()
    tokens = flops = 0.0
    start = 0.0
    order = trainer.batches.order(trainer.progress)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            start, tokens, flops = time.perf_counter(), 0.0, 0.0
        share = trainer.batches.next_share(order)
        if share is None:
            raise SystemExit(f"the training data ran out after {step} steps: lower --steps or raise max_epochs")
        trainer.train_step(share, trainer.progress)
        if trainer.core_share is not None:  # as the training loop does: threads follow the machine's load
            trainer.core_share.poll()
        tokens += share.tokens
        flops += sum(3 * trainer.model.forward_flops(int(b.src_mask.sum()), b.n_tgt_tokens, b.size)
                     for b in share.batches)
    seconds = time.perf_counter() - start
    peaks = peak_memory_mb(trainer.device)
    trainer.cleanup()
    return {"train_tokens_per_s": tokens / seconds, "train_gflops": flops / seconds / 1e9,
            **{f"train_{name}": value for name, value in peaks.items()}, "train_steps": args.steps,
            "batch_tokens": config.training.batch_tokens, "precision": trainer.precision,
            "fast_dropout": config.training.fast_dropout}


class PlainTransformer(torch.nn.Module):
    """The floor: torch's nn.Transformer as a tutorial would use it, at the config's size (embeddings scaled
    and summed with sinusoids, one embedding shared with the output layer when the config ties them)."""

    def __init__(self, cfg, src_vocab: int, tgt_vocab: int):
        super().__init__()
        from nmt.models.transformer import sinusoidal_positions

        t = cfg.transformer
        self.scale = t.d_model ** 0.5
        self.src_embed = torch.nn.Embedding(src_vocab, t.d_model)
        self.tgt_embed = self.src_embed if t.tie == "all" else torch.nn.Embedding(tgt_vocab, t.d_model)
        self.register_buffer("positions", sinusoidal_positions(t.max_positions, t.d_model), persistent=False)
        self.transformer = torch.nn.Transformer(t.d_model, t.heads, t.encoder_layers, t.decoder_layers, t.ff_size,
                                                t.dropout, batch_first=True, norm_first=t.norm == "pre")
        self.output = torch.nn.Linear(t.d_model, tgt_vocab, bias=False)
        if t.tie != "none":
            self.output.weight = self.tgt_embed.weight

    def forward(self, src, src_mask, tgt_in, tgt_mask):
        def embed(table, ids):
            return table(ids) * self.scale + self.positions[: ids.shape[1]]

        causal = torch.nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1])
        out = self.transformer(embed(self.src_embed, src), embed(self.tgt_embed, tgt_in), tgt_mask=causal,
                               src_key_padding_mask=~src_mask, tgt_key_padding_mask=~tgt_mask,
                               memory_key_padding_mask=~src_mask, tgt_is_causal=True)
        return self.output(out)


def phase_floor(args) -> dict:
    """The plain reference trained on the trainer's own token batches, in the precision given (the one the
    train phase chose), with torch's Adam and cross-entropy: what a straightforward implementation reaches."""
    import torch.nn.functional as F

    from nmt.config import load_config
    from nmt.data.prepare import prepare_data
    from nmt.tokens import PAD_ID
    from nmt.training.batches import epoch_batches, make_batch
    from nmt.training.step import autocast

    config = load_config(args.config, args.set)
    if config.model.type != "transformer":
        return {"floor_tokens_per_s": None, "floor": "a Transformer config only (nn.Transformer)"}
    if config.training.threads:
        torch.set_num_threads(config.training.threads)
    data = prepare_data(config)
    split = data.splits["train"]
    torch.manual_seed(config.seed)
    model = PlainTransformer(config.model, data.tokenizer.src_vocab_size, data.tokenizer.tgt_vocab_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.training.lr)
    device, precision = torch.device("cpu"), args.floor_precision
    batches = epoch_batches(split, config, epoch=0)  # the trainer's first epoch, in order
    model.train()
    tokens, start = 0, 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            tokens, start = 0, time.perf_counter()
        batch = make_batch(split, batches[step % len(batches)])
        with autocast(device, precision):
            logits = model(batch.src, batch.src_mask, batch.tgt_in, batch.tgt_mask)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID,
                               label_smoothing=config.training.label_smoothing, reduction="sum")
        (loss / batch.n_tgt_tokens).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.training.clip_norm or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch.n_tgt_tokens
    return {"floor_tokens_per_s": tokens / (time.perf_counter() - start), "floor_precision": precision,
            "floor": "nn.Transformer, eager, torch.optim.Adam, the same token batches"}


def phase_decode(args) -> dict:
    """Our search (greedy and beam 5), on the fp32 model and on its int8 quantization, then CTranslate2 on the
    run's export (its float32 and its int8 compute types) with the same threads, batch size, beams and length
    penalty, where ctranslate2 is installed (Transformer runs); each with the split's BLEU, so that int8's loss
    is measured where its speed is."""
    from nmt.data.splits import eval_set
    from nmt.inference.metrics import bleu
    from nmt.inference.translate import Translator
    from nmt.runs.loading import load_model

    beams = {1: "greedy", 5: "beam5"}
    out: dict = {"decode_threads": torch.get_num_threads()}
    loaded = load_model(Path(args.model))
    data = eval_set(loaded.config.data, args.split)
    src = Translator.for_run(loaded).encode(data.sources)
    out["decode_sentences"] = len(src)
    evaluation, tokenizer = loaded.config.evaluation, loaded.tokenizer

    def timed(name: str, translate, inputs: list) -> None:
        """Sentences/s of `translate` over `inputs`, the best of three passes after a warm-up (one pass varied
        by 15% from one to the next here), and BLEU of the texts it returns."""
        translate(inputs[:32])
        best = 0.0
        for _ in range(3):
            start = time.perf_counter()
            hypotheses = translate(inputs)
            best = max(best, len(inputs) / (time.perf_counter() - start))
        out[f"{name}_sentences_per_s"] = best
        out[f"{name}_bleu"] = bleu(hypotheses, data.references, evaluation).score

    for quantize, prefix in ((None, ""), ("int8", "int8_")):
        translator = Translator.for_run(loaded if quantize is None else load_model(Path(args.model), quantize=quantize))
        for beam, name in beams.items():
            timed(prefix + name, lambda ids, beam=beam, translator=translator: [
                tokenizer.decode_tgt(hyps[0].tokens) for hyps in translator.search_ids(ids, beam_size=beam)], src)
    out["decode_peak_rss_mb"] = peak_rss_mb()
    if loaded.config.model.type != "transformer":
        return out
    try:
        import ctranslate2
    except ImportError:
        return out
    from nmt.export.ctranslate2 import export_ctranslate2

    exported, decoding = str(export_ctranslate2(Path(args.model))), loaded.config.decoding
    pieces = [tokenizer.src_pieces(ids) for ids in src]
    piece_ids = tokenizer.vocabulary.tgt_ids if tokenizer.vocabulary else None

    def detokenized(tokens: list[str]) -> str:
        return tokenizer.decode_tgt([piece_ids[p] if piece_ids else tokenizer.tgt.piece_to_id(p) for p in tokens])

    for compute_type, prefix in (("float32", "ct2_"), ("int8", "ct2_int8_")):
        engine = ctranslate2.Translator(exported, device="cpu", compute_type=compute_type,
                                        intra_threads=torch.get_num_threads())
        for beam, name in beams.items():
            options = {"beam_size": beam, "max_batch_size": decoding.batch_sentences, "length_penalty":
                       decoding.length_penalty, "max_decoding_length": loaded.model.max_positions or 256}
            timed(prefix + name, lambda batch, engine=engine, options=options: [
                detokenized(r.hypotheses[0]) for r in engine.translate_batch(batch, **options)], pieces)
    return out


def phase_compile(args) -> dict:
    """The trainer's step eager, then with the model under torch.compile (dynamic shapes, so token batches of
    every shape share one graph): tokens/s of each on the trainer's batches, and the compilation's time."""
    from nmt.config import load_config
    from nmt.training.recipe import Trainer

    run_dir = Path(tempfile.mkdtemp(prefix="bench-compile-"))
    trainer = Trainer(load_config(args.config, [*args.set, f"run_dir={run_dir}"]))
    trainer.setup()
    trainer.model.train()
    order = trainer.batches.order(trainer.progress)

    def tokens_per_s(steps: int) -> float:
        tokens, start = 0, time.perf_counter()
        for _ in range(steps):
            share = trainer.batches.next_share(order)
            trainer.train_step(share, trainer.progress)
            tokens += share.tokens
        return tokens / (time.perf_counter() - start)

    tokens_per_s(args.warmup)
    eager = tokens_per_s(args.steps)
    trainer.train_step.trained = torch.compile(trainer.forward, dynamic=True)  # what the step runs
    start = time.perf_counter()
    tokens_per_s(args.warmup)
    compiling = time.perf_counter() - start
    compiled = tokens_per_s(args.steps)
    trainer.cleanup()
    return {"precision": trainer.precision, "eager_tokens_per_s": eager, "compiled_tokens_per_s": compiled,
            "compiled_over_eager": compiled / eager, "compile_warmup_s": compiling}


def phase_peak(_args) -> dict:
    """The fp32 peak, and the bf16 peak where this CPU runs bf16 natively. Where it only emulates bf16 (an AVX2
    CPU), one large bf16 matmul takes many times as long, and no precision auto trains in it: the bf16 peak is
    null and the reason says why, so that the phase takes seconds on every CPU."""
    from nmt.training.precision import bf16_kind, bf16_matmul_slowdown

    slowdown = bf16_matmul_slowdown()
    found: dict = {"matmul_fp32_gflops": matmul_peak(torch.float32), "bf16_matmul_slowdown": round(slowdown, 1)}
    if bf16_kind(slowdown) == "bf16 emulated":
        return {**found, "matmul_bf16_gflops": None,
                "matmul_bf16_skipped": f"bf16 emulated here: a small bf16 matmul is {slowdown:.0f}x slower than fp32"}
    return {**found, "matmul_bf16_gflops": matmul_peak(torch.bfloat16)}


def phase_budget(args) -> dict:
    """Train from scratch for a wall-clock budget (the full pipeline, validation included); best dev BLEU."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench-run-"))
    overrides = [*args.set, f"run_dir={run_dir}", f"training.max_minutes={args.budget_minutes}"]
    command = [sys.executable, "-m", "nmt", "train", "--config", str(args.config)]
    for item in overrides:
        command += ["--set", item]
    subprocess.run(command, check=True, cwd=ROOT)
    from nmt.runs.checkpoint import find_checkpoint
    from nmt.runs.rundir import RunDir

    run = RunDir(run_dir)
    best = find_checkpoint(run, "best").meta
    last = [r for r in run.metrics() if "dev_bleu" in r][-1]
    return {"budget_minutes": args.budget_minutes, "budget_best_dev_bleu": best["dev_bleu"],
            "budget_steps": last["step"], "budget_run_dir": str(run_dir),
            "budget_train_tokens_per_s": last["train_tokens_per_s"], "budget_peak_rss_mb": last["peak_rss_mb"]}


PHASES = {"train": phase_train, "floor": phase_floor, "decode": phase_decode, "peak": phase_peak,
          "budget": phase_budget, "compile": phase_compile}


def run_phase(name: str, argv: list[str]) -> dict:
    """Run one phase in a fresh process and return its JSON (its own peak memory included)."""
    result = subprocess.run([sys.executable, __file__, "--phase", name, *argv], capture_output=True, text=True,
                            cwd=ROOT)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"phase {name} failed")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/enja_bahdanau.yaml")
    parser.add_argument("--set", action="append", default=[], help="config override, as for nmt")
    parser.add_argument("--model", type=Path, help="trained run directory, for decoding speed")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--split", default="dev", help="the split decoded for decoding speed")
    parser.add_argument("--budget-minutes", type=float, help="also train for this long and report dev BLEU")
    parser.add_argument("--compile", action="store_true", help="also time the step under torch.compile (minutes)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--floor-precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps({"phase": args.phase, "cpu": cpu(), **PHASES[args.phase](args)}))
        return
    argv = ["--config", str(args.config), "--warmup", str(args.warmup), "--steps", str(args.steps),
            "--split", args.split]
    for item in args.set:
        argv += ["--set", item]
    figures: dict = {"config": str(args.config), "overrides": args.set, "cpu": cpu(),
                     "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                     "date": time.strftime("%Y-%m-%d")}

    def phase(name: str, extra: list[str] | None = None) -> None:
        found = run_phase(name, [*argv, *(extra or [])])
        print(json.dumps(found), flush=True)
        figures.update({k: v for k, v in found.items() if k not in ("phase", "cpu")})

    phase("peak")
    phase("train")
    peak = figures["matmul_bf16_gflops"] if figures["precision"] == "bf16" else figures["matmul_fp32_gflops"]
    if peak:  # none where bf16 training was forced on a CPU that only emulates bf16
        figures["train_fraction_of_peak"] = figures["train_gflops"] / peak
    phase("floor", ["--floor-precision", figures["precision"]])
    if figures["floor_tokens_per_s"]:
        figures["speedup_over_floor"] = figures["train_tokens_per_s"] / figures["floor_tokens_per_s"]
    if args.compile:
        phase("compile")
    if args.model:
        phase("decode", ["--model", str(args.model)])
        for name in ("greedy", "beam5"):
            figures[f"int8_{name}_bleu_loss"] = figures[f"{name}_bleu"] - figures[f"int8_{name}_bleu"]
            if (theirs := figures.get(f"ct2_{name}_sentences_per_s")) is not None:
                for ours in (name, f"int8_{name}"):
                    figures[f"{ours}_over_ct2"] = figures[f"{ours}_sentences_per_s"] / theirs
                figures[f"int8_{name}_over_ct2_int8"] = (figures[f"int8_{name}_sentences_per_s"]
                                                         / figures[f"ct2_int8_{name}_sentences_per_s"])
    if args.budget_minutes:
        phase("budget", ["--budget-minutes", str(args.budget_minutes)])
    print(json.dumps({"phase": "summary", **figures}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
