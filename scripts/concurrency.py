"""Everything that may touch a run while it trains, at once, with real processes: a second trainer, average,
tune, export, translation of the export and the server during training, and SIGKILLs in the middle of
exports. Prints one row per case and exits non-zero if any outcome is not the promised one.

    python scripts/concurrency.py --exports-killed 4 --averages 6 --seed 1

The run is the toy reversal task (tests/toy.py) with a checkpoint every 4 steps and training.keep_last 1, so
checkpoints are published and pruned all the time while the side commands read them. Every command has a
time limit, and the whole script a deadline (--minutes).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from nmt.runs.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent

sys.path.insert(0, str(ROOT / "tests"))  # the toy task is a test fixture
from toy import toy_config_dict, write_config  # noqa: E402

NMT = [sys.executable, "-m", "nmt"]
TRAINING = {"max_steps": 100_000, "validate_every": 4, "log_every": 1, "keep_last": 1}


@dataclass
class Case:
    name: str
    tries: int = 0
    ok: int = 0
    notes: list[str] = field(default_factory=list)

    def record(self, passed: bool, note: str = "") -> None:
        self.tries += 1
        self.ok += passed
        if note and note not in self.notes:
            self.notes.append(note)


def nmt(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*NMT, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def one_line(result: subprocess.CompletedProcess) -> bool:
    """Refused as promised: exactly one `error:` line on stderr, no traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    return len(errors) == 1 and "Traceback" not in result.stderr


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what} after {seconds:.0f} s")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def second_trainer(config: Path, trainer: subprocess.Popen, case: Case) -> None:
    result = nmt("train", "--config", config, "--resume", timeout=120)
    case.record(result.returncode == 2 and one_line(result) and f"pid {trainer.pid}" in result.stderr
                and trainer.poll() is None, result.stderr.strip()[-160:])


def averages(run: Path, count: int, case: Case) -> None:
    for _ in range(count):
        result = nmt("average", "--model", run, "--last", "2")
        # keep_last 1 leaves two checkpoints (the newest and the best) or one, when the newest is the best
        refused_fairly = result.returncode != 0 and one_line(result) and "the run has 1 intact" in result.stderr
        case.record(result.returncode == 0 or refused_fairly,
                    "averaged" if result.returncode == 0 else result.stderr.strip()[-160:])


def tune(run: Path, case: Case) -> None:
    result = nmt("tune", "--model", run, "--beams", "1,2", "--length-penalties", "0,1", "--dry-run")
    case.record(result.returncode == 0, result.stderr.strip()[-160:] if result.returncode else "tuned")


def translate_export(run: Path) -> subprocess.CompletedProcess:
    return nmt("translate", "--model", run, "--runtime", "onnx", "ab ca de", timeout=120)


def decodes(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == 0 and len(result.stdout.splitlines()) == 1


def exports(run: Path, kills: int, rng: random.Random, case_export: Case, case_kill: Case) -> None:
    result = nmt("export", "--model", run, "--format", "onnx")
    decoded = translate_export(run)
    case_export.record(result.returncode == 0 and decodes(decoded),
                       "exported and decoded" if decodes(decoded) else (result.stderr + decoded.stderr).strip()[-160:])
    for _ in range(kills):
        started = subprocess.Popen([*NMT, "export", "--model", str(run), "--format", "onnx"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 6.0))  # the export's own work takes a few seconds: strike somewhere in it
        started.send_signal(signal.SIGKILL)
        started.wait(timeout=60)
        decoded = translate_export(run)
        # the old export or the new one, whole: it decodes; never a mix of two checkpoints decoded silently
        whole = decodes(decoded)
        case_kill.record(whole or (decoded.returncode != 0 and one_line(decoded)),
                         "decodes" if whole else decoded.stderr.strip()[-160:])


def serve(run: Path, case: Case) -> None:
    server, url = start_server(run)
    try:
        request = urllib.request.Request(f"{url}/translate", data=json.dumps({"text": "ab ca de"}).encode(),
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        server.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        server.wait(timeout=60)
        seconds = time.monotonic() - stopped
        case.record(isinstance(answer["translations"][0]["text"], str) and seconds < 10,
                    f"answered, exited {seconds:.1f} s after SIGTERM")
    finally:
        if server.poll() is None:
            server.kill()


def report(cases: dict[str, Case], started: float) -> None:
    """One row per case, then the verdict; exits non-zero if any case was not as promised or never tried."""
    print("| case | tries | as promised | outcome |")
    print("|---|---:|---:|---|")
    for case in cases.values():
        print(f"| {case.name} | {case.tries} | {case.ok} | {'; '.join(case.notes)[:300]} |")
    failed = [c.name for c in cases.values() if c.ok != c.tries or not c.tries]
    print("all cases as promised" if not failed else f"FAILED: {', '.join(failed)}",
          f"({time.monotonic() - started:.0f} s)")
    sys.exit(1 if failed else 0)


def start_server(run: Path) -> tuple[subprocess.Popen, str]:
    """`nmt serve` on a free port, once /health answers; returns the process and its URL."""
    port = free_port()
    server = subprocess.Popen([*NMT, "serve", "--model", str(run), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200
        except OSError:
            return server.poll() is not None
    wait_for(up, 120, "the server")
    return server, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exports-killed", type=int, default=4)
    parser.add_argument("--averages", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=20, help="the whole script's deadline")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.monotonic()
    signal.alarm(int(args.minutes * 60))  # the deadline: SIGALRM ends the script

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_config(root, toy_config_dict(root, training=TRAINING))
        run = RunDir(root / "run")
        trainer = subprocess.Popen([*NMT, "train", "--config", str(config)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        cases = {name: Case(name) for name in ("a second nmt train (--resume)", "nmt average --last 2",
                                               "nmt tune", "nmt export + translate --runtime onnx",
                                               "SIGKILL during nmt export, then translate --runtime onnx",
                                               "nmt serve: /translate, then SIGTERM", "the trainer afterwards")}
        names = list(cases)
        try:
            wait_for(lambda: len(run.checkpoints()) >= 2 or trainer.poll() is not None, 300, "two checkpoints")
            second_trainer(config, trainer, cases[names[0]])
            averages(run.path, args.averages, cases[names[1]])
            tune(run.path, cases[names[2]])
            exports(run.path, args.exports_killed, rng, cases[names[3]], cases[names[4]])
            serve(run.path, cases[names[5]])
            alive = trainer.poll() is None
            trainer.send_signal(signal.SIGTERM)
            code = trainer.wait(timeout=120)
            resumed = nmt("train", "--config", run.config_path, "--resume", "--set",
                          f"training.max_steps={max(int(r.get('step', 0)) for r in run.metrics()) + 2}")
            cases[names[6]].record(alive and code == 130 and resumed.returncode == 0,
                                   f"trained throughout, exit {code} on SIGTERM, resumed with exit "
                                   f"{resumed.returncode}")
        finally:
            if trainer.poll() is None:
                trainer.kill()

    report(cases, started)

if __name__ == "__main__":
    main()
