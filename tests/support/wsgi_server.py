"""Serve a Flask app built in the test process over real HTTP: werkzeug on 127.0.0.1, a free port, a thread."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask
from werkzeug.serving import make_server


@contextmanager
def running(app: Flask) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL. The app's database engine is disposed after."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        app.extensions["cds_service"].engine.dispose()
