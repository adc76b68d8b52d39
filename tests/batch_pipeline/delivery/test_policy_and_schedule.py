"""SSRF policy, retry schedule and signatures as units, plus the send-time SSRF check end to end."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import random
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from batch_pipeline.config import SigningSecretError
from batch_pipeline.delivery.backoff import next_delay, parse_retry_after
from batch_pipeline.delivery.deliverer import deliver_batch
from batch_pipeline.delivery.signing import Signer
from batch_pipeline.url_policy import EgressPolicy, denied_reason, intake_url_policy
from tests.batch_pipeline.delivery.conftest import attempts_of, options, requests_of, seed_batch, webhook
from tests.conftest import make_settings

DENIED = [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1",
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", DENIED)
def test_non_public_addresses_are_denied(address: str) -> None:
    assert denied_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert denied_reason(ipaddress.ip_address(address)) is None


def test_intake_policy_rejects_literal_and_internal_hosts_unless_allowed() -> None:
    policy = EgressPolicy(True, frozenset({"receiver.internal", "10.0.0.0/8"}))
    assert policy.url_reason("http://127.0.0.1:8080/x")
    assert policy.url_reason("http://[::1]/x")
    assert policy.url_reason("http://localhost/x")
    assert policy.url_reason("http://metadata.google.internal/x")
    assert policy.url_reason("http://receiver/x")  # single-label names are internal by construction
    assert policy.url_reason("https://hooks.example.com/x") is None
    assert policy.url_reason("http://receiver.internal/x") is None  # allow-listed name
    assert policy.url_reason("http://10.2.3.4/x") is None  # allow-listed range
    assert EgressPolicy(False).url_reason("http://127.0.0.1/x") is None  # off by default


def test_intake_url_policy_is_none_when_off_and_repeats_its_verdicts_when_on(tmp_path: Path) -> None:
    assert intake_url_policy(make_settings(tmp_path)) is None
    check = intake_url_policy(
        make_settings(tmp_path, webhook_block_private_networks=True, webhook_allowed_hosts="10.0.0.0/8")
    )
    assert check is not None
    for _ in range(3):  # the verdicts are remembered per URL; a remembered one is the same
        assert "127.0.0.1" in check("http://127.0.0.1/x")
        assert check("https://hooks.example.com/x") is None
        assert check("http://10.2.3.4/x") is None


def test_schedule_jitter_retry_after_and_exhaustion() -> None:
    schedule = (5.0, 300.0)
    assert next_delay(0, schedule, jitter=0) == 5.0
    assert next_delay(1, schedule, jitter=0) == 300.0
    assert next_delay(2, schedule, jitter=0) is None
    rng = random.Random(7)
    delays = {next_delay(1, schedule, 0.2, rng=rng) for _ in range(50)}
    assert all(240 <= d <= 360 for d in delays) and len(delays) > 40
    assert next_delay(0, schedule, jitter=0, retry_after=60) == 60  # Retry-After is a floor...
    assert next_delay(0, schedule, jitter=0, retry_after=10**9) == 300  # ...capped by the schedule
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert parse_retry_after("soon") is None


def test_signatures_match_the_reference_implementation() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = b'{"id":"batch_req_1","custom_id":"a"}'
    headers = Signer(secret).headers("batcher:req:1", body)
    assert Webhook(secret).verify(body, headers) == {"id": "batch_req_1", "custom_id": "a"}
    other = Signer("whsec_" + base64.b64encode(b"z" * 32).decode()).headers("batcher:req:1", body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, other)
    with pytest.raises(SigningSecretError):
        Signer("whsec_not base64!")


def test_send_time_check_blocks_names_resolving_to_loopback_unless_allowed(db_url, receiver_factory) -> None:
    rx = receiver_factory()
    by_name = rx.url.replace("127.0.0.1", "localhost")
    batch_id, ids = seed_batch(db_url, [webhook(by_name), webhook(rx.url)])
    asyncio.run(deliver_batch(db_url, batch_id, options(policy=EgressPolicy(True))))
    assert rx.total() == 0
    for rid in ids:
        (attempt,) = attempts_of(db_url, rid)
        assert attempt["outcome"] == "blocked_by_policy", attempt
    assert attempts_of(db_url, ids[0])[0]["error_msg"].startswith("blocked by WEBHOOK_BLOCK_PRIVATE_NETWORKS")
    assert [r["state"] for r in requests_of(db_url, batch_id)] == ["delivery_failed"] * 2  # final

    allowed = EgressPolicy(True, frozenset({"localhost", "127.0.0.1/32"}))
    batch_id, _ = seed_batch(db_url, [webhook(by_name), webhook(rx.url)])
    asyncio.run(deliver_batch(db_url, batch_id, options(policy=allowed)))
    assert rx.total() == 2
    assert [r["state"] for r in requests_of(db_url, batch_id)] == ["delivered"] * 2
