"""A run directory on disk: its file names, the checkpoint format, loading a run."""
