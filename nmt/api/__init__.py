"""The public Python API (`nmt.load`, `nmt.train`, `nmt.compare`), exported by `nmt` itself."""

from nmt.api.run import Comparison, Evaluation, Hypothesis, Run, Translation, compare, load, train
from nmt.api.views import AttentionMap, AttentionView
from nmt.inspect.attribution import AttributionView

__all__ = ["AttentionMap", "AttentionView", "AttributionView", "Comparison", "Evaluation", "Hypothesis", "Run",
           "Translation", "compare", "load", "train"]
