"""Worker subclasses for ``tests/test_gunicorn.py``: the interface named instead of
detected, a ``Config`` field gunicorn has no setting for, and the HTTP engine."""

from __future__ import annotations

from trioserve import Config
from trioserve.workers import TrioserveWorker


class SmallBodies(TrioserveWorker):
    interface = "asgi"

    def trioserve_config(self) -> Config:
        return super().trioserve_config().replace(max_body_size=16)


class PureH11(TrioserveWorker):
    http = "h11"


class CompiledH11(TrioserveWorker):
    http = "h11-mypyc"
