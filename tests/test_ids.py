"""Identifiers: unique, well-formed, and never the same in a forked child as in its parent."""

from __future__ import annotations

import os
import uuid

from pixelmill.ids import new_id, new_uuid4, random_bytes


def test_ids_are_unique_and_well_formed():
    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids, key=lambda i: i[:13])  # time-ordered by their first 48 bits
    rids = [new_uuid4() for _ in range(5000)]
    assert len(set(rids)) == len(rids)
    assert all(uuid.UUID(r).version == 4 and str(uuid.UUID(r)) == r for r in rids)


def test_random_bytes_are_handed_out_once_across_blocks():
    seen = [random_bytes(10) for _ in range(2000)]  # about five blocks
    assert len(set(seen)) == len(seen) and all(len(b) == 10 for b in seen)
    assert len(random_bytes(10_000)) == 10_000  # more than a block at once


def test_a_forked_child_never_hands_out_its_parents_next_ids():
    new_id()  # a block is held now, part used
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running the parent's cleanup
        try:
            os.write(write, "\n".join([new_id(), new_uuid4()]).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        child = f.read().split("\n")
    parent = [new_id(), new_uuid4()]
    assert child[0][14:] != parent[0][14:]  # the random part (the time part may agree)
    assert child[1] != parent[1]
