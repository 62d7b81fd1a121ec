"""The per-process counters (shared/stats.py): what a publisher would write."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.stats import MAX_LABELS, OTHER, ServiceStats, counters_of, merge


def test_labels_from_the_network_cannot_grow_a_family_without_bound() -> None:
    stats = ServiceStats("relay")
    stats.inc_label("sip_requests", "MESSAGE")
    for n in range(1000):
        stats.inc_label("sip_requests", f"X{n}")  # e.g. invented SIP methods
    stats.inc_label("sip_requests", "MESSAGE", 2)
    family = stats.snapshot()["sip_requests"]
    assert isinstance(family, dict)
    assert len(family) == MAX_LABELS + 1
    assert family["MESSAGE"] == 3
    assert family[OTHER] == 1000 - (MAX_LABELS - 1)
    assert sum(family.values()) == 1003


def test_counters_and_sources_add_up_like_the_api_sums_instances() -> None:
    @dataclass
    class WorkerStats:
        delivered: int = 0
        commands: dict[str, int] = field(default_factory=dict)
        enabled: bool = True  # not a counter

    worker = WorkerStats(delivered=4, commands={"join": 1})
    stats = ServiceStats("imc")
    stats.inc("delivered", 2)
    total = stats.snapshot()
    merge(total, counters_of(worker)())
    merge(total, {"commands": {"join": 2, "leave": 1}})
    assert total == {"delivered": 6, "commands": {"join": 3, "leave": 1}}

    class Notifier:
        def __init__(self) -> None:
            self.sent, self.failed, self.port = 3, 1, 25

    only = counters_of(Notifier(), sent="emails_sent", failed="emails_failed")()
    assert only == {"emails_sent": 3, "emails_failed": 1}
