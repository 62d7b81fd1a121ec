"""The password guessing brake (services/relay/guesses.py), driven with explicit times."""

from __future__ import annotations

import logging

import pytest

from services.relay import guesses
from services.relay.guesses import GuessGuard


def fail(guard: GuessGuard, times: int, now: float, user: str = "alice", source: str = "a") -> None:
    for _ in range(times):
        guard.failed(user, source, now, "SIP")


def test_blocks_after_the_limit_within_the_window_and_doubles_each_time() -> None:
    guard = GuessGuard(max_failures=3, block_seconds=10)
    fail(guard, 2, now=0)
    assert guard.blocked("alice", "a", 1) == 0
    fail(guard, 1, now=1)
    assert guard.blocked("ALICE", "a", 1) == 10  # user names compare case-insensitively
    assert guard.blocked("alice", "b", 1) == 0  # another address is not blocked
    assert guard.blocked("alice", "a", 11) == 0
    fail(guard, 3, now=12)
    assert guard.blocked("alice", "a", 12) == 20  # earned again: twice as long
    fail(guard, 3, now=40)
    assert guard.blocked("alice", "a", 40) == 40


def test_failures_spread_over_more_than_the_window_do_not_block() -> None:
    guard = GuessGuard(max_failures=3, block_seconds=10)
    for t in (0, 6, 12, 18, 24, 30):
        fail(guard, 1, now=t)
    assert guard.blocked("alice", "a", 30) == 0


def test_success_clears_and_zero_disables() -> None:
    guard = GuessGuard(max_failures=3, block_seconds=10)
    fail(guard, 2, now=0)
    guard.succeeded("alice", "a")
    fail(guard, 2, now=1)
    assert guard.blocked("alice", "a", 1) == 0
    off = GuessGuard(max_failures=0, block_seconds=10)
    fail(off, 100, now=0)
    assert off.blocked("alice", "a", 0) == 0


def test_one_warning_per_block_and_one_for_a_spread_guess(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = GuessGuard(max_failures=2, block_seconds=10)
    with caplog.at_level(logging.WARNING):
        for source in "abcdefghij":
            fail(guard, 2, now=0, source=source)
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "not checking" in m]) == 10
    assert (
        messages[-1]
        == "SIP: 20 failed password checks for alice within 10 s, from several addresses"
    )


def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guesses, "MAX_RECORDS", 100)
    guard = GuessGuard(max_failures=2, block_seconds=10)
    fail(guard, 2, now=0, source="blocked")
    for i in range(500):
        fail(guard, 1, now=1, user=f"user{i}", source=str(i))
    assert len(guard.pairs) <= 100 and len(guard.users) <= 100
    assert guard.blocked("alice", "blocked", 1) > 0  # a block is kept over a guess of names
