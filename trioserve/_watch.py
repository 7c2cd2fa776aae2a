"""Watching source files for ``--reload``: which files changed, and do they still compile.

Rules for this module:
1. It only reports: batches of changed paths and a one-line syntax error. Restarting
   the server is the supervisor's business; nothing here knows about processes.
2. ``watchfiles`` is optional: it is imported only where it is used, and without it
   (or with ``force_polling``) the same :class:`WatchSpec` filters a polling scan.
3. A pattern matches a *name* (``fnmatch``), never a path: uvicorn also takes paths in
   ``--reload-include`` / ``--reload-exclude``; here they are refused in one line
   rather than silently matching nothing.
4. Nothing outlives the iteration: a cancelled watch returns within
   ``_RUST_TIMEOUT_MS`` or one scan, its worker thread idle again in trio's cache.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import warnings
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

__all__ = ["WatchSpec", "syntax_error", "watch_changes", "watcher_name"]

#: uvicorn's defaults; ``--reload-include`` / ``--reload-exclude`` add to them.
DEFAULT_INCLUDE: Final = ("*.py",)
#: uvicorn's, plus ``__pycache__``. ``.*`` covers ``.git``, ``.venv`` and editors' swap
#: files; ``node_modules`` is walked unless excluded.
DEFAULT_EXCLUDE: Final = (".*", ".py[cod]", ".sw.*", "~*", "__pycache__")
#: watchfiles' thread returns this often (ms) while nothing changes. A cancelled
#: ``awatch`` waits for its thread (5000 ms by default), so this bounds cancelling.
_RUST_TIMEOUT_MS: Final = 200
#: A batch that keeps growing is yielded anyway after this long (seconds; watchfiles'
#: default ``debounce``), so a file rewritten non-stop cannot hold reloads back.
_MAX_BATCH: Final = 1.6

_Snapshot = dict[Path, tuple[int, int]]  # path -> (st_mtime_ns, st_size)


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchSpec:
    """What to watch: absolute directories (recursively) and name patterns.

    A file matches when its name matches an ``include`` pattern and no ``exclude``
    pattern, and no directory between it and a watched directory matches an
    ``exclude`` pattern (the watched directory's own name is not tested). An include
    pattern that *is* the name beats the excludes, as uvicorn's ``--reload-include .env``.
    Build one with :meth:`build`.
    """

    dirs: tuple[Path, ...]
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE

    def __post_init__(self) -> None:
        if not self.dirs:
            raise ValueError("no directory to watch")
        if not all(path.is_absolute() for path in self.dirs):
            raise ValueError(f"watched directories must be absolute: {self.dirs!r}")
        if not self.include:
            raise ValueError("no --reload-include pattern is left: nothing would be watched")
        for option, patterns in (("include", self.include), ("exclude", self.exclude)):
            for pattern in patterns:
                if not pattern or "/" in pattern or os.sep in pattern:
                    why = "patterns match file names, not paths"
                    raise ValueError(f"--reload-{option} {pattern!r}: {why}")

    @classmethod
    def build(
        cls,
        dirs: Iterable[str | os.PathLike[str]],
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
    ) -> WatchSpec:
        """The spec for ``--reload-dir`` / ``--reload-include`` / ``--reload-exclude``.

        As uvicorn, the patterns given add to the defaults, and a default named in the
        other list is dropped (``--reload-exclude '*.py'`` stops watching ``.py``).
        Directories are resolved (symlinks too), duplicates dropped.

        Raises:
            ValueError: a directory is missing or not a directory, no include pattern
                is left, or a pattern is empty or holds a ``/``; one line.
        """
        include, exclude = tuple(include), tuple(exclude)
        resolved: dict[Path, None] = {}
        for entry in dirs:
            path = Path(entry).resolve()
            if not path.is_dir():
                why = "not a directory" if path.exists() else "no such directory"
                raise ValueError(f"--reload-dir {os.fspath(entry)!r}: {why}")
            resolved[path] = None
        kept_include = (p for p in DEFAULT_INCLUDE if p not in exclude)
        kept_exclude = (p for p in DEFAULT_EXCLUDE if p not in include)
        return cls(
            dirs=tuple(resolved),
            include=tuple(dict.fromkeys((*kept_include, *include))),
            exclude=tuple(dict.fromkeys((*kept_exclude, *exclude))),
        )

    def matches(self, path: Path) -> bool:
        """Whether the file ``path`` is watched; it need not exist."""
        name = path.name
        if not any(fnmatch.fnmatch(name, pattern) for pattern in self.include):
            return False
        return (name in self.include or not self.excluded(name)) and self.walks(path.parent)

    def walks(self, path: Path) -> bool:
        """Whether the directory ``path`` is, or is below, a watched one and not excluded."""
        return any(
            path.is_relative_to(top) and not any(map(self.excluded, path.relative_to(top).parts))
            for top in self.dirs
        )

    def excluded(self, name: str) -> bool:
        """Whether a file or directory name matches an ``exclude`` pattern."""
        return any(fnmatch.fnmatch(name, pattern) for pattern in self.exclude)


def _have_watchfiles() -> bool:
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        return False
    return True


def watcher_name(force_polling: bool = False) -> str:
    """``"watchfiles"`` or ``"polling"``: what :func:`watch_changes` would use (for a log line)."""
    return "polling" if force_polling or not _have_watchfiles() else "watchfiles"


def watch_changes(
    spec: WatchSpec,
    *,
    force_polling: bool = False,
    poll_interval: float = 0.5,
    debounce: float = 0.1,
) -> AsyncGenerator[frozenset[Path], None]:
    """Yield each batch of matching files that were added, modified or deleted, forever.

    Uses ``watchfiles.awatch`` (anyio, so it runs under trio) when installed and
    ``force_polling`` is false; else compares the ``(mtime_ns, size)`` of the matching
    files every ``poll_interval`` seconds, in a worker thread, skipping excluded and
    symlinked directories (watchfiles follows symlinks). Changes made before the
    watcher is set up are not reported.

    Args:
        spec: what to watch.
        force_polling: poll even when watchfiles is installed.
        poll_interval: seconds between scans when polling.
        debounce: a batch is yielded once this many seconds pass with no new change
            (or ``_MAX_BATCH`` seconds after its first).

    Returns:
        An async generator of non-empty frozensets of absolute paths.

    Raises:
        ValueError: ``poll_interval`` or ``debounce`` is not positive.
        OSError: from watchfiles, e.g. when the inotify watch limit is reached.

    Resource handling:
        Cancel the iterating task, or close the generator (``contextlib.aclosing``).
    """
    if not poll_interval > 0 or not debounce > 0:
        raise ValueError("poll_interval and debounce must be positive")
    if force_polling or not _have_watchfiles():
        return _poll(spec, poll_interval, debounce)
    return _notify(spec, debounce)


async def _notify(spec: WatchSpec, debounce: float) -> AsyncGenerator[frozenset[Path], None]:
    import watchfiles

    new_dirs: set[Path] = set()

    def wanted(change: watchfiles.Change, path: str) -> bool:
        # `mkdir pkg && touch pkg/x.py` can beat the inotify watch on the new directory,
        # and then x.py is never reported: so new directories are scanned.
        if change == watchfiles.Change.added and os.path.isdir(path):
            if walked := spec.walks(directory := Path(path)):
                new_dirs.add(directory)
            return walked
        return spec.matches(Path(path))

    changes = watchfiles.awatch(
        *spec.dirs,
        watch_filter=wanted,
        debounce=round(_MAX_BATCH * 1000),
        step=max(1, round(debounce * 1000)),  # the quiet time that ends a batch (ms)
        rust_timeout=_RUST_TIMEOUT_MS,
        ignore_permission_denied=True,  # as the polling scan, which skips what it cannot read
    )
    async with contextlib.aclosing(changes):
        async for batch in changes:
            files = {Path(path) for _change, path in batch} - new_dirs
            tops: list[Path] = []
            for directory in sorted(new_dirs):  # an ancestor sorts before its descendants
                if not tops or not directory.is_relative_to(tops[-1]):
                    tops.append(directory)
            new_dirs.clear()
            files.update(await trio.to_thread.run_sync(_scan, spec, tops) if tops else ())
            if files:
                yield frozenset(files)


async def _poll(
    spec: WatchSpec, poll_interval: float, debounce: float
) -> AsyncGenerator[frozenset[Path], None]:
    before = await trio.to_thread.run_sync(_scan, spec, spec.dirs)
    while True:
        await trio.sleep(poll_interval)
        after = await trio.to_thread.run_sync(_scan, spec, spec.dirs)
        changed = _diff(before, after)
        if not changed:
            continue
        with trio.move_on_after(_MAX_BATCH):
            while True:
                await trio.sleep(debounce)
                latest = await trio.to_thread.run_sync(_scan, spec, spec.dirs)
                more, after = _diff(after, latest), latest
                if not more:
                    break
                changed |= more
        before = after
        yield frozenset(changed)


def _diff(before: _Snapshot, after: _Snapshot) -> set[Path]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def _scan(spec: WatchSpec, tops: Iterable[Path]) -> _Snapshot:
    snapshot: _Snapshot = {}
    pending = list(tops)
    while pending:
        try:
            with os.scandir(pending.pop()) as scan:
                entries = list(scan)
        except OSError:  # vanished or unreadable: skipped, as watchfiles does
            continue
        for entry in entries:
            with contextlib.suppress(OSError):  # vanished between scandir and stat
                if entry.is_dir(follow_symlinks=False):
                    if not spec.excluded(entry.name):
                        pending.append(Path(entry.path))
                elif entry.is_file() and spec.matches(path := Path(entry.path)):
                    st = entry.stat()
                    snapshot[path] = (st.st_mtime_ns, st.st_size)
    return snapshot


def syntax_error(paths: Iterable[Path]) -> str | None:
    """Compile the changed ``.py`` files that exist; describe the first failure in one line.

    Files are tried in sorted order. The line reads ``"app.py, line 3: invalid syntax"``
    (the path relative to the current directory when below it), or
    ``"app.py: Permission denied"`` for a file that cannot be read. Compiler warnings
    are silenced: the new process reports them.

    Returns:
        The line, or ``None`` when every file compiles.
    """
    cwd = Path.cwd()
    for path in sorted(p for p in paths if p.suffix == ".py"):
        name = str(path.relative_to(cwd) if path.is_relative_to(cwd) else path)
        try:
            source = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            continue  # deleted: the restart reports any import that now fails
        except OSError as exc:
            return f"{name}: {exc.strerror or exc}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compile(source, str(path), "exec", dont_inherit=True)
        except SyntaxError as exc:
            return f"{name}{f', line {exc.lineno}' if exc.lineno else ''}: {exc.msg}"
        except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, deep nesting
            return f"{name}: {str(exc) or type(exc).__name__}"
    return None
