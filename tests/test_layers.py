"""The layers the import contracts promise (pyproject.toml, checked by `lint-imports` in `make lint`), seen
from a fresh interpreter: what importing the server and the decoder actually loads."""

import subprocess
import sys


def loaded_after(module: str) -> set[str]:
    """The top-level and nmt module names a fresh interpreter holds after importing `module`."""
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def test_serving_loads_no_plotting():
    loaded = loaded_after("nmt.serve.server")
    assert "nmt.serve.server" in loaded
    assert not {m for m in loaded if m.startswith(("matplotlib", "nmt.inspect.plots"))}


def test_decoding_loads_no_exporter_and_no_onnx():
    loaded = loaded_after("nmt.inference.translate")
    assert "nmt.inference.translate" in loaded
    assert not {m for m in loaded if m.startswith(("nmt.export", "onnx", "ctranslate2"))}
