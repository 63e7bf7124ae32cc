"""Monitoring: the picture of workers and tasks that events give (``state.py``), and the
command-line views and commands over it (``commands.py``: inspect, control, status;
``screen.py``: events; ``queues.py``: queues and dead letters)."""

from celeriac.monitor.state import State, TaskInfo, WorkerInfo

__all__ = ["State", "TaskInfo", "WorkerInfo"]
