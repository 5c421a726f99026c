"""Progress bars that stay out of logs: drawn only when stderr is a terminal or in a Jupyter notebook (a
widget there), so a redirected `nmt data` or `nmt train` never writes carriage-return bars into a file."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def _in_notebook() -> bool:
    """A Jupyter kernel: stderr is no terminal there, yet tqdm.auto draws a widget."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


def progress_bar(*, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar (same keyword arguments), disabled unless `enabled` and stderr is a terminal or a notebook's."""
    return tqdm(disable=not (enabled and (sys.stderr.isatty() or _in_notebook())), dynamic_ncols=True, **kwargs)
