"""Card and suggestion UUIDs: random version 4 UUIDs, never repeated across threads or forked workers."""
from __future__ import annotations

import os
import threading
import uuid

from cds_service.rules.uuids import random_uuid


def test_uuids_are_version_4_and_distinct_across_blocks() -> None:
    made = [random_uuid() for _ in range(1000)]  # several 256-UUID blocks
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_threads_cut_distinct_uuids() -> None:
    made: list[list[str]] = [[] for _ in range(4)]

    def cut(into: list[str]) -> None:
        into.extend(random_uuid() for _ in range(300))

    threads = [threading.Thread(target=cut, args=(into,)) for into in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [u for into in made for u in into]
    assert len(set(every)) == len(every) == 1200


def test_a_forked_worker_does_not_repeat_the_parents_uuids() -> None:
    random_uuid()  # the parent now holds a block with UUIDs still to hand out
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # gunicorn forks its workers after the master has started
        try:  # the child must never return into pytest, whatever happens
            os.write(writing, "".join(random_uuid() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(writing)
    os.waitpid(child, 0)
    with os.fdopen(reading) as pipe:
        from_child = pipe.read()
    from_parent = [random_uuid() for _ in range(3)]
    assert len(from_child) == 3 * 36
    assert not any(u in from_child for u in from_parent)
