"""The worker: a consumer that holds leases, feeding a pool of processes or threads."""

from celeriac.worker.worker import Worker

__all__ = ["Worker"]
