"""Random (version 4) UUIDs for cards and suggestions, from the operating system's random source.

``uuid.uuid4`` makes one ``getrandom`` system call per UUID, which on virtual machines is slow right after a
stretch of request work (figures in bench/README.md, fifth round). Each thread therefore reads the same source
4 KiB at a time and cuts its UUIDs from that block. A forked child starts with fresh blocks, so no two
processes hand out the same UUIDs.
"""
from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator

_UUIDS_PER_READ = 256
_local = threading.local()


def random_uuid() -> str:
    """A new random UUID as text, such as ``"3b241101-e2bb-4255-8caf-4136c566a962"``."""
    source = getattr(_local, "source", None)
    if source is None:
        source = _local.source = _from_blocks()
    return next(source)


def _from_blocks() -> Iterator[str]:
    while True:
        block = os.urandom(16 * _UUIDS_PER_READ)
        for start in range(0, len(block), 16):
            yield str(uuid.UUID(bytes=block[start : start + 16], version=4))


def _forget_blocks() -> None:
    global _local  # noqa: PLW0603 - a forked child drops its parent's blocks
    _local = threading.local()


os.register_at_fork(after_in_child=_forget_blocks)
