"""Where an actor's day of requests waits to be merged: on disk, so the merge holds their times, not their text.

An actor draws a day's requests in its random stream's order and they are sent in time order, so the whole
day is drawn before its first request goes out; with every actor a day ahead, that is a day of the log.
A `Spool` writes each long day to a temporary file as it is drawn and reads it back one request at a time,
in time order, keeping only each request's time and place in memory.
"""

from __future__ import annotations

import marshal
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from itertools import chain, islice
from operator import attrgetter
from typing import IO

from alambic.simulate.population import Request

INLINE = 16  # a day of at most this many requests stays in memory
FILE_BYTES = 64 << 20  # start a new file past this, so that files read to the end can go
WRITE_BYTES = 1 << 20  # write in pieces of about this
_FIELDS = attrgetter(*(f.name for f in fields(Request)))  # a request as a tuple, marshalled


@dataclass
class _File:
    handle: IO[bytes]
    end: int = 0
    readers: int = 0  # days in it not yet read to the end


class Spool:
    """Temporary files of parked requests; a context manager that deletes them on leaving."""

    def __init__(self) -> None:
        self._current: _File | None = None
        self._open: list[_File] = []

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        for file in self._open:
            file.handle.close()
        self._open, self._current = [], None

    def in_time_order(self, requests: Iterable[Request]) -> Iterator[Request]:
        """`requests`, drawn lazily in any order, back in time order (ties in the order drawn)."""
        requests = iter(requests)
        head = list(islice(requests, INLINE + 1))
        if len(head) <= INLINE:
            yield from sorted(head, key=lambda r: r.at)
            return
        file = self._writable()
        file.readers += 1
        try:
            times, offsets = array("d"), array("q", [file.end])
            pending = bytearray()
            for request in chain(head, requests):
                times.append(request.at)
                pending += marshal.dumps(_FIELDS(request))
                offsets.append(file.end + len(pending))
                if len(pending) >= WRITE_BYTES:
                    file.end += self._write(file, pending)
                    pending = bytearray()
            file.end += self._write(file, pending)
            del head, pending  # while the day is read, only where each request lies stays in memory
            order = array("q", sorted(range(len(times)), key=times.__getitem__))
            del times
            for index in order:
                file.handle.seek(offsets[index])
                yield Request(*marshal.loads(file.handle.read(offsets[index + 1] - offsets[index])))
        finally:
            self._release(file)

    def _writable(self) -> _File:
        if self._current is None or self._current.end >= FILE_BYTES:  # the full one goes with its last reader
            self._current = _File(tempfile.TemporaryFile(buffering=0))  # noqa: SIM115 (closed on release or exit)
            self._open.append(self._current)
        return self._current

    @staticmethod
    def _write(file: _File, data: bytearray) -> int:
        file.handle.seek(file.end)
        view = memoryview(data)
        while view:  # an unbuffered write may take only part
            view = view[file.handle.write(view) :]
        return len(data)

    def _release(self, file: _File) -> None:
        file.readers -= 1
        if file.readers or file.handle.closed:  # closed: the spool was left before this day was read
            return
        if file is self._current:  # nothing left to read in it: start it again from the beginning
            file.handle.truncate(0)
            file.end = 0
        else:
            self._close(file)

    def _close(self, file: _File) -> None:
        file.handle.close()
        self._open.remove(file)
