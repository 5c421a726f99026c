"""Load test of `nmt serve`: starts a real server process on 127.0.0.1, then measures
  1. one client at a time: single-sentence latency p50 / p95 and requests/s;
  2. N concurrent clients for a fixed time: requests/s, latency, errors;
  3. a soak of R requests from N clients: errors, and the server's resident memory after it against after
     warm-up;
  with --stream S, during phase 2: S streamed translations (POST /translate/stream) one after another, the
  time to each one's first token event and the gaps between its events, as the client reads them.
Every phase is bounded in requests and seconds; the server is stopped with SIGTERM at the end and must exit
cleanly. Prints a table and writes JSON.

    python scripts/serve_bench.py --model runs/enja_bahdanau [--clients 16] [--seconds 60] \
        [--soak-requests 10000] [--beam-size 1] [--stream 50] [--json serve_bench.json]

Sentences are the run's dev sources (its config's data.dev), one per request, cycled.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_server(models: list[Path], port: int, extra: list[str], log: Path) -> subprocess.Popen:
    """`nmt serve` on 127.0.0.1:port, its output in `log` (a file: a pipe nobody reads would fill up and
    stall the server once its access log passes 64 KB); returns once /health answers."""
    command = [sys.executable, "-m", "nmt", "serve", "--port", str(port), *extra]
    for model in models:
        command += ["--model", str(model)]
    with log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"nmt serve exited with {server.returncode}:\n{log.read_text()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("nmt serve did not answer /health within 120 s")


class Client:
    """One keep-alive connection sending single-sentence /translate requests."""

    def __init__(self, port: int, beam: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.beam = beam

    def translate(self, text: str) -> tuple[int, float]:
        body = json.dumps({"text": text, "beam_size": self.beam})
        start = time.perf_counter()
        try:
            self.connection.request("POST", "/translate", body, {"Content-Type": "application/json"})
            response = self.connection.getresponse()
            response.read()
            status = response.status
        except OSError:
            self.connection.close()
            status = 0  # a broken connection counts as an error
        return status, time.perf_counter() - start


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def load(port: int, sentences: list[str], clients: int, beam: int, seconds: float | None = None,
         requests: int | None = None) -> dict:
    """`clients` threads send requests until `seconds` pass or `requests` are sent in all."""
    latencies: list[float] = []
    errors = [0]
    sent = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds if seconds else float("inf")

    def work(index: int) -> None:
        client = Client(port, beam)
        i = index
        while time.monotonic() < deadline:
            with lock:
                if requests is not None and sent[0] >= requests:
                    return
                sent[0] += 1
            status, latency = client.translate(sentences[i % len(sentences)])
            i += clients
            with lock:
                latencies.append(latency)
                errors[0] += status != 200

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(latencies), "errors": errors[0], "seconds": wall,
            "requests_per_s": len(latencies) / wall, "p50_ms": percentile_ms(latencies, 0.5),
            "p95_ms": percentile_ms(latencies, 0.95)}


def event_times(port: int, text: str, beam: int) -> list[float] | None:
    """One POST /translate/stream: when each of its events was read (perf_counter seconds), the request's start
    first; None if it failed."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times = [time.perf_counter()]
    try:
        connection.request("POST", "/translate/stream", json.dumps({"text": text, "beam_size": beam}),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            return None
        times += [time.perf_counter() for line in iter(response.readline, b"") if line.startswith(b"event: ")]
    except OSError:
        return None
    finally:
        connection.close()
    return times


def streams(port: int, sentences: list[str], count: int, beam: int) -> dict:
    """`count` streamed translations one after another: time to the first token event, gaps between events."""
    first: list[float] = []
    gaps: list[float] = []
    errors = 0
    for i in range(count):
        times = event_times(port, sentences[i % len(sentences)], beam)
        if times is None or len(times) < 2:
            errors += 1
            continue
        first.append(times[1] - times[0])
        gaps += [later - earlier for earlier, later in itertools.pairwise(times[1:])]
    return {"requests": count, "errors": errors, "first_token_p50_ms": percentile_ms(first, 0.5),
            "first_token_p95_ms": percentile_ms(first, 0.95), "gap_p50_ms": percentile_ms(gaps, 0.5),
            "gap_p95_ms": percentile_ms(gaps, 0.95), "gap_max_ms": percentile_ms(gaps, 1.0)}


def dev_sentences(run: Path) -> list[str]:
    from nmt.data.splits import eval_set
    from nmt.runs.loading import load_run_config
    from nmt.runs.rundir import RunDir

    return eval_set(load_run_config(RunDir(run)).data).sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the concurrent phase")
    parser.add_argument("--single-requests", type=int, default=300, help="requests of the one-client phase")
    parser.add_argument("--soak-requests", type=int, default=10_000)
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--stream", type=int, default=0, help="streamed translations timed during the concurrent "
                        "phase, one after another")
    parser.add_argument("--server-option", action="append", default=[], help="passed to nmt serve, e.g. "
                        "--server-option=--batch-wait-ms=2")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sentences = dev_sentences(args.model)
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="serve-bench-")) / "server.log"
    server = start_server([args.model], port, args.server_option, log)
    figures: dict = {"model": str(args.model), "beam_size": args.beam_size, "cpu_count": os.cpu_count(),
                     "date": time.strftime("%Y-%m-%d")}
    try:
        load(port, sentences, 1, args.beam_size, requests=20)  # warm-up
        figures["single"] = load(port, sentences, 1, args.beam_size, requests=args.single_requests)
        figures["rss_after_warmup_mb"] = rss_mb(server.pid)
        streamer = threading.Thread(target=lambda: figures.update(
            stream=streams(port, sentences, args.stream, args.beam_size))) if args.stream else None
        if streamer:
            streamer.start()
        figures["concurrent"] = load(port, sentences, args.clients, args.beam_size, seconds=args.seconds)
        if streamer:
            streamer.join()
        figures["soak"] = load(port, sentences, args.clients, args.beam_size, requests=args.soak_requests,
                               seconds=max(args.seconds, 1.0) * 20)
        figures["rss_after_soak_mb"] = rss_mb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            figures["server_exit_code"] = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            figures["server_exit_code"] = "killed after 30 s"
        output = log.read_text()
        figures["server_log"] = str(log)
        figures["server_tracebacks"] = output.count("Traceback")
        # uvicorn finishes the lifespan, then re-raises SIGTERM: exit code -15 after this line is a clean stop
        figures["clean_shutdown"] = "Application shutdown complete" in output
    figures["throughput_ratio"] = figures["concurrent"]["requests_per_s"] / figures["single"]["requests_per_s"]
    figures["rss_ratio"] = figures["rss_after_soak_mb"] / figures["rss_after_warmup_mb"]
    for phase in ("single", "concurrent", "soak"):
        f = figures[phase]
        print(f"{phase:10}  clients {f['clients']:3}  requests {f['requests']:6}  errors {f['errors']:3}  "
              f"{f['requests_per_s']:8.1f} req/s  p50 {f['p50_ms']:7.1f} ms  p95 {f['p95_ms']:7.1f} ms")
    if "stream" in figures:
        f = figures["stream"]
        print(f"{'stream':10}  requests {f['requests']:6}  errors {f['errors']:3}  first token p50 "
              f"{f['first_token_p50_ms']:7.1f} ms  p95 {f['first_token_p95_ms']:7.1f} ms  gaps between events p50 "
              f"{f['gap_p50_ms']:6.1f} ms  p95 {f['gap_p95_ms']:6.1f} ms  max {f['gap_max_ms']:6.1f} ms")
    print(f"throughput {args.clients} clients / 1 client: {figures['throughput_ratio']:.2f}x; server RSS "
          f"{figures['rss_after_warmup_mb']:.0f} MB after warm-up, {figures['rss_after_soak_mb']:.0f} MB after the "
          f"soak ({figures['rss_ratio']:.3f}x); clean shutdown on SIGTERM: {figures['clean_shutdown']}, "
          f"{figures['server_tracebacks']} tracebacks in its log")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
