"""A small Flask application: routes, JSON, a streamed response and a file upload."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from flask import Flask, Response, jsonify, request, stream_with_context, url_for

app = Flask(__name__)


@app.get("/")
def index() -> str:
    return "Hello from Flask"


@app.get("/items/<int:item_id>")
def item(item_id: int) -> Response:
    return jsonify(
        id=item_id,
        q=request.args.get("q"),
        url=url_for("item", item_id=item_id),
        remote_addr=request.remote_addr,
        script_root=request.script_root,
    )


@app.post("/echo-json")
def echo_json() -> Response:
    return jsonify(received=request.get_json())


@app.get("/stream")
def stream() -> Response:
    count = request.args.get("n", 3, type=int)

    @stream_with_context
    def generate() -> Iterator[str]:
        # request is the request context pushed by stream_with_context, here in the
        # worker thread, while the response streams.
        prefix = request.args.get("prefix", "chunk")
        for i in range(count):
            yield f"{prefix} {i}\n"

    return Response(generate(), mimetype="text/plain")


@app.post("/upload")
def upload() -> Response:
    file = request.files["file"]
    data = file.read()
    return jsonify(
        filename=file.filename,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        note=request.form.get("note"),
    )


@app.get("/boom")
def boom() -> str:
    raise RuntimeError("boom")
