"""Serve WSGI applications (PEP 3333), such as Flask or Django, with trioserve.

::

    import trio, trioserve
    from trioserve.wsgi import WSGIHandler
    from myproject import app          # any WSGI application, e.g. a Flask app

    trio.run(trioserve.serve, WSGIHandler(app), 8000)

The application runs in worker threads (at most ``max_threads`` at once), so it never
blocks the event loop; every read and write of the connection stays under the
server's deadlines. See ``WSGIHandler`` for the details.
"""

from ._handler import DEFAULT_MAX_THREADS as DEFAULT_MAX_THREADS
from ._handler import WSGIHandler as WSGIHandler
from ._handler import WSGIStatistics as WSGIStatistics

__all__ = ["DEFAULT_MAX_THREADS", "WSGIHandler", "WSGIStatistics"]
