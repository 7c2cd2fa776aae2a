"""The ASGI ``lifespan`` protocol: startup before serving, shutdown after draining.

Rules for this module:
1. The application's lifespan call runs in one task for the server's lifetime, in the
   adapter's host nursery, so startup and shutdown run in the same task and any
   context it sets up (a database pool's tasks) lives as long as the server.
2. ``startup()`` returns once the application answered ``lifespan.startup.complete``,
   or once it showed it does not speak lifespan (mode ``auto``: it raised or returned
   before sending anything, spec "Scope"). Every other outcome raises
   :class:`LifespanFailure` with the application's message, so nothing is served.
3. Shutdown problems are logged, never raised: by then the server has stopped and
   there is nobody left to tell but the log.
"""

from __future__ import annotations

import enum
import logging
from typing import Final, Literal

import trio

from .._errors import StartupError
from .._logging import error_logger
from ._loops import explain_asyncio_failure
from ._types import ASGI_VERSION, ASGIApp, Message, Scope

__all__ = ["LifespanFailure", "LifespanMode", "LifespanProtocol"]

LifespanMode = Literal["auto", "on", "off"]

#: Seconds the application gets to answer ``lifespan.shutdown`` (as long as the drain of
#: its request tasks before it, and Config.shutdown_timeout's default).
SHUTDOWN_TIMEOUT: Final = 30.0
#: The lifespan sub-specification version spoken here (2.0 added ``startup.failed``
#: and ``shutdown.failed``; ``state`` came later without a version bump).
LIFESPAN_SPEC_VERSION: Final = "2.0"


class LifespanFailure(StartupError):
    """The ASGI application's lifespan startup failed; nothing was served.

    Raised on ``lifespan.startup.failed`` (``message`` is the application's message),
    and, with ``lifespan="on"``, when the application raised or returned instead of
    completing startup. A :class:`trioserve.StartupError`, so ``trioserve.serve``
    raises it as is and ``trioserve.run`` prints it and returns exit status 1.

    Attributes:
        message: the application's own message (``""`` when it gave none).
    """

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        self.message = message
        super().__init__(
            detail if detail is not None else f"ASGI lifespan startup failed: {message}"
        )


class _Phase(enum.IntEnum):
    """What the application has done so far, in order (compared with ``max``)."""

    NEW = 0  # startup not yet answered
    STARTED = 1  # lifespan.startup.complete received
    SHUTTING_DOWN = 2  # lifespan.shutdown delivered
    OVER = 3  # answered shutdown, failed startup, or gone


class LifespanProtocol:
    """Drives one application's ``lifespan`` scope (see :meth:`startup`, :meth:`shutdown`)."""

    __slots__ = (
        "_app",
        "_app_done",
        "_error",
        "_failed_message",
        "_mode",
        "_phase",
        "_progress",
        "_received",
        "_sent_anything",
        "_shutdown_requested",
        "_state",
    )

    def __init__(self, app: ASGIApp, state: dict[str, object], mode: LifespanMode) -> None:
        self._app = app
        self._state = state
        self._mode = mode
        self._phase = _Phase.NEW
        self._received = 0
        self._sent_anything = False
        self._failed_message: str | None = None
        self._error: Exception | None = None
        self._app_done = False
        self._progress = trio.Event()  # replaced after each wait: "something happened"
        self._shutdown_requested = trio.Event()

    async def startup(self, nursery: trio.Nursery) -> bool:
        """Start the lifespan task in ``nursery`` and wait for startup to finish.

        Returns:
            True if the application completed startup; False if it does not speak
            lifespan (``auto`` only), in which case :meth:`shutdown` does nothing.

        Raises:
            LifespanFailure: startup failed (see the class).
        """
        nursery.start_soon(self._run, name="asgi-lifespan")
        while self._phase == _Phase.NEW and not self._app_done:
            await self._wait_progress()
        if self._failed_message is not None:
            raise LifespanFailure(self._failed_message)
        if self._phase == _Phase.STARTED:
            return True
        # The application raised or returned without answering startup.
        error = self._error
        if self._sent_anything or self._mode == "on":
            what = f"raised {error!r}" if error is not None else "returned"
            raise LifespanFailure(
                "" if error is None else repr(error),
                detail=f"ASGI lifespan startup failed: the application {what} "
                "instead of sending lifespan.startup.complete",
            ) from error
        # Spec: an application that raises on the lifespan scope (or simply returns)
        # does not support lifespan; the server goes on without it.
        error_logger.info(
            "ASGI lifespan not supported by the application (%s); serving without it",
            f"it raised {error!r}" if error is not None else "it returned at once",
        )
        return False

    def _is_over(self) -> bool:
        # A method, not an inline comparison: the phase changes while we await, which
        # a type checker's narrowing of ``self._phase`` does not know.
        return self._phase is _Phase.OVER

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait for the application's answer.

        Problems (``lifespan.shutdown.failed``, an exception, an application that
        already ended) are logged on ``trioserve.error``. Bounded by
        :data:`SHUTDOWN_TIMEOUT`; a cancellation (a forced shutdown) ends the wait
        at once.
        """
        if self._phase != _Phase.STARTED or self._app_done:
            if self._phase == _Phase.STARTED:
                error_logger.warning("ASGI lifespan task ended early; no shutdown was sent")
            return
        self._shutdown_requested.set()
        # Bounded like the drain before it: an application that never answers must not
        # hold the process after SIGTERM.
        with trio.move_on_after(SHUTDOWN_TIMEOUT) as waited:
            while not self._is_over() and not self._app_done:
                await self._wait_progress()
        if waited.cancelled_caught:
            error_logger.error(
                "ASGI lifespan shutdown: no lifespan.shutdown.complete after %.4g s;"
                " going on without it",
                SHUTDOWN_TIMEOUT,
            )
        elif self._failed_message is not None:
            error_logger.error("ASGI lifespan shutdown failed: %s", self._failed_message)
        elif not self._is_over():
            error_logger.error(
                "ASGI lifespan shutdown failed: the application %s "
                "instead of sending lifespan.shutdown.complete",
                f"raised {self._error!r}" if self._error is not None else "returned",
                exc_info=self._error,
            )

    async def _wait_progress(self) -> None:
        await self._progress.wait()
        self._progress = trio.Event()

    def _made_progress(self) -> None:
        self._progress.set()

    async def _run(self) -> None:
        scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": ASGI_VERSION, "spec_version": LIFESPAN_SPEC_VERSION},
            "state": self._state,
        }
        try:
            await self._app(scope, self._receive, self._send)
        except Exception as exc:
            explain_asyncio_failure(exc)
            self._error = exc
            if self._phase == _Phase.STARTED:
                # Serving continues (requests do not need the lifespan task), but the
                # application will not hear about shutdown: say so now.
                error_logger.error("ASGI lifespan task raised while serving", exc_info=exc)
        finally:
            self._app_done = True
            self._made_progress()

    async def _receive(self) -> Message:
        self._received += 1
        if self._received == 1:
            await trio.lowlevel.checkpoint()
            return {"type": "lifespan.startup"}
        await self._shutdown_requested.wait()
        if self._received == 2:
            self._phase = max(self._phase, _Phase.SHUTTING_DOWN)
            return {"type": "lifespan.shutdown"}
        # A third receive() has nothing left to get: wait until the task is
        # cancelled with the host nursery.
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, message: Message) -> None:
        await trio.lowlevel.checkpoint()
        kind = message.get("type")
        phase = self._phase
        self._sent_anything = True
        if kind == "lifespan.startup.complete" and phase == _Phase.NEW:
            self._phase = _Phase.STARTED
        elif kind == "lifespan.startup.failed" and phase == _Phase.NEW:
            self._failed_message = _message_text(message)
            self._phase = _Phase.OVER
        elif kind == "lifespan.shutdown.complete" and phase == _Phase.SHUTTING_DOWN:
            self._phase = _Phase.OVER
        elif kind == "lifespan.shutdown.failed" and phase == _Phase.SHUTTING_DOWN:
            self._failed_message = _message_text(message)
            self._phase = _Phase.OVER
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message {kind!r} at this point")
        self._made_progress()
        if error_logger.isEnabledFor(logging.DEBUG):
            error_logger.debug("ASGI lifespan: %s", kind)


def _message_text(message: Message) -> str:
    text = message.get("message", "")
    return text if isinstance(text, str) else repr(text)
