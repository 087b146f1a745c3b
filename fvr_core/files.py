"""How fvr writes and reads its files: every file but an append-only log is written to a temporary
file beside it, flushed to disk and renamed over it, so a reader (another process, a reload, a
process killed half-way) sees the old file or the new one, never half of one. The crash points
let the tests kill a process at each write (FVR_TEST_KILL_AT).

The bottom of fvr_core: imports nothing of it."""

from __future__ import annotations

import json
import os
import signal
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

# For the crash tests (tests/test_crashes.py) only: FVR_TEST_KILL_AT="<point>:<n>" makes the process
# kill itself (SIGKILL) the n-th time it reaches the named point. Unset, a point costs one check.
_KILL_AT = os.environ.get("FVR_TEST_KILL_AT", "")
_points_reached: dict[str, int] = {}


def crash_due(point: str) -> bool:
    """True the n-th time `point` is reached when FVR_TEST_KILL_AT is "<point>:<n>" (crash tests)."""
    if not _KILL_AT:
        return False
    name, _, n = _KILL_AT.partition(":")
    if name != point:
        return False
    _points_reached[point] = _points_reached.get(point, 0) + 1
    return _points_reached[point] == int(n or 1)


def crash_point(point: str) -> None:
    """Die here, as a killed process would, when the crash tests ask for it."""
    if crash_due(point):
        os.kill(os.getpid(), signal.SIGKILL)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextmanager
def atomic_file(target: Path, crash_before_rename: str = "") -> Iterator[Path]:
    """A temporary path beside `target` (".NAME.XXXX.tmp") to write to; when the block ends it is
    flushed to disk and renamed over `target`, and on an error it is removed. `crash_before_rename`
    names the crash point between the two (crash tests)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if crash_before_rename:
            crash_point(crash_before_rename)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def read_jsonl(path: Path) -> list[dict]:
    """Every complete line of a JSON-lines file; a partial last line (being written) is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    rows = []
    for line in text.split("\n")[:-1]:  # the piece after the last newline is incomplete
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
