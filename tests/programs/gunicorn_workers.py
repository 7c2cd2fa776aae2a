"""A worker subclass for ``tests/test_gunicorn.py``: the interface named instead of
detected, and a ``Config`` field gunicorn has no setting for."""

from __future__ import annotations

from trioserve import Config
from trioserve.workers import TrioserveWorker


class SmallBodies(TrioserveWorker):
    interface = "asgi"

    def trioserve_config(self) -> Config:
        return super().trioserve_config().replace(max_body_size=16)
