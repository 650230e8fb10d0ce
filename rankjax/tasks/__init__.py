"""Tasks by name (`config.task`): what each kind of training brings to the one loop.

* `ranking` (default): feature and text rankers over query lists (`tasks/ranking.py`);
* `retrieval`: two-tower, DCN and sequential recommenders over interaction logs
  (`tasks/retrieval.py`, with `two_tower.py`, `dcn.py`, `sequential.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rankjax.tasks import ranking, retrieval
from rankjax.types import Run, Task

TASKS: dict[str, Task] = {
    ranking.TASK.name: ranking.TASK,
    retrieval.TASK.name: retrieval.TASK,
}


def get(config: Mapping[str, Any]) -> Task:
    """The task `config.task` names (default "ranking").

    Raises:
      ValueError: an unknown name, listing the valid ones.
    """
    name = config.get("task", "ranking")
    if name not in TASKS:
        raise ValueError(f"config task={name!r}; valid: {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Run", "Task", "get"]
