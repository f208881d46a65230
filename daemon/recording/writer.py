"""Call recordings: two-channel WAV files written by one thread per worker process.

A recorded call's :class:`~daemon.legs.media.RecordTap` is filled by the media side (pjmedia's
clock thread, or a memory network's clock); the ``sipai-recorder`` thread of
:class:`RecordingWriter` takes its frames every 100 ms and appends them to the call's file:
16-bit little-endian PCM at the call's rate, frames interleaved ``[caller, played]``. Frames
are paired by media tick, and a tick a side has no frame for (a frame pjmedia did not
deliver, or one the tap dropped because this thread was behind) is written as silence, so
both channels keep their alignment and the file its duration. The header goes first with
its sizes at 0xFFFFFFFF (a file cut short still plays) and is patched when the call ends.

Threads: the loop calls :meth:`RecordingWriter.start`, :meth:`RecordingWriter.finish` and
:meth:`RecordingWriter.stop`; the ``sipai-recorder`` thread owns every file and every
:class:`Recording` field marked so, and hands results back through a
``concurrent.futures.Future``. A failing disk never fails a call: the error is logged once
(``recording.failed``) and the recording is reported incomplete.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.blackbox import RecordingInfo
from daemon.legs.media import TAP_FRAMES, LegMedia, RecordTap
from daemon.logs import get_logger
from media.wav import wav_header

log = get_logger(__name__)

POLL_SECONDS = 0.1  # how often open taps are emptied into their files
FINISH_SECONDS = 5.0  # a call's end waits this long for its file to be finished
STOP_SECONDS = 5.0  # the worker's stop waits this long for the thread (a disk may hang it)
STREAMING = 0xFFFFFFFF  # the header's sizes while the file is being written
HEADER_BYTES = 44
FILE_MODE = 0o640
DIRECTORY_MODE = 0o750
HASH_CHUNK = 1 << 20


def recording_path(directory: Path, call_id: str, at: float) -> Path:
    """``{directory}/{YYYY-MM-DD}/{call_id}.wav`` for a call begun at ``at`` (epoch seconds,
    the day in UTC), absolute (a relative directory is taken from the working directory);
    ValueError for an id that cannot be a file name."""
    if not call_id or "/" in call_id or "\0" in call_id:
        raise ValueError(f"call id {call_id!r} cannot name a file")
    day = time.strftime("%Y-%m-%d", time.gmtime(at))
    return directory.absolute() / day / f"{call_id}.wav"


class Recording:
    """One call's recording: the tap its media side fills, the file the writer thread owns."""

    def __init__(self, call_id: str, path: Path, tap: RecordTap, rate: int, frame_bytes: int):
        self.call_id = call_id
        self.path = path
        self.tap = tap
        self.rate = rate
        self.frame_bytes = frame_bytes
        # The result, set by the writer thread once the file is finished.
        self.done: concurrent.futures.Future[RecordingInfo | None] = concurrent.futures.Future()
        self.closing = False  # set by the loop when the call ended
        # Writer thread only (``bytes`` is also read by the loop for a late result):
        self.fd: int | None = None
        self.bytes = 0  # written to the file, header included
        self.written = 0  # ticks written to the file
        self.failed = False
        self._heard: dict[int, bytes] = {}  # taken from the tap, not written yet
        self._played: dict[int, bytes] = {}

    @property
    def frame_seconds(self) -> float:
        return self.frame_bytes / (2 * self.rate)

    def late_info(self) -> RecordingInfo:
        """What is known while the disk still holds the writer up: never complete."""
        return RecordingInfo(
            path=str(self.path),
            duration_seconds=round(self.tap.tick * self.frame_seconds, 3),
            bytes=self.bytes,
            sha256="",
            complete=False,
            dropped_frames=self.tap.dropped,
            rate=self.rate,
        )

    # -- writer thread ---------------------------------------------------------------------

    def take(self) -> int:
        """Move the tap's frames here; the last tick whose both frames are in."""
        tap = self.tap
        latest = tap.tick  # read first: its heard frame may still be on its way
        for queued, taken in ((tap.played, self._played), (tap.heard, self._heard)):
            while queued:
                tick, frame = queued.popleft()
                if tick > self.written and len(frame) == self.frame_bytes:
                    taken.setdefault(tick, frame)
        return latest - 1

    def interleaved(self, last: int) -> bytes:
        """Ticks after those written up to ``last``, as interleaved samples (silence where a
        side has no frame)."""
        silence = bytes(self.frame_bytes)
        ticks = range(self.written + 1, last + 1)
        heard = np.frombuffer(b"".join(self._heard.pop(t, silence) for t in ticks), "<i2")
        played = np.frombuffer(b"".join(self._played.pop(t, silence) for t in ticks), "<i2")
        frames = np.empty((len(heard), 2), dtype="<i2")
        frames[:, 0] = heard
        frames[:, 1] = played
        return frames.tobytes()


@dataclass(frozen=True)
class _Finish:
    recording: Recording


class RecordingWriter:
    """A worker's ``sipai-recorder`` thread and the recordings it writes (started by the first
    recording, ended by :meth:`stop`)."""

    def __init__(self) -> None:
        # Loop -> thread: a new Recording, a _Finish, or None to stop.
        self._commands: queue.Queue[Recording | _Finish | None] = queue.Queue()
        self._thread: threading.Thread | None = None  # the loop starts and joins it
        self._stopped = False  # loop only
        self._open: list[Recording] = []  # writer thread only

    def start(
        self, media: LegMedia, call_id: str, path: Path, limit: int = TAP_FRAMES
    ) -> Recording | None:
        """Record ``media`` from its next frame into ``path`` (the thread creates the file);
        None once the writer has stopped. ``limit``: frames a side of the tap may hold."""
        if self._stopped:
            return None
        tap = RecordTap(limit)
        recording = Recording(call_id, path, tap, media.rate, media.frame_bytes)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sipai-recorder", daemon=True)
            self._thread.start()
        self._commands.put(recording)
        media.tap = tap
        return recording

    async def finish(
        self, recording: Recording, within: float = FINISH_SECONDS
    ) -> RecordingInfo | None:
        """Once the call has ended: write the rest, patch the header, sync and hash the file.
        None: the call carried no audio, or its file could not be created. A disk still
        holding the thread up after ``within`` seconds gives an incomplete result at once;
        the thread finishes the file when its write returns."""
        if not recording.closing:
            recording.closing = True
            self._commands.put(_Finish(recording))
        try:
            return await asyncio.to_thread(recording.done.result, within)
        except TimeoutError:
            log.warning("recording.late", call_id=recording.call_id, path=str(recording.path))
            return recording.late_info()

    async def stop(self, within: float = STOP_SECONDS) -> None:
        """Finish what is still open (reported incomplete) and end the thread; a thread held
        up by its disk for ``within`` seconds is left behind (it cannot keep the process)."""
        self._stopped = True
        thread, self._thread = self._thread, None
        if thread is not None:
            self._commands.put(None)
            await asyncio.to_thread(thread.join, within)
            if thread.is_alive():
                log.warning("recording.writer_stuck", seconds=within)

    # -- the sipai-recorder thread ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                command = self._commands.get(timeout=POLL_SECONDS if self._open else None)
            except queue.Empty:
                pass
            else:
                if command is None:
                    break
                if isinstance(command, Recording):
                    self._open.append(command)
                    self._create(command)
                elif command.recording in self._open:
                    self._open.remove(command.recording)
                    self._close(command.recording, complete=True)
            for recording in self._open:
                self._write_taken(recording, recording.take())
        for recording in self._open:
            self._close(recording, complete=False)  # the worker stops during the call
        self._open.clear()

    def _create(self, recording: Recording) -> None:
        try:
            recording.path.parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            recording.fd = os.open(recording.path, flags, FILE_MODE)
            self._write(recording, wav_header(recording.rate, 2, STREAMING))
        except OSError as exc:
            self._fail(recording, exc)

    def _write_taken(self, recording: Recording, last: int) -> None:
        if last <= recording.written:
            return
        data = recording.interleaved(last)
        recording.written = last
        if not recording.failed:
            try:
                self._write(recording, data)
            except OSError as exc:
                self._fail(recording, exc)

    def _write(self, recording: Recording, data: bytes) -> None:
        assert recording.fd is not None
        view = memoryview(data)
        while view:
            count = os.write(recording.fd, view)
            view = view[count:]
            recording.bytes += count

    def _fail(self, recording: Recording, exc: OSError) -> None:
        if not recording.failed:
            recording.failed = True
            log.warning(
                "recording.failed",
                call_id=recording.call_id,
                path=str(recording.path),
                error=str(exc),
            )

    def _close(self, recording: Recording, complete: bool) -> None:
        """The call ended (or the worker stops): the rest, the sizes, fsync, the hash."""
        # The media side is done with the call: every tick up to the last one is whole.
        self._write_taken(recording, recording.take() + 1)
        fd, recording.fd = recording.fd, None
        if fd is not None and (recording.written == 0 or recording.bytes == 0):
            os.close(fd)  # the call never carried audio (or the header never made it)
            with contextlib.suppress(OSError):
                os.unlink(recording.path)
            recording.done.set_result(None)
            return
        if fd is None:  # the file could not be created
            recording.done.set_result(None)
            return
        try:
            if not recording.failed:
                os.pwrite(fd, wav_header(recording.rate, 2, recording.bytes - HEADER_BYTES), 0)
                os.fsync(fd)
        except OSError as exc:
            self._fail(recording, exc)
        finally:
            os.close(fd)
        tap = recording.tap
        info = RecordingInfo(
            path=str(recording.path),
            duration_seconds=round(recording.written * recording.frame_seconds, 3),
            bytes=recording.bytes,
            sha256="" if recording.failed else _sha256(recording),
            complete=complete and not recording.failed and tap.dropped == 0,
            dropped_frames=tap.dropped,
            rate=recording.rate,
        )
        recording.done.set_result(info)
        log.info(
            "recording.finished",
            call_id=recording.call_id,
            path=info.path,
            duration_seconds=info.duration_seconds,
            bytes=info.bytes,
            complete=info.complete,
            dropped_frames=info.dropped_frames,
        )


def _sha256(recording: Recording) -> str:
    digest = hashlib.sha256()
    try:
        with recording.path.open("rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        log.warning("recording.failed", call_id=recording.call_id, error=str(exc))
        return ""
    return digest.hexdigest()
