"""The layers the import contracts promise (pyproject.toml, checked by `lint-imports` in `make lint`), seen
from a fresh interpreter: what importing the server and the decoder actually loads, and what the server holds
after it served a gradient attribution."""

import subprocess
import sys
import textwrap
from pathlib import Path

PLOTTING = ("matplotlib", "nmt.inspect.plots")


def loaded_by(code: str) -> set[str]:
    """The top-level and nmt module names a fresh interpreter holds after running `code`."""
    code += "\nimport sys; print('\\n'.join(sys.modules))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              timeout=300).stdout.split())


def loaded_after(module: str) -> set[str]:
    """What a fresh interpreter holds after importing `module`."""
    return loaded_by(f"import {module}")


def test_serving_loads_no_plotting():
    loaded = loaded_after("nmt.serve.server")
    assert "nmt.serve.server" in loaded
    assert not {m for m in loaded if m.startswith(PLOTTING)}


def test_serving_an_attribution_loads_no_plotting_and_no_captum(trained_run: Path):
    """captum imports matplotlib: the server leaves it to the model's attribution child (nmt.serve.attributor)."""
    loaded = loaded_by(textwrap.dedent(f"""
        from pathlib import Path
        from fastapi.testclient import TestClient
        from nmt.serve.server import create_app
        from nmt.serve.service import ModelRegistry
        with TestClient(create_app(ModelRegistry.load([("rnn", Path({str(trained_run)!r}))]))) as client:
            found = client.post("/attention", json={{"text": "ab ca de", "attribution": "input_x_gradient"}})
            assert found.status_code == 200 and found.json()["attribution"]["weights"], found.text
        """))
    assert "nmt.serve.attributor" in loaded
    assert not {m for m in loaded if m.startswith((*PLOTTING, "captum"))}


def test_decoding_loads_no_exporter_and_no_onnx():
    loaded = loaded_after("nmt.inference.translate")
    assert "nmt.inference.translate" in loaded
    assert not {m for m in loaded if m.startswith(("nmt.export", "onnx", "ctranslate2"))}
