"""The training loop, and what a torchrun job adds to it."""
