"""Progress bars that stay out of logs: drawn only when stderr is a terminal, so a redirected `nmt data`
or `nmt train` never writes carriage-return bars into a file."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress_bar(*, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar (same keyword arguments), disabled unless `enabled` and stderr is a terminal."""
    return tqdm(disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True, **kwargs)
