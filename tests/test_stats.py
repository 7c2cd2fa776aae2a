"""The counters and their snapshot name the same things."""

from __future__ import annotations

import dataclasses

from trioserve._stats import COUNTER_NAMES, Counters, ServerStatistics


def test_every_field_of_the_snapshot_but_one_is_a_counter() -> None:
    snapshot = {field.name for field in dataclasses.fields(ServerStatistics)}
    assert snapshot - set(COUNTER_NAMES) == {"connections_idle"}  # the tracker's
    assert set(Counters.__slots__) == set(COUNTER_NAMES)
    assert all(getattr(Counters(), name) == 0 for name in COUNTER_NAMES)


def test_snapshot_copies_every_counter() -> None:
    counters = Counters()
    for number, name in enumerate(COUNTER_NAMES, start=1):
        setattr(counters, name, number)
    snapshot = counters.snapshot(connections_idle=0)
    for number, name in enumerate(COUNTER_NAMES, start=1):
        assert getattr(snapshot, name) == number, name
