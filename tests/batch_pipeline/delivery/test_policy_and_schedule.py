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
from batch_pipeline.url_policy import EgressPolicy, denied_reason, intake_url_policy, ipv4_number
from tests.batch_pipeline.delivery.conftest import attempts_of, options, requests_of, seed_batch, webhook
from tests.conftest import make_settings

DENIED = [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1",
    # IPv6 forms that embed (and lead to) an IPv4 address: checked as that address, and their ranges
    "::127.0.0.1", "::169.254.169.254", "64:ff9b:1::7f00:1", "64:ff9b:1::808:808", "2002:7f00:1::",
    "2002:a00:1::1", "2002:808:808::",
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
# Hosts that are 127.0.0.1 (or another non-public address) to inet_aton/getaddrinfo and to browsers.
LOOPBACK_IN_DISGUISE = [
    "127.1", "0177.0.0.1", "2130706433", "0x7f.1", "0x7f000001", "0x7F.0.0.1", "127.0.0.1.", "017700000001",
    "127.0.1", "[64:ff9b:1::7f00:1]", "[2002:7f00:1::]", "[::127.0.0.1]", "[::ffff:127.1.2.3]",
]  # fmt: skip


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


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0X7F.0.0.01", "127.0.0.1"),
        ("10.1.2", "10.1.0.2"),
        ("0x", "0.0.0.0"),
        ("127.0.0.1.", "127.0.0.1"),
        ("134744072", "8.8.8.8"),
        ("255.255.255.255", "255.255.255.255"),
        ("4294967295", "255.255.255.255"),
    ],
)
def test_ipv4_numbers_are_read_as_inet_aton_reads_them(host: str, address: str) -> None:
    assert ipv4_number(host) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize(
    "host",
    [
        "hooks.example.com",
        "1.2.3.4.5",
        "256.1.1.1",
        "1.16777216",
        "4294967296",
        "08.1",
        "0x1g",
        "1..2",
        "",
        "١٢٧.1",
    ],
)
def test_other_hosts_are_no_ipv4_number(host: str) -> None:
    assert ipv4_number(host) is None


@pytest.mark.parametrize("host", LOOPBACK_IN_DISGUISE)
def test_intake_policy_sees_through_ipv4_number_forms_and_embedded_ipv4(host: str) -> None:
    reason = EgressPolicy(True).url_reason(f"http://{host}:8080/hook")
    assert reason is not None and "127." in reason, reason
    if not host.startswith("["):  # an allow-listed range covers its addresses however they are written
        assert EgressPolicy(True, frozenset({"127.0.0.0/8"})).url_reason(f"http://{host}/") is None


def test_intake_policy_refuses_hosts_ending_in_a_number_that_is_no_address() -> None:
    policy = EgressPolicy(True)
    assert policy.url_reason("http://256.1.1.1/x")  # to a resolver, a name that cannot exist
    assert policy.url_reason("http://hooks.0x10/x")
    assert policy.url_reason("http://134744072/x") is None  # 8.8.8.8
    assert policy.url_reason("http://[::ffff:8.8.8.8]/x") is None
    assert policy.url_reason("http://1e3.example.com/x") is None


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


def test_send_time_check_blocks_disguised_loopback_as_final_blocked_by_policy(
    db_url, receiver_factory
) -> None:
    # These used to be refused by aiohttp as "not a canonical IPv4 address" (a retried ``other``) or
    # connected to (the IPv6 forms): now each is one final blocked_by_policy attempt.
    rx = receiver_factory()
    urls = [rx.url.replace("127.0.0.1", host) for host in LOOPBACK_IN_DISGUISE]
    batch_id, ids = seed_batch(db_url, [webhook(u) for u in urls])
    asyncio.run(deliver_batch(db_url, batch_id, options(policy=EgressPolicy(True), schedule=(0.0, 0.0))))
    assert rx.total() == 0
    for url, rid in zip(urls, ids, strict=True):
        attempts = attempts_of(db_url, rid)
        assert [a["outcome"] for a in attempts] == ["blocked_by_policy"], (url, attempts)
        assert attempts[0]["error_msg"].startswith("blocked by WEBHOOK_BLOCK_PRIVATE_NETWORKS"), url
    assert [r["state"] for r in requests_of(db_url, batch_id)] == ["delivery_failed"] * len(urls)


def test_a_url_aiohttp_refuses_is_a_final_other_not_retried(db_url, receiver_factory) -> None:
    # Policy off: 127.1 is not blocked, but aiohttp will not connect to a non-canonical IPv4 host, now
    # or on any retry.
    rx = receiver_factory()
    batch_id, (rid,) = seed_batch(db_url, [webhook(rx.url.replace("127.0.0.1", "127.1"))])
    asyncio.run(deliver_batch(db_url, batch_id, options(schedule=(0.0, 0.0))))
    assert [a["outcome"] for a in attempts_of(db_url, rid)] == ["other"]
    assert [r["state"] for r in requests_of(db_url, batch_id)] == ["delivery_failed"]
