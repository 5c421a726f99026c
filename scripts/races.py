"""The races of reliability round 4, with real processes and threads: `nmt import`s into one folder at once, a run
copied into the folder while an import works, an import SIGKILLed and the next one, the server's attribution
after training wrote a better checkpoint, and one `Run` attributing and translating from several threads.
Prints one row per case and exits non-zero if any outcome is not the promised one.

    python scripts/races.py --imports 4 --rounds 3 --seed 1

Needs transformers (the tests' small random-weight Marian folder) and captum (attribution). Every command has
a time limit, and the whole script a deadline (--minutes)."""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from nmt.runs.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))  # the toy task and the Marian folder are test fixtures
from concurrency import NMT, Case, nmt, one_line, report, start_server, wait_for  # noqa: E402
from toy import toy_config_dict, write_config  # noqa: E402
from toy_runs import TOY_TRANSFORMER  # noqa: E402

SOURCE = "the cat sits"


def marian_folder(root: Path) -> Path:
    from test_pretrained import build_marian  # the tests' small random-weight Marian folder (needs transformers)

    folder = root / "marian"
    if not folder.exists():
        build_marian(folder, shared=True, calibrate=False)
    return folder


def start_import(marian: Path, target: Path) -> subprocess.Popen:
    return subprocess.Popen([*NMT, "import", "--hf", str(marian), "--run-dir", str(target)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        out, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def import_race(marian: Path, target: Path, count: int, case: Case) -> None:
    """`count` imports of one Marian folder into one run directory at once: exactly one imports (exit 0), the
    others are refused in one line (exit 2), and the run translates."""
    results = [finished(p) for p in [start_import(marian, target) for _ in range(count)]]
    codes = sorted(r.returncode for r in results)
    refused = [r for r in results if r.returncode != 0]
    translated = nmt("translate", "--model", target, SOURCE)
    case.record(codes == [0] + [2] * (count - 1) and all(one_line(r) for r in refused) and translated.returncode == 0,
                f"exits {codes}: " + "; ".join(sorted({r.stderr.strip().split(": ", 2)[-1][:90] for r in refused})))


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_during_import(marian: Path, trained: Path, target: Path, case: Case) -> None:
    """An import stopped (SIGSTOP) once it holds the run's lock; a trained run's checkpoints are copied into the
    folder without the lock; let go, the import is refused in one line and the copy is as it was."""
    importer = start_import(marian, target)
    lock = RunDir(target).lock_path
    try:
        wait_for(lambda: f"nmt import, pid {importer.pid}" in (lock.read_text() if lock.exists() else "")
                 or importer.poll() is not None, 120, "the import's lock")
        importer.send_signal(signal.SIGSTOP)
        subprocess.run(["cp", "-r", str(RunDir(trained).checkpoints_dir), str(target)], check=True)
        copied = files_of(target / "checkpoints")
    finally:
        importer.send_signal(signal.SIGCONT)
    result = finished(importer)
    case.record(result.returncode == 2 and one_line(result) and files_of(target / "checkpoints") == copied,
                f"exit {result.returncode}: {result.stderr.strip().split(': ', 2)[-1][:90]}; the copy kept")


def killed_import(marian: Path, target: Path, rng: random.Random, case: Case) -> None:
    """An import SIGKILLed somewhere in its work, then another into the same folder: the lock died with the
    first, so the second imports (or, when the first had finished, is refused as the folder is a run)."""
    importer = start_import(marian, target)
    time.sleep(rng.uniform(0.5, 4.0))
    importer.send_signal(signal.SIGKILL)
    importer.wait(timeout=60)
    again = nmt("import", "--hf", marian, "--run-dir", target)
    translated = nmt("translate", "--model", target, SOURCE)
    refused_fairly = again.returncode == 2 and one_line(again) and "exists and is not empty" in again.stderr
    leftovers = [p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]
    case.record((again.returncode == 0 or refused_fairly) and translated.returncode == 0 and not leftovers,
                "imported after the kill" if again.returncode == 0 else "the killed import had finished: refused")
    subprocess.run(["rm", "-rf", str(target)], check=True)


def train(config: Path, steps: int) -> None:
    result = nmt("train", "--config", config, "--resume", "--set", f"training.max_steps={steps}", timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"training failed: {result.stderr.strip()[-300:]}")


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=120).read())


def served_attribution(config: Path, run: Path, case: Case) -> None:
    """The server serves the run's best checkpoint; training then writes more checkpoints, one of them better.
    The attribution /attention returns must be the served checkpoint's, as computed from it directly."""
    import nmt as api

    server, url = start_server(run)
    try:
        served = json.loads(urllib.request.urlopen(f"{url}/models", timeout=10).read())[0]["checkpoint"]
        before = len(RunDir(run).checkpoints())
        train(config, 2 * max(int(r.get("step", 0)) for r in RunDir(run).metrics()))
        best_now = api.load(run).checkpoint
        answer = post(f"{url}/attention", {"text": "ab ca de", "attribution": "integrated_gradients"})
        own = api.load(run, checkpoint=served).attribution("ab ca de", method="integrated_gradients")
        other = api.load(run, checkpoint=best_now).attribution("ab ca de", method="integrated_gradients")
        got = np.array(answer["attribution"]["weights"])
        same = got.shape == own.relevance.shape and np.allclose(got, own.relevance, atol=1e-4)
        differs = best_now != served and not (got.shape == other.relevance.shape
                                              and np.allclose(got, other.relevance, atol=1e-4))
        case.record(same and (differs or best_now == served),
                    f"served {served}, best after training {best_now} ({len(RunDir(run).checkpoints()) - before} "
                    f"new checkpoints): attribution {'of the served one' if same else 'NOT of the served one'}")
    finally:
        server.terminate()  # SIGTERM: the server closes its attribution child too
        server.wait(timeout=60)


def threads_on_one_run(run: Path, rounds: int, case: Case) -> None:
    """Attributions (both methods) and translations from several threads at once on one Run: no error, and
    each result equal to the same call made alone."""
    import nmt as api

    loaded = api.load(run)
    calls = {"translate": lambda: [t.text for t in loaded.translate(["ab ca de", "fo gu hi jo"], beam_size=3)],
             "input_x_gradient": lambda: loaded.attribution("ab ca de fo").relevance,
             "integrated_gradients": lambda: loaded.attribution("fo gu hi", method="integrated_gradients",
                                                                steps=16).relevance}
    alone = {name: call() for name, call in calls.items()}
    for _ in range(rounds):
        with ThreadPoolExecutor(max_workers=2 * len(calls)) as pool:
            futures = [(name, pool.submit(call)) for name, call in calls.items() for _ in range(2)]
            errors = [f"{name}: {type(e).__name__}: {e}"[:120] for name, f in futures if (e := f.exception(300))]
            equal = not errors and all(
                found == alone[name] if name == "translate" else np.array_equal(found, alone[name])
                for name, f in futures for found in [f.result()])
        case.record(equal, "; ".join(errors) or "every result equal to the call made alone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imports", type=int, default=4, help="racing imports per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=30, help="the whole script's deadline")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.monotonic()
    signal.alarm(int(args.minutes * 60))  # the deadline: SIGALRM ends the script
    names = ("nmt import x N into one folder", "a run copied in during an import", "SIGKILL of nmt import, then again",
             "served attribution after a better checkpoint", "attribution and translate in threads on one Run")
    cases = {name: Case(name) for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_config(root, toy_config_dict(root, model=TOY_TRANSFORMER,
                                                    tokenizer={"joint": True, "vocab_size": 60},
                                                    training={"validate_every": 20, "keep_last": 10, "lr": 0.004}))
        run = root / "run"
        train(config, 40)
        marian = marian_folder(root)
        for i in range(args.rounds):
            import_race(marian, root / f"race-{i}", args.imports, cases[names[0]])
            copy_during_import(marian, run, root / f"copied-{i}", cases[names[1]])
            killed_import(marian, root / f"killed-{i}", rng, cases[names[2]])
        served_attribution(config, run, cases[names[3]])
        threads_on_one_run(run, args.rounds, cases[names[4]])

    report(cases, started)

if __name__ == "__main__":
    main()
