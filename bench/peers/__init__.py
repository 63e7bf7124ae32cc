"""The peers' side of ``python3 dev.py bench --peers``: Celery, Huey, Dramatiq and taskiq.

These modules run only inside the peers' own virtual environment (``.bench/peers-venv``,
made by ``bench/peers_driver.py``), never in the project's: the worker processes import
them as top-level modules (``bench/peers`` is their ``PYTHONPATH``), and ``runner.py``
measures enqueue and round trip, printing JSON for the driver.

Every peer's no-op task does one ``INCR`` on a counter (``peercommon.DONE_KEY``), which is how
the driver sees a drain finish the same way for all of them.
"""
