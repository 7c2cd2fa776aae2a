"""For tests whose applications run on either loop (``conftest.BOTH_LOOPS``): trio, or
asyncio with the engine as its trio guest. Application code uses anyio (``anyio.sleep``
and friends work on both); what the application tells the test goes through a
:class:`Signal`, which it sets from either loop and the test waits for in trio."""

from __future__ import annotations

import trio


class Signal:
    """An event set by an application on trio or on asyncio (the same thread: the
    engine is asyncio's trio guest), waited for by the test in trio. ``times`` are
    the trio clock's readings at each ``set()`` (the virtual clock, under
    ``autojump_clock``), read in trio when the setting reaches it."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self.times: list[float] = []

    def set(self) -> None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # an asyncio task: reach trio through its token
            self._token.run_sync_soon(self._set)
        else:
            self._set()

    def _set(self) -> None:
        self.times.append(trio.current_time())
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()
