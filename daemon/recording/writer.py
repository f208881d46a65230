"""Call recordings: two-channel WAV files written by one thread per worker process.

A recorded call's :class:`~daemon.legs.media.RecordTap` is filled by the media side (pjmedia's
clock thread, or a memory network's clock); the ``sipai-recorder`` thread of
:class:`RecordingWriter` takes its frames every 100 ms and appends them to the call's file:
16-bit little-endian PCM at the call's rate, frames interleaved ``[caller, played]``. Frames
are paired by media tick, and a tick a side has no frame for (a frame pjmedia did not
deliver, or one the tap dropped because this thread was behind) is written as silence, so
both channels keep their alignment and the file its duration. The header goes first with
its sizes at 0xFFFFFFFF (a file cut short still plays) and is patched when the call ends;
then a ``sipai-recorder-seal`` thread of its own syncs and hashes the file (SHA-256 is a chain
from the header on, so the whole file is read once more, through its descriptor), so a long
file never holds up the taps of the other recordings.

Threads: the loop calls :meth:`RecordingWriter.start`, :meth:`RecordingWriter.finish` and
:meth:`RecordingWriter.stop`; the ``sipai-recorder`` thread owns every file and every
:class:`Recording` field marked so, and hands results back through a
``concurrent.futures.Future``; once a file's sizes are patched, its seal thread owns it and
its :class:`Recording`. A failing disk (or any error of a recording's step) never fails a call
nor the other recordings: the error is logged once (``recording.failed``) and that recording is
reported incomplete.
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
        # The result, set by the writer thread (no file) or the seal thread once it is sealed.
        self.done: concurrent.futures.Future[RecordingInfo | None] = concurrent.futures.Future()
        self.closing = False  # set by the loop when the call ended
        self.late = False  # loop only: a finish() gave up waiting for the file once
        # Writer thread only, then its seal thread (``bytes`` is also read by the loop for a
        # late result):
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

    def discard(self) -> None:
        """Drop the frames taken and not written (the recording failed)."""
        self._heard.clear()
        self._played.clear()

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
        # Started by the writer thread (which drops the finished ones); joined by stop().
        self._seals: list[threading.Thread] = []

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
        holding the thread up after ``within`` seconds gives an incomplete result at once
        (and to any later call at once too); the thread finishes the file when its write
        returns."""
        if not recording.closing:
            recording.closing = True
            self._commands.put(_Finish(recording))
        if recording.late and not recording.done.done():
            return recording.late_info()
        try:
            return await asyncio.to_thread(recording.done.result, within)
        except TimeoutError:
            recording.late = True
            log.warning("recording.late", call_id=recording.call_id, path=str(recording.path))
            return recording.late_info()

    async def stop(self, within: float = STOP_SECONDS) -> None:
        """Finish what is still open (reported incomplete) and end the thread; a thread held
        up by its disk for ``within`` seconds is left behind (it cannot keep the process)."""
        self._stopped = True
        thread, self._thread = self._thread, None
        if thread is not None:
            deadline = time.monotonic() + within
            self._commands.put(None)
            await asyncio.to_thread(thread.join, within)
            for seal in list(self._seals):  # the files the thread handed over last
                await asyncio.to_thread(seal.join, max(0.0, deadline - time.monotonic()))
            if thread.is_alive() or any(seal.is_alive() for seal in self._seals):
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
                self._drain(recording)
        for recording in self._open:
            self._close(recording, complete=False)  # the worker stops during the call
        self._open.clear()

    def _create(self, recording: Recording) -> None:
        try:
            recording.path.parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            recording.fd = os.open(recording.path, flags, FILE_MODE)
            self._write(recording, wav_header(recording.rate, 2, STREAMING))
        except Exception as exc:  # a disk's OSError, or any other: this recording only
            self._fail(recording, exc)

    def _drain(self, recording: Recording, ended: bool = False) -> None:
        """The tap's frames into the file (``ended``: the media side is done with the call,
        so every tick up to the last one is whole)."""
        try:
            self._write_taken(recording, recording.take() + (1 if ended else 0))
        except Exception as exc:  # this recording fails; the thread goes on with the others
            self._fail(recording, exc)
            recording.discard()

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

    def _fail(self, recording: Recording, exc: Exception) -> None:
        if not recording.failed:
            recording.failed = True
            log.warning(
                "recording.failed",
                call_id=recording.call_id,
                path=str(recording.path),
                error=str(exc) if isinstance(exc, OSError) else repr(exc),
            )

    def _close(self, recording: Recording, complete: bool) -> None:
        """The call ended (or the worker stops): the rest and the sizes here, then the file
        goes to a seal thread for fsync and the hash."""
        self._drain(recording, ended=True)
        fd, recording.fd = recording.fd, None
        if fd is not None and (recording.written == 0 or recording.bytes == 0):
            with contextlib.suppress(OSError):
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
            seal = threading.Thread(
                target=self._seal,
                args=(recording, fd, complete),
                name="sipai-recorder-seal",
                daemon=True,
            )
            seal.start()
            self._seals = [thread for thread in self._seals if thread.is_alive()]
            self._seals.append(seal)
        except Exception as exc:  # the header, or no thread to be had: finished here
            self._fail(recording, exc)
            self._seal(recording, fd, complete)

    def _seal(self, recording: Recording, fd: int, complete: bool) -> None:
        """fsync the file, hash it through its descriptor, close it, hand the result back."""
        digest = hashlib.sha256()
        try:
            if not recording.failed:
                os.fsync(fd)
                offset = 0
                while chunk := os.pread(fd, HASH_CHUNK, offset):
                    digest.update(chunk)
                    offset += len(chunk)
        except Exception as exc:
            self._fail(recording, exc)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        tap = recording.tap
        info = RecordingInfo(
            path=str(recording.path),
            duration_seconds=round(recording.written * recording.frame_seconds, 3),
            bytes=recording.bytes,
            sha256="" if recording.failed else digest.hexdigest(),
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
