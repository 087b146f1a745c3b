"""Uploaded data sets: where a zip is unpacked, who sees it, and when it goes.

On a user's own machine (not demo mode) every upload is unpacked once into
``<data_root>/uploads/<hash>`` and listed for everyone who opens the app: it is their machine.

In demo mode (a public app) visitors must not see each other's data. Each dashboard session has
an id (``new_session_id``; the page keeps it in the session's state) and its uploads go to
``<data_root>/uploads/sessions/<session id>/<hash>``: a session lists, previews and trains on its own
uploads only (plus the demo set and reference runs). Uploads and the decoded-image caches made
from them are deleted when older than the retention time (default 24 h) and, oldest first, while
all uploads together pass the size cap (default 2 GB); never one that a queued or running run
trains on.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from fvr_core import settings
from fvr_core.data.archive import COMPLETE_MARKER, ArchiveSource, extract_dataset_zip
from fvr_core.data.dataset import DataError, source_folders
from fvr_core.settings import AppLimits
from fvr_core.runs.store import ACTIVE_STATES, RunStore

SESSIONS = "sessions"


def new_session_id() -> str:
    """An id for one dashboard session: random, so a visitor cannot guess another's uploads."""
    return secrets.token_hex(12)


def uploads_root() -> Path:
    return settings.data_root() / "uploads"


def _valid_session(session: str | None) -> str:
    if not session or not session.isalnum():
        raise DataError("this app keeps each visitor's uploads apart, and this session has no id: reload the page")
    return session


def upload_folder(limits: AppLimits, session: str | None) -> Path:
    """Where `session`'s uploads are unpacked: its own folder in demo mode, the shared one otherwise."""
    if not limits.demo:
        return uploads_root()
    return uploads_root() / SESSIONS / _valid_session(session)


def extract_upload(source: ArchiveSource, limits: AppLimits | None = None, session: str | None = None) -> Path:
    """Unpack an uploaded zip within the limits in force (settings.enforced_limits) into the
    session's upload folder; returns the folder of its files. In demo mode, old uploads are
    cleared first (prune_uploads), so the cap leaves room for this one."""
    limits = settings.enforced_limits(limits)
    if limits.demo:
        prune_uploads(limits)
    folder = extract_dataset_zip(source, upload_folder(limits, session), limits=limits.archive_limits())
    (folder / COMPLETE_MARKER).touch()  # used again: its retention time starts anew
    return folder


def visible_uploads(limits: AppLimits | None = None, session: str | None = None) -> list[Path]:
    """The unpacked uploads a session may see: all of them outside demo mode, its own in demo mode."""
    limits = settings.enforced_limits(limits)
    if limits.demo:
        _prune_now_and_then(limits)
        if not session or not session.isalnum():
            return []
    root = upload_folder(limits, session) if limits.demo else uploads_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != SESSIONS)


def is_visible(path: str | Path, limits: AppLimits | None = None, session: str | None = None) -> bool:
    """Whether `session` may use the data at `path`: anything outside demo mode; in demo mode
    anything but another session's uploads."""
    limits = settings.enforced_limits(limits)
    if not limits.demo:
        return True
    resolved = Path(path).expanduser().resolve()
    sessions = (uploads_root() / SESSIONS).resolve()
    if not resolved.is_relative_to(uploads_root().resolve()):
        return True
    if not resolved.is_relative_to(sessions) or resolved == sessions:
        return False  # the shared uploads folder of a non-demo install: not a visitor's own
    owner = resolved.relative_to(sessions).parts[0]
    return bool(session) and owner == session


def check_visible(path: str | Path, limits: AppLimits | None = None, session: str | None = None) -> None:
    """DataError unless `session` may use the data at `path` (see is_visible)."""
    if not is_visible(path, limits, session):
        raise DataError(f"{path} was uploaded in another visitor's session: upload your own zip, or use the demo set")


# ---------------------------------------------------------------------------------------------
# retention


@dataclass
class Upload:
    path: Path
    used_unix: float  # unpacked or uploaded again
    bytes: int
    caches: list[Path]


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _caches_by_source() -> dict[Path, list[Path]]:
    """Decoded-image caches by the data folder they were decoded from (their index.json says)."""
    found: dict[Path, list[Path]] = {}
    for index in (settings.cache_root() / "images").glob("*/index.json"):
        try:
            root = json.loads(index.read_text()).get("root")
        except (OSError, ValueError):
            continue
        if root:
            found.setdefault(Path(root), []).append(index.parent)
    return found


def list_uploads() -> list[Upload]:
    """Every finished upload of every session (and the shared ones), oldest use first."""
    root = uploads_root()
    if not root.is_dir():
        return []
    caches = _caches_by_source()
    uploads = []
    for marker in [*root.glob(f"*/{COMPLETE_MARKER}"), *root.glob(f"{SESSIONS}/*/*/{COMPLETE_MARKER}")]:
        folder = marker.parent
        try:
            used = marker.stat().st_mtime
            mine = [c for source, found in caches.items() if source.is_relative_to(folder) for c in found]
            size = _size(folder) + sum(_size(c) for c in mine)
        except OSError:  # deleted while we looked
            continue
        uploads.append(Upload(folder, used, size, mine))
    return sorted(uploads, key=lambda u: u.used_unix)


def _in_use(runs_dir: str | Path | None = None) -> list[Path]:
    """The data folders of queued and running runs."""
    used = []
    for run in RunStore(runs_dir).list():
        if run.state in ACTIVE_STATES:
            try:
                used += source_folders(run.config.data)
            except Exception:  # a damaged config names no data
                continue
    return used


_PRUNE_EVERY_SECONDS = 60.0
_last_prune = 0.0


def _prune_now_and_then(limits: AppLimits) -> None:
    """Prune when listing, at most once a minute per process: a page lists on every rerun."""
    global _last_prune
    if time.monotonic() - _last_prune >= _PRUNE_EVERY_SECONDS:
        _last_prune = time.monotonic()
        prune_uploads(limits)


def prune_uploads(limits: AppLimits | None = None, now: float | None = None, runs_dir: str | Path | None = None) -> list[Path]:
    """Delete uploads (and their decoded caches) older than the retention time, then the oldest
    while all together pass the size cap; never one a queued or running run trains on. Returns
    the folders deleted. Outside demo mode (no retention, no cap) nothing goes."""
    limits = settings.enforced_limits(limits)
    retention, cap = limits.upload_retention_hours * 3600, limits.uploads_max_mb * 1024**2
    if retention <= 0 and cap <= 0:
        return []
    now = time.time() if now is None else now
    uploads = list_uploads()
    in_use = _in_use(runs_dir)
    total = sum(u.bytes for u in uploads)
    deleted = []
    for upload in uploads:  # oldest first
        expired = retention > 0 and now - upload.used_unix > retention
        over = cap > 0 and total > cap
        if not (expired or over):
            continue
        if any(data == upload.path.resolve() or data.is_relative_to(upload.path.resolve()) for data in in_use):
            continue
        for folder in (upload.path, *upload.caches):
            shutil.rmtree(folder, ignore_errors=True)
        total -= upload.bytes
        deleted.append(upload.path)
    return deleted
