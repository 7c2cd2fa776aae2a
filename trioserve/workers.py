"""Run trioserve under gunicorn: ``gunicorn -k trioserve.workers.TrioserveWorker app:app``.

gunicorn's arbiter binds the sockets, forks the workers, watches their heartbeat and
sends the signals; each worker serves ASGI, WSGI or native applications with
trioserve on the arbiter's sockets. Needs gunicorn (``pip install
'trioserve[gunicorn]'``). See docs/gunicorn.md for what is honoured.
"""

from ._gunicorn import TrioserveWorker as TrioserveWorker

__all__ = ["TrioserveWorker"]
