"""Idempotency records on SQLite and PostgreSQL: claim, replay, mismatch, in-progress,
expiry, abandoned requests, and one winner among concurrent claims."""

from __future__ import annotations

import threading

import pytest

from pixelmill.accounts import idempotency as idem
from pixelmill.store import migrate
from pixelmill.store.db import Database


@pytest.fixture
def store(db_url):
    if db_url.startswith("sqlite"):
        migrate.upgrade(db_url)
    db = Database(db_url)
    yield idem.IdempotencyStore(db, ttl_s=3600, abandon_after_s=60)
    db.dispose()


def test_fingerprint_ignores_json_formatting_but_not_content():
    a = idem.fingerprint("POST", "/v1/flux-dev", b'{"prompt": "x", "width": 512}')
    assert a == idem.fingerprint("post", "/v1/flux-dev", b'{"width":512,\n "prompt":"x"}')
    assert a != idem.fingerprint("POST", "/v1/flux-dev", b'{"prompt": "y", "width": 512}')
    assert a != idem.fingerprint("POST", "/v1/flux-pro-1.1", b'{"prompt": "x", "width": 512}')
    assert a != idem.fingerprint("POST", "/v1/flux-dev?x=1", b'{"prompt": "x", "width": 512}')
    assert idem.fingerprint("POST", "/p", b"\xff\x00raw") == idem.fingerprint("POST", "/p", b"\xff\x00raw")


def test_fingerprint_of_multipart_ignores_the_boundary():
    def form(boundary: str, prompt: str) -> tuple[bytes, str]:
        body = f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n{prompt}\r\n--{boundary}--\r\n'
        return body.encode(), f"multipart/form-data; boundary={boundary}"

    a = idem.fingerprint("POST", "/v1/images/edits", *form("aaa111", "a cat"))
    assert a == idem.fingerprint("POST", "/v1/images/edits", *form("bbb222", "a cat"))
    assert a != idem.fingerprint("POST", "/v1/images/edits", *form("bbb222", "a dog"))


def test_parse_key_accepts_sf_strings_and_bare_tokens():
    assert idem.parse_key('"8e03978e-40d5"') == "8e03978e-40d5"
    assert idem.parse_key(" abc ") == "abc"
    assert idem.parse_key("k" * 255) == "k" * 255
    for bad in ("", '""', "k" * 256):
        with pytest.raises(ValueError):
            idem.parse_key(bad)


def test_claim_then_replay_mismatch_and_in_progress(store):
    claim = store.begin("acct", "key-1", "fp-a", now=1000.0)
    assert isinstance(claim, idem.Claim)
    assert isinstance(store.begin("acct", "key-1", "fp-a", now=1001.0), idem.InProgress)
    assert isinstance(store.begin("acct", "key-1", "fp-b", now=1001.0), idem.Mismatch)
    assert isinstance(store.begin("other-acct", "key-1", "fp-b", now=1001.0), idem.Claim)  # keys are per account

    store.complete(claim, 200, '{"id":"e1","prompt":"café"}'.encode(), {"content-type": "application/json"})
    replay = store.begin("acct", "key-1", "fp-a", now=1002.0)
    assert replay == idem.Replay(200, '{"id":"e1","prompt":"café"}'.encode(), {"content-type": "application/json"})
    assert isinstance(store.begin("acct", "key-1", "fp-b", now=1002.0), idem.Mismatch)


def test_discarded_key_can_be_used_again(store):
    claim = store.begin("acct", "k", "fp-a", now=1000.0)
    store.discard(claim)
    assert isinstance(store.begin("acct", "k", "fp-other", now=1001.0), idem.Claim)


def test_expired_record_is_replaced(store):
    claim = store.begin("acct", "k", "fp-a", now=1000.0)
    store.complete(claim, 500, b"boom", {})
    assert store.begin("acct", "k", "fp-a", now=1000.0 + 3599).status == 500
    fresh = store.begin("acct", "k", "fp-b", now=1000.0 + 3601)
    assert isinstance(fresh, idem.Claim)
    assert store.purge_expired(now=1000.0 + 3601 + 3600) == 1


def test_abandoned_processing_record_is_taken_over(store):
    stale = store.begin("acct", "k", "fp-a", now=1000.0)
    assert isinstance(store.begin("acct", "k", "fp-a", now=1059.0), idem.InProgress)
    taken = store.begin("acct", "k", "fp-a", now=1061.0)
    assert isinstance(taken, idem.Claim) and taken.record_id == stale.record_id
    # the stale request finishing late neither overwrites nor deletes the new owner's record
    store.complete(stale, 200, b"late", {})
    store.discard(stale)
    assert isinstance(store.begin("acct", "k", "fp-a", now=1062.0), idem.InProgress)
    store.complete(taken, 201, b"new", {})
    assert store.begin("acct", "k", "fp-a", now=1063.0).body == b"new"


def test_binary_body_round_trips(store):
    claim = store.begin("acct", "bin", "fp", now=1000.0)
    store.complete(claim, 200, b"\x89PNG\xff\x00", {"content-type": "image/png"})
    replay = store.begin("acct", "bin", "fp", now=1001.0)
    assert replay.body == b"\x89PNG\xff\x00" and replay.headers == {"content-type": "image/png"}


def test_one_claim_among_concurrent_requests(store):
    outcomes: list[object] = []
    barrier = threading.Barrier(16)

    def contend():
        barrier.wait()
        outcomes.append(store.begin("acct", "race", "fp"))

    threads = [threading.Thread(target=contend) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(o, idem.Claim) for o in outcomes) == 1
    assert sum(isinstance(o, idem.InProgress) for o in outcomes) == 15


def test_a_long_request_kept_alive_is_not_abandoned(store):
    claim = store.begin("acct", "slow", "fp", now=1000.0)
    assert store.touch(claim, now=1050.0)
    assert isinstance(store.begin("acct", "slow", "fp", now=1100.0), idem.InProgress)  # 50 s since the touch
    store.complete(claim, 200, b"done", {})
    assert store.begin("acct", "slow", "fp", now=1101.0).body == b"done"
    assert not store.touch(claim, now=1102.0)  # settled: nothing to keep alive


def _bind(store, claim, execution_id: str) -> None:
    with claim.lock, store.db.transaction() as conn:
        idem.bind(conn, claim, execution_id)
    claim.execution_id = execution_id


def test_a_record_bound_to_an_execution_resumes_instead_of_409(store):
    claim = store.begin("acct", "k", "fp-a", now=1000.0)
    _bind(store, claim, "exec-1")
    again = store.begin("acct", "k", "fp-a", now=1001.0)  # not abandoned yet, yet answered from the execution
    assert isinstance(again, idem.Claim) and again.resumed and again.execution_id == "exec-1"
    assert isinstance(store.begin("acct", "k", "fp-b", now=1002.0), idem.Mismatch)
    much_later = store.begin("acct", "k", "fp-a", now=1000.0 + 600)  # never taken over as abandoned: the work exists
    assert much_later.resumed and much_later.execution_id == "exec-1"
    assert store.settle(claim, 200, b"late", {}) == "lost"  # the first request lost the record to the resume
    assert store.settle(much_later, 200, b"ok", {}) == "saved"
    assert store.begin("acct", "k", "fp-a", now=1000.0 + 601) == idem.Replay(200, b"ok", {})


def test_binding_a_taken_over_record_fails(store):
    from pixelmill.errors import Conflict

    old = store.begin("acct", "k", "fp-a", now=1000.0)
    new = store.begin("acct", "k", "fp-a", now=1000.0 + 61)  # abandoned (nothing bound) and taken over
    assert isinstance(new, idem.Claim) and not new.resumed
    with pytest.raises(Conflict):
        _bind(store, old, "exec-old")
    _bind(store, new, "exec-new")


@pytest.mark.parametrize("status", [500, 502, 503, 504, 409, 429])
def test_retry_type_answers_are_never_saved(store, status):
    claim = store.begin("acct", "k", "fp-a", now=1000.0)
    assert store.settle(claim, status, b"try again", {}) == "forgotten"
    assert isinstance(store.begin("acct", "k", "fp-a", now=1001.0), idem.Claim)
    bound = store.begin("acct", "k2", "fp-a", now=1000.0)
    _bind(store, bound, "no-such-execution")  # its execution is gone: nothing to answer from
    assert store.settle(bound, status, b"try again", {}) == "forgotten"


def test_final_answers_are_saved_client_errors_of_nothing_forgotten(store):
    ok = store.begin("acct", "a", "fp", now=1000.0)
    assert store.settle(ok, 201, b"made", {}) == "saved"
    bad = store.begin("acct", "b", "fp", now=1000.0)
    assert store.settle(bad, 422, b"fix it", {}) == "forgotten"
    bound = store.begin("acct", "c", "fp", now=1000.0)
    _bind(store, bound, "exec-c")
    assert store.settle(bound, 400, b"final", {}) == "saved"
