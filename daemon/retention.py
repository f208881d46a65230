"""Retention: finished calls and recordings older than their configured age are deleted.

``[storage] retention_days`` (0 keeps everything) removes finished calls of both directions
that ended before the cutoff, with their webhooks in a final state, the attempts, the
recording rows and files; a call whose webhook is still pending stays whole, and so does a
call in progress. ``[recordings] retention_days`` (0 keeps them) removes recordings earlier,
keeping the calls. The same pass sweeps the recordings directory's day folders
(``{YYYY-MM-DD}``) wholly older than the shorter of the two ages: a ``.wav`` file there that no
recording row and no call in progress owns (a worker killed mid-call leaves one) and that has
not been written to since the cutoff goes, and a day folder left empty goes too. Every pass
also deletes the ``Idempotency-Key`` records older than their 24 h, whatever the ages say. A
pass runs when the supervisor starts, then every hour: the SQL on the store's thread, the file
work through ``asyncio.to_thread``. A file already gone is fine; a failure is logged
(``retention.failed``) and the next pass tries again.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

from daemon.logs import get_logger
from daemon.store import Store

log = get_logger(__name__)

DAY_SECONDS = 86400.0
INTERVAL_SECONDS = 3600.0


@dataclass(frozen=True)
class Pruned:
    """What one pass deleted: recording files removed, already missing, or failing."""

    files_removed: int
    files_missing: int
    files_failed: int
    idempotency_keys: int = 0  # expired keys deleted


def cutoff(now: float, days: float) -> float | None:
    """The time before which records ``days`` old go; None when ``days`` is 0 (keep)."""
    return now - days * DAY_SECONDS if days > 0 else None


def remove_files(paths: list[str]) -> Pruned:
    """Delete the files (blocking: run it in a thread)."""
    removed = missing = failed = 0
    for path in paths:
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            missing += 1
        except OSError as exc:
            failed += 1
            log.error("retention.failed", path=path, error=repr(exc))
    return Pruned(removed, missing, failed)


def _old_days(directory: Path, before: float) -> list[Path]:
    """The day folders of ``directory`` whose whole UTC day is before ``before``."""
    days = []
    with contextlib.suppress(FileNotFoundError):
        for entry in directory.iterdir():
            try:
                start = calendar.timegm(time.strptime(entry.name, "%Y-%m-%d"))
            except ValueError:  # not a day folder: not ours to touch
                continue
            if start + DAY_SECONDS <= before and entry.is_dir() and not entry.is_symlink():
                days.append(entry)
    return sorted(days)


def stray_candidates(directory: Path, before: float) -> dict[str, str]:
    """The recording files of the day folders older than ``before`` not modified since, by
    their call id (blocking: run it in a thread)."""
    found: dict[str, str] = {}
    for day in _old_days(directory, before):
        for file in day.glob("*.wav"):
            with contextlib.suppress(FileNotFoundError):
                if file.is_file() and file.stat().st_mtime < before:
                    found[file.stem] = str(file)
    return found


def remove_empty_days(directory: Path, before: float) -> int:
    """Remove the empty day folders older than ``before``; how many went (blocking)."""
    removed = 0
    for day in _old_days(directory, before):
        try:
            day.rmdir()
            removed += 1
        except OSError:  # not empty (a kept recording), or gone already
            continue
    return removed


class Retention:
    """Runs the passes on the loop; ``prune()`` is one pass (``now`` for tests)."""

    def __init__(
        self,
        store: Store,
        retention_days: float,
        recording_retention_days: float,
        interval: float = INTERVAL_SECONDS,
        directory: Path | None = None,
    ) -> None:
        self._store = store
        self._directory = directory  # the recordings' (None: no folders to sweep)
        self._days = retention_days
        self._recording_days = recording_retention_days
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """Calls or recordings go by age (expired idempotency keys go either way)."""
        return self._days > 0 or self._recording_days > 0

    async def prune(self, now: float | None = None) -> Pruned:
        now = time.time() if now is None else now
        keys = await self._store.prune_idempotency(now)
        if keys:
            log.info("retention.idempotency_pruned", keys=keys)
        paths = await self._store.prune(
            cutoff(now, self._days), cutoff(now, self._recording_days), now=now
        )
        pruned = await asyncio.to_thread(remove_files, paths)
        if paths:
            log.info(
                "retention.pruned",
                recordings=len(paths),
                files_removed=pruned.files_removed,
                files_missing=pruned.files_missing,
                files_failed=pruned.files_failed,
            )
        ages = (cutoff(now, self._days), cutoff(now, self._recording_days))
        cutoffs = [c for c in ages if c is not None]
        if self._directory is not None and cutoffs:
            stray = await self._sweep(self._directory, max(cutoffs))
            pruned = Pruned(
                pruned.files_removed + stray.files_removed,
                pruned.files_missing + stray.files_missing,
                pruned.files_failed + stray.files_failed,
            )
        return dataclasses.replace(pruned, idempotency_keys=keys)

    async def _sweep(self, directory: Path, before: float) -> Pruned:
        """Delete the files no record owns in the day folders older than ``before``, then the
        day folders left empty."""
        candidates = await asyncio.to_thread(stray_candidates, directory, before)
        unowned = await self._store.unowned(sorted(candidates))
        stray = await asyncio.to_thread(remove_files, [candidates[c] for c in unowned])
        folders = await asyncio.to_thread(remove_empty_days, directory, before)
        if unowned or folders:
            log.info(
                "retention.swept",
                stray_files=len(unowned),
                files_removed=stray.files_removed,
                files_failed=stray.files_failed,
                day_folders_removed=folders,
            )
        return stray

    def start(self) -> None:
        """Prune now, then every ``interval`` seconds, until stopped (with both ages 0, only
        the expired idempotency keys go)."""
        self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception as exc:  # the store failed this pass; the next one retries
                log.error("retention.failed", error=repr(exc))
            await asyncio.sleep(self._interval)
