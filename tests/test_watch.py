"""--reload's file watching: both backends on real directories, and the syntax check."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from trioserve._watch import DEFAULT_EXCLUDE, WatchSpec, syntax_error, watch_changes, watcher_name

# Both backends always run: the test extra installs watchfiles.
backends = pytest.mark.parametrize("force_polling", [False, True], ids=["watchfiles", "polling"])


def write(path: Path, text: str = "x = 1\n") -> None:
    """Append to ``path``, so its size changes whatever the mtime granularity."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as file:
        file.write(text)


def os_threads() -> int:
    """Native threads too (watchfiles' Rust threads are invisible to ``threading``)."""
    with contextlib.suppress(OSError):
        return len(os.listdir("/proc/self/task"))
    return threading.active_count()


class Watch:
    def __init__(self, receive: trio.MemoryReceiveChannel[frozenset[Path]], probe: Path) -> None:
        self.receive = receive
        self.probe = probe

    async def changes_until(self, path: Path) -> set[Path]:
        """Every change reported up to and including the batch holding ``path``."""
        seen: set[Path] = set()
        with trio.fail_after(10):
            while path not in seen:
                seen |= await self.receive.receive()
        return seen - {self.probe}

    async def next_batch(self) -> frozenset[Path]:
        """The next batch, without the probe, skipping a late batch of the probe alone."""
        with trio.fail_after(10):
            while not (batch := await self.receive.receive() - {self.probe}):
                pass
        return batch


@contextlib.asynccontextmanager
async def watching(
    spec: WatchSpec, force_polling: bool, probe_name: str = "probe.py"
) -> AsyncIterator[Watch]:
    """Watch ``spec`` in a task; yield once the watcher demonstrably sees changes."""
    send, receive = trio.open_memory_channel[frozenset[Path]](math.inf)

    async def run() -> None:
        batches = watch_changes(
            spec, force_polling=force_polling, poll_interval=0.05, debounce=0.05
        )
        async with contextlib.aclosing(batches):
            async for batch in batches:
                send.send_nowait(batch)

    probe = spec.dirs[0] / probe_name
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        # The API has no "ready" signal: changes made before the first scan or the
        # inotify watches exist are not reported, so poke a probe file until one is.
        with trio.fail_after(10):
            while True:
                write(probe)
                with trio.move_on_after(0.3):
                    if probe in await receive.receive():
                        break
        yield Watch(receive, probe)
        nursery.cancel_scope.cancel()


@backends
async def test_modified_added_and_deleted_files_are_reported(
    tmp_path: Path, force_polling: bool
) -> None:
    write(old := tmp_path / "old.py")
    write(modified := tmp_path / "pkg" / "mod.py")
    async with watching(WatchSpec.build([tmp_path]), force_polling) as watch:
        write(modified)
        assert await watch.changes_until(modified) == {modified}
        write(added := tmp_path / "pkg" / "sub" / "new.py")
        assert await watch.changes_until(added) == {added}
        old.unlink()
        assert await watch.changes_until(old) == {old}


@backends
async def test_files_in_new_directories_are_reported(tmp_path: Path, force_polling: bool) -> None:
    # Files written at once into fresh directories, before inotify can watch them.
    paths = {tmp_path / f"pkg{i}" / "sub" / "mod.py" for i in range(5)}
    async with watching(WatchSpec.build([tmp_path]), force_polling) as watch:
        for path in paths:
            write(path)
        write(tmp_path / "pkg0" / ".hidden" / "m.py")
        write(last := tmp_path / "last.py")
        assert await watch.changes_until(last) == {*paths, last}


@backends
async def test_changes_made_together_arrive_together(tmp_path: Path, force_polling: bool) -> None:
    paths = {tmp_path / "a.py", tmp_path / "b.py", tmp_path / "pkg" / "c.py"}
    async with watching(WatchSpec.build([tmp_path]), force_polling) as watch:
        for path in sorted(paths):
            write(path)
        assert await watch.next_batch() == paths


@backends
async def test_excluded_and_unincluded_files_are_not_reported(
    tmp_path: Path, force_polling: bool
) -> None:
    async with watching(WatchSpec.build([tmp_path]), force_polling) as watch:
        for name in ["notes.txt", "__pycache__/m.py", ".hidden/m.py", ".m.py", "pkg/.cache/m.py"]:
            write(tmp_path / name)
        # Anything reported for them would come before or with this change.
        write(app := tmp_path / "pkg" / "app.py")
        assert await watch.changes_until(app) == {app}


@backends
async def test_include_patterns_add_to_the_defaults(tmp_path: Path, force_polling: bool) -> None:
    spec = WatchSpec.build([tmp_path], include=["*.html"], exclude=["*.py"])
    async with watching(spec, force_polling, probe_name="probe.html") as watch:
        write(tmp_path / "app.py")
        write(page := tmp_path / "templates" / "index.html")
        assert await watch.changes_until(page) == {page}


@backends
async def test_cancelling_is_prompt_and_leaves_no_thread(
    tmp_path: Path, force_polling: bool
) -> None:
    await trio.to_thread.run_sync(lambda: None)  # an idle cached worker for the watcher
    threads, native = threading.active_count(), os_threads()
    async with watching(WatchSpec.build([tmp_path]), force_polling):
        await trio.sleep(0.1)  # the watcher is waiting in its thread or between scans
        started = trio.current_time()
    assert trio.current_time() - started < 1
    assert threading.active_count() == threads
    await trio.to_thread.run_sync(lambda: None)  # the watcher's worker is free: no new one
    assert threading.active_count() == threads
    for _ in range(500):  # the Rust thread ends moments after its watcher is closed
        if os_threads() <= native:
            break
        await trio.sleep(0.01)
    assert os_threads() <= native


async def test_without_watchfiles_it_polls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert watcher_name() == "watchfiles"
    assert watcher_name(force_polling=True) == "polling"
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # import raises ImportError
    assert watcher_name() == "polling"
    async with watching(WatchSpec.build([tmp_path]), force_polling=False) as watch:
        write(app := tmp_path / "app.py")
        assert await watch.changes_until(app) == {app}


async def test_polling_skips_symlinked_directories(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "loop").symlink_to(tmp_path, target_is_directory=True)
    write(tmp_path / "target.py")
    (tmp_path / "pkg" / "link.py").symlink_to(tmp_path / "target.py")
    async with watching(WatchSpec.build([tmp_path]), force_polling=True) as watch:
        write(tmp_path / "target.py")
        assert await watch.changes_until(tmp_path / "pkg" / "link.py") == {
            tmp_path / "target.py",
            tmp_path / "pkg" / "link.py",
        }


def test_watch_arguments_are_checked(tmp_path: Path) -> None:
    spec = WatchSpec.build([tmp_path])
    with pytest.raises(ValueError, match="positive"):
        watch_changes(spec, poll_interval=0)
    with pytest.raises(ValueError, match="positive"):
        watch_changes(spec, debounce=-1)


def test_build_resolves_and_merges_like_uvicorn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    spec = WatchSpec.build(["src", tmp_path / "link", "."])
    assert spec.dirs == (tmp_path.resolve() / "src", tmp_path.resolve())
    assert spec.include == ("*.py",)
    assert spec.exclude == DEFAULT_EXCLUDE
    spec = WatchSpec.build(["src"], include=["*.html", ".*", "*.html"], exclude=["*.py", "build"])
    assert spec.include == ("*.html", ".*")
    assert spec.exclude == (".py[cod]", ".sw.*", "~*", "__pycache__", "*.py", "build")


@pytest.mark.parametrize(
    ("dirs", "include", "exclude", "message"),
    [
        (["missing"], [], [], r"^--reload-dir 'missing': no such directory$"),
        (["file.py"], [], [], r"^--reload-dir 'file.py': not a directory$"),
        ([], [], [], r"^no directory to watch$"),
        (["."], [], ["*.py"], r"^no --reload-include pattern is left"),
        (["."], ["src/*.py"], [], r"^--reload-include 'src/\*.py': patterns match file names"),
        (["."], [], [""], r"^--reload-exclude '': patterns match file names, not paths$"),
    ],
)
def test_build_refuses_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dirs: list[str],
    include: list[str],
    exclude: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "file.py")
    with pytest.raises(ValueError, match=message):
        WatchSpec.build(dirs, include, exclude)


def test_spec_checks_its_directories_are_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        WatchSpec(dirs=(Path("relative"),))


def test_matching_tests_names_below_the_watched_directory(tmp_path: Path) -> None:
    hidden = tmp_path / ".config" / "app"
    (hidden / ".hidden").mkdir(parents=True)
    spec = WatchSpec.build([hidden, tmp_path / ".config" / "app" / ".hidden"], include=[".env"])
    # The watched directory's own name is not tested, so ".config" is no exclusion.
    assert spec.matches(hidden / "app.py")
    assert spec.matches(hidden / "pkg" / "deleted.py")  # need not exist
    assert spec.matches(hidden / ".env")  # a literal include beats ".*", as in uvicorn
    assert not spec.matches(hidden / ".other")
    assert not spec.matches(hidden / "notes.txt")
    assert not spec.matches(hidden / "__pycache__" / "app.py")
    assert not spec.matches(hidden / "pkg" / ".cache" / "app.py")
    assert not spec.matches(tmp_path / "elsewhere.py")
    # Excluded below one watched directory, but watched through the nested one.
    assert spec.matches(hidden / ".hidden" / "app.py")


def test_syntax_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(good := tmp_path / "good.py", "import re\npattern = '\\d'  # a SyntaxWarning\n")
    write(bad := tmp_path / "pkg" / "bad.py", "def f():\n    return 1\nx = = 2\n")
    write(tmp_path / "page.html", "x = = 2\n")  # not Python
    assert syntax_error([good, tmp_path / "page.html"]) is None
    assert syntax_error({good, bad}) == f"{Path('pkg', 'bad.py')}, line 3: invalid syntax"
    write(early := tmp_path / "a.py", "if True:\nx = 1\n")
    assert (
        syntax_error({bad, early})
        == "a.py, line 2: expected an indented block after 'if' statement on line 1"
    )


def test_syntax_error_names_files_outside_the_cwd_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(bad := tmp_path / "app" / "bad.py", "(\n")
    monkeypatch.chdir(tmp_path / "app")
    assert syntax_error([bad]) == "bad.py, line 1: '(' was never closed"
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert syntax_error([bad]) == f"{bad}, line 1: '(' was never closed"


def test_syntax_error_skips_deleted_files_and_reports_unreadable_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir.py").mkdir()
    assert syntax_error([tmp_path / "deleted.py", tmp_path / "dir.py"]) is None
    too_long = tmp_path / ("x" * 300 + ".py")  # an OSError even for root
    assert syntax_error([too_long]) == f"{too_long.name}: File name too long"
    write(nul := tmp_path / "nul.py", "x = 1\0\n")
    assert (line := syntax_error([nul])) is not None
    assert line.startswith("nul.py")  # ", line 1" too where it is a SyntaxError (3.12+)
    assert "null bytes" in line
    # Too deep for the compiler: on 3.11 a RecursionError, and a MemoryError from the
    # parser; other versions may say SyntaxError, or (one day) compile it.
    for source in ["x = 1" + " + 1" * 100_000, "x = " + "-" * 100_000 + "1"]:
        write(deep := tmp_path / "deep.py", source)
        line = syntax_error([deep])
        assert line is not None or sys.version_info[:2] != (3, 11)
        assert line is None or (line.startswith("deep.py") and "\n" not in line)
        deep.unlink()
