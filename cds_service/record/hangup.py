"""HTTP connections that hang up at the fetch's deadline, however slowly the server sends its response head.

The read timeout bounds each socket read, not the whole response: a server that sends its status line and
headers one byte at a time keeps every read within the timeout and would hold a fetch thread for hours (and, with
enough such calls, every thread of the pool). While a response head is read under a ``deadline``, a timer shuts
the socket down when the deadline passes, which ends the read at once, and the request fails as a read timeout
(urllib3 reports a ``TimeoutError`` from the connection as one). The body is read in steps that check the
deadline themselves (``FhirClient._read_body``).
"""
from __future__ import annotations

import contextlib
import contextvars
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("fetch_deadline", default=None)


@contextmanager
def deadline(moment: float) -> Iterator[None]:
    """Requests made inside hang up at ``moment`` (``time.monotonic()``) if their response head is still coming."""
    token = _deadline.set(moment)
    try:
        yield
    finally:
        _deadline.reset(token)


class _HangsUpAtDeadline:
    sock: socket.socket | None

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        moment = _deadline.get()
        sock = self.sock
        if moment is None or sock is None:
            return super().getresponse(*args, **kwargs)  # type: ignore[misc]
        hung_up = threading.Event()

        def hang_up() -> None:
            hung_up.set()
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(max(moment - time.monotonic(), 0.0), hang_up)
        timer.daemon = True
        timer.start()
        try:
            response = super().getresponse(*args, **kwargs)  # type: ignore[misc]
        except Exception as exc:
            if hung_up.is_set():
                raise TimeoutError("the response head had not arrived at the deadline") from exc
            raise
        finally:
            timer.cancel()
        if hung_up.is_set():  # what was read before the hang-up looked like a whole head: it is not
            raise TimeoutError("the response head had not arrived at the deadline")
        return response


class _HTTPConnection(_HangsUpAtDeadline, HTTPConnection):
    pass


class _HTTPSConnection(_HangsUpAtDeadline, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """A requests adapter whose connections hang up at the ``deadline`` the request is made under."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
