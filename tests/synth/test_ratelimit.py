import asyncio
import email.utils
import time

import pytest

from synth.ratelimit import AdaptiveLimit, TokenBucket, retry_after_s


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "250ms"}, 1.0),
        ({"x-ratelimit-reset-tokens": "1h2m3.5s"}, 3723.5),
        ({"Retry-After": "soon"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_forms(headers, expected):
    assert retry_after_s(headers) == expected


def test_retry_after_http_date():
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= retry_after_s({"Retry-After": date}, now=now) <= 31
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert retry_after_s({"Retry-After": past}, now=now) == 0.0


def test_token_bucket_never_exceeds_burst_plus_rate():
    rate, burst = 50.0, 3

    async def run():
        bucket = TokenBucket(rate, burst)
        stamps = []
        for _ in range(40):
            await bucket.acquire(1)
            stamps.append(time.monotonic())
        return stamps

    stamps = asyncio.run(run())
    for i in range(len(stamps)):
        for j in range(i, len(stamps)):
            assert (j - i + 1) <= burst + rate * (stamps[j] - stamps[i]) + 1e-6 + 0.5
    assert stamps[-1] - stamps[0] >= (40 - burst) / rate * 0.95


def test_token_bucket_debt_after_reconciliation_delays_the_next_request():
    async def run():
        bucket = TokenBucket(100.0, 10)
        await bucket.acquire(10)
        bucket.adjust(10)  # the server counted 10 more than estimated: 10 tokens in debt
        t = time.monotonic()
        await bucket.acquire(5)  # needs 15 tokens of refill at 100/s
        return time.monotonic() - t

    assert asyncio.run(run()) >= 0.14


def test_adaptive_limit_halves_on_overload_and_ramps_up():
    async def run():
        limit = AdaptiveLimit(maximum=16, minimum=2, cooldown_s=0.0)
        limit.on_overload()
        assert limit.limit == 8
        limit.on_overload()
        limit.on_overload()
        limit.on_overload()
        assert limit.limit == 2  # never below the minimum
        for _ in range(2):
            limit.on_success()
        assert limit.limit == 3  # one more after a window of successes
        for _ in range(200):
            limit.on_success()
        assert limit.limit == 16  # ...up to the maximum
        # acquire blocks at the limit until a release
        limit.limit = 1
        await limit.acquire()
        waiter = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()
        await limit.release()
        await asyncio.wait_for(waiter, 1)
        assert limit.active == 1

    asyncio.run(run())


def test_overload_cooldown_counts_a_burst_of_429s_once():
    limit = AdaptiveLimit(maximum=64, cooldown_s=60)
    for _ in range(10):
        limit.on_overload()
    assert limit.limit == 32
