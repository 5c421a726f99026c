"""The REST API and the attention explorer page."""
