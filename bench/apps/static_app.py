"""Starlette's ``StaticFiles`` over the directory ``bench/static.py`` fills, for uvicorn.

The directory comes from ``BENCH_STATIC_ROOT``; ``html=True`` so that ``/`` (its
``index.html``) answers 200 when the benchmark probes the server.
"""

import os

from starlette.staticfiles import StaticFiles

app = StaticFiles(directory=os.environ["BENCH_STATIC_ROOT"], html=True)
