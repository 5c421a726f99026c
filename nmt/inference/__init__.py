"""Decoding and what is built on it: search, translation, ensembles, runtimes, scores, tuning."""
