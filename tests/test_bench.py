"""scripts/bench.py on a CPU without native bf16 (AVX2 kernels, as an AVX2-only EPYC has): every key of its JSON
is there, and the bf16 peak is null with the reason instead of minutes of emulated matmuls."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from toy import toy_config_dict, write_config
from toy_runs import TOY_TRANSFORMER

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"config", "cpu", "cpu_threads", "torch", "date", "matmul_fp32_gflops", "bf16_matmul_slowdown",
        "matmul_bf16_gflops", "train_tokens_per_s", "train_gflops", "precision", "train_fraction_of_peak",
        "floor_tokens_per_s", "speedup_over_floor"}


@pytest.mark.slow  # about 25 s: three processes, and a 3-second matmul peak
def test_the_benchmark_reports_every_key_where_bf16_is_emulated(tmp_path):
    raw = toy_config_dict(tmp_path, model=TOY_TRANSFORMER, tokenizer={"joint": True, "vocab_size": 60},
                          training={"precision": "fp32"})
    out = tmp_path / "bench.json"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    command = [sys.executable, str(ROOT / "scripts/bench.py"), "--config", str(write_config(tmp_path, raw)),
               "--warmup", "1", "--steps", "2", "--json", str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert KEYS <= figures.keys(), KEYS - figures.keys()
    assert "AVX2" in figures["cpu"]
    if figures["matmul_bf16_gflops"] is None:  # emulated: skipped, and why
        assert "emulated" in figures["matmul_bf16_skipped"]
    assert figures["train_tokens_per_s"] > 0 and figures["floor_tokens_per_s"] > 0
    assert 0 < figures["train_fraction_of_peak"] < 1.5
