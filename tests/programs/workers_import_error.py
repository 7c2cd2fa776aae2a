"""An app module that cannot be imported: each worker fails at startup."""

from __future__ import annotations

import trioserve_no_such_module  # type: ignore[import-not-found]  # noqa: F401


async def app(request: object) -> None:  # pragma: no cover - never imported
    raise AssertionError("unreachable")
