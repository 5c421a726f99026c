"""nmt: neural machine translation with attention, from one YAML file to scored translations."""

__version__ = "0.1.0"
