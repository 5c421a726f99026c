"""nmt: neural machine translation with attention, from one YAML file to scored translations.

From Python: `run = nmt.load("runs/x")`, then `run.translate([...])`, `run.attention(text)` (`.plot()`, or shown
inline in Jupyter), `run.attribution(text)`, `run.score(...)`, `run.evaluate()`; `nmt.train(config)` and
`nmt.compare(runs)`. The API is imported on first use, so `import nmt` stays cheap (torch loads with `nmt.load`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["AttentionMap", "AttentionView", "AttributionView", "Comparison", "Evaluation", "Hypothesis", "Run",
           "Translation", "compare", "load", "train", "__version__"]

if TYPE_CHECKING:
    from nmt.api import (
        AttentionMap,
        AttentionView,
        AttributionView,
        Comparison,
        Evaluation,
        Hypothesis,
        Run,
        Translation,
        compare,
        load,
        train,
    )


def __getattr__(name: str) -> Any:
    """PEP 562: the API's names, imported when first asked for."""
    if name in __all__:
        import nmt.api

        return getattr(nmt.api, name)
    raise AttributeError(f"module 'nmt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
