"""The counters and their snapshot name the same things."""

from __future__ import annotations

import dataclasses

from trioserve._stats import Counters, ServerStatistics


def test_every_counter_is_in_the_snapshot_and_nothing_else() -> None:
    counters = {field.name for field in dataclasses.fields(Counters)}
    snapshot = {field.name for field in dataclasses.fields(ServerStatistics)}
    assert snapshot - counters == {"connections_idle"}  # the tracker's, not a counter
    assert counters <= snapshot


def test_snapshot_copies_every_counter() -> None:
    counters = Counters()
    for number, field in enumerate(dataclasses.fields(Counters), start=1):
        setattr(counters, field.name, number)
    snapshot = counters.snapshot(connections_idle=0)
    for number, field in enumerate(dataclasses.fields(Counters), start=1):
        assert getattr(snapshot, field.name) == number, field.name
