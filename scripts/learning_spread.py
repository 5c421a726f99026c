"""The spread behind the suite's learning thresholds: train the tests' toy runs (tests/toy_runs.py), the
attention learning tests (tests/test_learning.py) and the guided-alignment test's two runs
(tests/test_guided_alignment.py: the guided head's AER with and without guidance) over several seeds and CPU
kernel paths, and print what each reached, so a threshold can be set clearly below the worst.

    python scripts/learning_spread.py [--seeds 7 8 9] [--capabilities native avx2 default] [--what rnn transformer]

Each combination runs in its own process with ATEN_CPU_CAPABILITY set ('native' leaves it unset: the best
path this CPU has), one after another (never two at a time on a 2-core machine). Prints one row per run:
what, kernel path, seed, the score at each validation, and at the end the worst per (what) over all rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
LEARNING = ["bahdanau", "dot", "general", "concat", "multihead"]


def child(what: str, seed: int) -> dict:
    """Train one thing in this process and return what it reached."""
    sys.path.insert(0, str(TESTS))
    import torch

    if what in ("rnn", "transformer"):
        from toy_runs import toy_run_config

        from nmt.config import load_config
        from nmt.runs.rundir import RunDir
        from nmt.training.recipe import train

        with tempfile.TemporaryDirectory() as root:
            result = train(load_config(toy_run_config(Path(root), what, seed)), show_progress=False)
            scores = [r["dev_bleu"] for r in RunDir(result.run_dir).metrics() if "dev_bleu" in r]
        return {"scores": scores, "worst": min(scores[-1:]), "cpu": torch.backends.cpu.get_cpu_capability()}
    if what == "guided":
        from test_guided_alignment import guided_head_aer

        with tempfile.TemporaryDirectory() as root:
            unguided, guided = (guided_head_aer(Path(root) / str(on), on, seed) for on in (False, True))
        return {"scores": [f"AER unguided {unguided:.3f}, guided {guided:.3f}"], "worst": guided,
                "cpu": torch.backends.cpu.get_cpu_capability()}
    from test_learning import learn_to_reverse

    steps, accuracy, _ = learn_to_reverse(what, seed)
    return {"scores": [f"{accuracy:.3f} @ {steps} steps"], "worst": steps,
            "cpu": torch.backends.cpu.get_cpu_capability()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--capabilities", nargs="+", default=["native", "avx2", "default"])
    parser.add_argument("--what", nargs="+", default=["rnn", "transformer", *LEARNING, "guided"],
                        help=f"rnn / transformer (the trained fixtures: final dev BLEU), an attention type of "
                             f"the learning test ({', '.join(LEARNING)}: steps to 95%% exact match) or guided "
                             "(the guided head's AER)")
    parser.add_argument("--child", nargs=2, metavar=("WHAT", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return 0
    worst: dict[str, list] = {}
    for what in args.what:
        for capability in args.capabilities:
            env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
            if capability != "native":
                env["ATEN_CPU_CAPABILITY"] = capability
            for seed in args.seeds:
                done = subprocess.run([sys.executable, __file__, "--child", what, str(seed)], env=env,
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{what}\t{capability}\t{seed}\tfailed: {done.stderr.strip().splitlines()[-1:]}")
                    continue
                found = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{what}\t{capability} ({found['cpu']})\tseed {seed}\t{found['scores']}", flush=True)
                worst.setdefault(what, []).append(found["worst"])
    for what, values in worst.items():
        pick = max if what in (*LEARNING, "guided") else min  # most steps / highest AER / lowest final BLEU
        print(f"worst {what}: {pick(values)} over {len(values)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
