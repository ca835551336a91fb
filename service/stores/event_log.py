"""An append-only JSON-lines log of interaction events, durable before the caller is told so.

`append` writes one line, flushes and fsyncs the file (and, for a new file, its directory) before it returns.
A crash can only leave a partial last line, which was never acknowledged: `open` cuts it off before new
lines are appended. A replay cursor (`<log>.cursor`, the byte offset already copied to Redis) is replaced
atomically (write, fsync, rename), so a restart resumes where the last replay stopped.
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EventLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.cursor_path = self.path.with_name(self.path.name + ".cursor")
        self._lock = threading.Lock()
        self._file = None
        self.size = 0

    def open(self) -> None:
        """Create the log if needed and drop a torn last line (never acknowledged)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with open(self.path, "ab+") as f:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(max(0, size - 1))
                if f.read(1) != b"\n":
                    data = self.path.read_bytes()
                    keep = data.rfind(b"\n") + 1
                    f.truncate(keep)
                    f.flush()
                    os.fsync(f.fileno())
        if new:
            _fsync_dir(self.path.parent)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open for the log's lifetime
        self.size = self._file.seek(0, os.SEEK_END)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def append(self, event: dict) -> int:
        """Write one event durably; returns the byte offset just after it."""
        line = (json.dumps(event, separators=(",", ":"), sort_keys=True) + "\n").encode()
        with self._lock:
            self._file.write(line)
            os.fsync(self._file.fileno())
            self.size += len(line)
            return self.size

    def read(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, dict]]:
        """(offset after the line, event) for every complete line in [start, end)."""
        end = self.size if end is None else end
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(start)
            offset = start
            for raw in f:
                if offset + len(raw) > end or not raw.endswith(b"\n"):
                    break
                offset += len(raw)
                try:
                    yield offset, json.loads(raw)
                except ValueError:
                    continue

    def cursor(self) -> int:
        try:
            return int(self.cursor_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def set_cursor(self, offset: int) -> None:
        tmp = self.cursor_path.with_name(self.cursor_path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(str(offset))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.cursor_path)
        _fsync_dir(self.cursor_path.parent)
