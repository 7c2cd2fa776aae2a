"""Flask under trioserve: with trioserve installed from its source tree
(``python -m pip install -e .``), ``python -m pip install flask``, then, from the
repository's root, ``trioserve examples.flask_app:app``.

The WSGI application runs in worker threads (``--wsgi-max-threads``, 40 by default),
so a slow view never blocks the server, while trioserve's deadlines still guard every
read and write on the client's connection. Try ``curl http://127.0.0.1:8000/`` and
``curl -d 'name=pen' http://127.0.0.1:8000/greet``. Behind a proxy that mounts the
application at ``/app``, pass ``--root-path /app`` and ``url_for`` builds the right
links.
"""

from __future__ import annotations

from flask import Flask, request, url_for

app = Flask(__name__)


@app.get("/")
def index() -> dict[str, str]:
    return {"hello": "from Flask on trioserve", "greet": url_for("greet")}


@app.post("/greet")
def greet() -> str:
    name = request.form.get("name", "stranger")
    return f"Hello, {name}!\n"
