"""Training progress as a bar in notebooks, as log lines everywhere.

In a Jupyter or Colab kernel, `bar` draws a `tqdm.auto` bar (an HTML widget where one is
available) that advances every step and shows the latest logged loss; elsewhere, and in
every process but the first, it does nothing and the trainer's log lines are the progress.
"""

from __future__ import annotations

import sys
from typing import Any


class _NoBar:
    """The bar's interface, doing nothing (command line, tests, other processes)."""

    def update(self, n: int = 1) -> None:
        del n

    def set_postfix(self, **values: Any) -> None:
        del values

    def close(self) -> None:
        pass


def in_notebook() -> bool:
    """Whether this process runs as a Jupyter/Colab kernel."""
    return "ipykernel" in sys.modules and hasattr(sys.modules.get("IPython"), "get_ipython")


def bar(total: int, initial: int = 0, lead: bool = True, enabled: bool | None = None) -> Any:
    """A progress bar over training steps.

    Args:
      total: steps of the run.
      initial: steps already done (a resumed run).
      lead: whether this is the process that reports (process 0).
      enabled: force the bar on or off; None: on in a notebook kernel.

    Returns:
      An object with `update(n)`, `set_postfix(**values)` and `close()`.
    """
    enabled = in_notebook() if enabled is None else enabled
    if not (enabled and lead):
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; a broken install still trains
        return _NoBar()
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
