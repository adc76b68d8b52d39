"""Delivery failure paths end to end (real Postgres, real local servers, the real deliverer): a stored
delivery type nobody sends, a webhook host that does not resolve, TLS that cannot be established, and
the database going away between sending a result and recording that it was sent."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from batch_pipeline.delivery.deliverer import deliver_batch
from batch_pipeline.url_policy import EgressPolicy
from tests.batch_pipeline.delivery.conftest import (
    attempts_of,
    batch_state,
    body_json,
    options,
    requests_of,
    result_line,
    rows,
    seed_batch,
    webhook,
)


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait for something the test caused (not for time to pass); fail loudly on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def run(db_url: str, batch_id: int, **kw: object):
    return asyncio.run(deliver_batch(db_url, batch_id, options(**kw)))


# --- a delivery type nobody sends ------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"type": "sqs", "queue_url": "https://sqs.example.com/1/q"},  # a type this version does not know
        {"webhook_url": "https://hooks.example.com/x"},  # no type at all
        ["webhook", "https://hooks.example.com/x"],  # not even an object
        "webhook",
    ],
    ids=["unknown-type", "no-type", "json-array", "json-string"],
)
def test_a_stored_unknown_delivery_type_fails_once_finally_and_the_batch_settles(
    db_url, receiver_factory, config
) -> None:
    rx = receiver_factory()
    # Inserted straight into the table: intake would refuse it, an older or newer version may not.
    batch_id, (bad, _good) = seed_batch(db_url, [config, webhook(rx.url)])
    report = run(db_url, batch_id, schedule=(0.0, 0.0, 0.0))  # retries would all be due in this run

    (attempt,) = attempts_of(db_url, bad)  # one attempt: a final failure, not retried
    assert attempt["outcome"] == "other"
    assert "unknown delivery type" in attempt["error_msg"]
    assert attempt["delivery_config"] == config  # the attempt keeps what it tried to deliver to
    bad_row, good_row = requests_of(db_url, batch_id)
    assert (bad_row["state"], bad_row["delivery_attempt_count"], bad_row["delivery_retries"]) == (
        "delivery_failed", 1, 0
    )  # fmt: skip
    assert good_row["state"] == "delivered" and rx.total() == 1  # the rest of the batch went out
    assert report.outcomes == {"other": 1, "success": 1}
    assert report.batch_state == batch_state(db_url, batch_id) == "partially_delivered"


def test_a_batch_of_only_unknown_types_settles_as_delivery_failed(db_url) -> None:
    batch_id, ids = seed_batch(db_url, [{"type": "sqs", "queue_url": "q"}] * 2)
    report = run(db_url, batch_id)
    assert report.attempts == 2 and report.batch_state == "delivery_failed"
    assert [r["state"] for r in requests_of(db_url, batch_id)] == ["delivery_failed"] * 2
    assert [len(attempts_of(db_url, rid)) for rid in ids] == [1, 1]


# --- a webhook host that does not resolve ----------------------------------------------------------


@pytest.mark.parametrize("block_private", [False, True], ids=["policy-off", "policy-on"])
def test_an_unresolvable_host_is_a_transient_connection_error_retried_on_the_schedule(
    db_url, block_private
) -> None:
    # .invalid is reserved (RFC 2606): no resolver may answer for it, so this fails the same way
    # everywhere, with or without a network.
    url = "http://batchman-delivery-test.invalid/hook"
    batch_id, (rid,) = seed_batch(db_url, [webhook(url)])
    # First retry due at once (this run makes it), the second an hour out (left to a later wave).
    report = run(db_url, batch_id, schedule=(0.0, 3600.0), policy=EgressPolicy(block_private))

    attempts = attempts_of(db_url, rid)
    assert [a["outcome"] for a in attempts] == ["connection_error"] * 2
    assert all(a["error_msg"].startswith("DNS: ") for a in attempts)
    assert all(a["http_status"] is None for a in attempts)
    (req,) = requests_of(db_url, batch_id)
    assert (req["state"], req["delivery_retries"], req["delivery_attempt_count"]) == (
        "openai_processed", 2, 2
    )  # fmt: skip
    wait = req["next_attempt_at"] - attempts[-1]["attempted_at"]
    assert timedelta(seconds=3590) < wait < timedelta(seconds=3610)  # the schedule's second step
    assert report.batch_state is None and batch_state(db_url, batch_id) == "delivering"


# --- TLS that cannot be established ----------------------------------------------------------------


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (so only its issuer is wrong, not its name) and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class TlsServer:
    """A loopback TLS server with a self-signed certificate. It records how each handshake ended and
    every byte of application data it receives (there should be none: the client must hang up first).
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.handshakes: list[str] = []  # "ok" or the server-side error
        self.received = b""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with contextlib.closing(conn):
                conn.settimeout(10)
                try:
                    tls = self.context.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    self.handshakes.append(f"{type(exc).__name__}: {exc}")
                    continue
                self.handshakes.append("ok")
                with contextlib.closing(tls), contextlib.suppress(OSError):
                    while data := tls.recv(65536):
                        self.received += data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone does not)
        self._listener.close()
        self._thread.join(10)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    server = TlsServer(*self_signed_certificate(tmp_path))
    try:
        yield server
    finally:
        server.close()


def test_a_self_signed_certificate_is_a_recorded_connection_error(db_url, tls_server) -> None:
    batch_id, (rid,) = seed_batch(db_url, [webhook(f"https://127.0.0.1:{tls_server.port}/hook")])
    run(db_url, batch_id, schedule=(3600.0,))

    (attempt,) = attempts_of(db_url, rid)
    assert attempt["outcome"] == "connection_error"
    assert "certificate verify failed" in attempt["error_msg"]
    assert "self-signed certificate" in attempt["error_msg"] or "self signed" in attempt["error_msg"]
    # The handshake really happened and the client refused it: not one byte of the result was sent.
    wait_for(lambda: tls_server.handshakes)  # the server thread may note it a moment after the client
    assert len(tls_server.handshakes) == 1 and tls_server.handshakes[0] != "ok"
    assert tls_server.received == b""
    (req,) = requests_of(db_url, batch_id)
    assert (req["state"], req["delivery_retries"]) == ("openai_processed", 1)  # retried later


def test_https_to_a_plain_http_port_is_a_recorded_connection_error(db_url, receiver_factory) -> None:
    rx = receiver_factory()  # a plain HTTP server: it never speaks TLS
    url = rx.url.replace("http://", "https://")
    batch_id, (rid,) = seed_batch(db_url, [webhook(url)])
    run(db_url, batch_id, disable_retry=True)

    (attempt,) = attempts_of(db_url, rid)
    assert attempt["outcome"] == "connection_error"
    assert "SSL" in attempt["error_msg"]
    assert attempt["http_status"] is None  # the server's plain-text 400 to the ClientHello is no answer
    assert rx.total() == 0  # nothing reached the handler
    assert requests_of(db_url, batch_id)[0]["state"] == "delivery_failed"


# --- the database goes away between send and record ------------------------------------------------

TERMINATE_OTHERS = """
SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""


def test_database_lost_after_sending_loses_nothing_and_redelivers_with_the_same_key(
    db_url, receiver_factory
) -> None:
    terminated: list[bool] = []

    def behave(_seen: int, _req):
        # The first POST has arrived: now kill the deliverer's two database sessions (one claims,
        # one records; the only others on this test's database) and wait until they are gone,
        # before answering 200.
        if not terminated:
            with psycopg.connect(db_url, autocommit=True) as conn:
                terminated.extend(r[0] for r in conn.execute(TERMINATE_OTHERS))
        return 200, {}

    rx = receiver_factory(behave)
    batch_id, ids = seed_batch(db_url, [webhook(rx.url)] * 3)
    with pytest.raises(psycopg.OperationalError):
        run(db_url, batch_id)
    assert terminated == [True, True]

    # Every result was sent and none recorded: all still claimed, under a live lease.
    assert rx.total() == 3 and all(len(rx.hits[str(rid)]) == 1 for rid in ids)
    assert rows(db_url, "SELECT count(*) AS n FROM batchman.delivery_attempts")[0]["n"] == 0
    claimed = rows(
        db_url,
        "SELECT state, claimed_until > now() AS live, delivery_attempt_count FROM batchman.requests"
        " WHERE batch_id = %s",
        (batch_id,),
    )
    assert claimed == [{"state": "delivering", "live": True, "delivery_attempt_count": 0}] * 3

    # While the lease runs, another run leaves the claims alone (no double send by two live runs).
    report = run(db_url, batch_id)
    assert report.attempts == 0 and report.batch_state is None and rx.total() == 3

    # The lease runs out (moved back rather than slept through): the next run sends them again.
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE batchman.requests SET claimed_until = now() - interval '1 second' WHERE batch_id = %s",
            (batch_id,),
        )
    report = run(db_url, batch_id)
    assert report.attempts == 3 and report.batch_state == "delivered"
    for i, rid in enumerate(ids):
        assert [a["outcome"] for a in attempts_of(db_url, rid)] == ["success"]
        hits = rx.hits[str(rid)]
        assert len(hits) == 2  # at least once: the receiver dedupes on the key
        assert {h.headers["idempotency-key"] for h in hits} == {f"batcher:req:{rid}"}
        assert all(body_json(h) == result_line(f"b{batch_id}-r{i}") for h in hits)
    assert {r["state"] for r in requests_of(db_url, batch_id)} == {"delivered"}
