"""Safe extraction of an uploaded zip file holding a face data set.

Anyone who can reach the dashboard can upload a zip, so every archive is treated as hostile:
path traversal, symbolic links, encrypted entries, zip bombs and archives too large to unpack are
refused before a single byte is written, and the limits are enforced again while streaming each
entry (the sizes a zip declares can lie). Only images, ``.csv`` and ``.txt`` files are extracted;
macOS junk (``__MACOSX/``, ``._*``, ``.DS_Store``) and anything else is skipped.

An archive is extracted once, into ``<dest_root>/<sha256 of its bytes, 16 hex>``: the files go to
a hidden temporary sibling that is renamed into place after the ``.complete`` marker is written,
so a half-extracted folder is never seen, and uploading the same zip again reuses it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator, Union

from fvr_core import settings
from fvr_core.settings import ArchiveLimits
from fvr_core.settings import IMAGE_EXTENSIONS

ArchiveSource = Union[str, Path, bytes, BinaryIO]

EXTRACTED_EXTENSIONS = frozenset(IMAGE_EXTENSIONS) | {".csv", ".txt"}
COMPLETE_MARKER = ".complete"

_CHUNK = 1024 * 1024
# A small file cannot do harm whatever its ratio (the total limit still counts it), and a tiny
# text file of repeated lines can legitimately compress beyond max_ratio.
_RATIO_FLOOR_BYTES = 1024 * 1024
# Folders and macOS junk are entries too (a Mac zip holds a ._ twin of every file), so the archive
# may hold this many times max_files entries in all; more is refused before anything is read.
_ENTRY_FACTOR = 3
_READABLE_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_DRIVE = re.compile(r"^[A-Za-z]:")
_REZIP = "zip the fake/ and real/ folders with a standard zip tool and upload that zip"


class ArchiveError(ValueError):
    """An archive cannot be extracted; the message names the archive (and entry) and what to do."""


# ---------------------------------------------------------------------------------------------
# reading the source


@contextmanager
def _open_source(source: ArchiveSource) -> Iterator[tuple[BinaryIO, str]]:
    """A seekable binary stream of the archive and the name to use in messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(bytes(source)), "uploaded archive"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise ArchiveError(f"cannot read archive {path}: {exc.strerror or exc}; pass the path of a .zip file") from None
        with fh:
            yield fh, str(path)
    elif hasattr(source, "read"):
        # Streamlit's UploadedFile is a BytesIO with .name; a real file's .name is its path
        name = Path(str(getattr(source, "name", "") or "uploaded archive")).name
        if getattr(source, "seekable", lambda: False)():
            source.seek(0)
        else:  # zipfile needs to seek (the central directory is at the end)
            source = io.BytesIO(source.read())
        yield source, name
    else:
        raise TypeError(f"extract_dataset_zip takes a path, bytes or a binary file, not {type(source).__name__}")


def _digest(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    stream.seek(0)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# checking the central directory


def _safe_parts(info: zipfile.ZipInfo, name: str) -> tuple[str, ...]:
    """The entry's path components; refuses absolute paths, drive letters and '..'."""
    # zipfile only turns os.sep into '/', so a zip made on Windows may still hold backslashes
    raw = info.filename.replace("\\", "/")
    parts = tuple(p for p in raw.split("/") if p not in ("", "."))
    if raw.startswith("/") or (parts and _DRIVE.match(parts[0])):
        raise ArchiveError(f"{name}: entry {info.filename!r} has an absolute path; refusing the archive: {_REZIP}")
    if ".." in parts:
        raise ArchiveError(f"{name}: entry {info.filename!r} points outside the archive ('..'); refusing the archive: {_REZIP}")
    return parts


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _is_junk(parts: tuple[str, ...]) -> bool:
    return "__MACOSX" in parts or parts[-1].startswith("._") or parts[-1] == ".DS_Store"


def _check_entry(info: zipfile.ZipInfo, name: str, limits: ArchiveLimits) -> None:
    where = f"{name}: entry {info.filename!r}"
    if info.flag_bits & 0x1:
        raise ArchiveError(f"{where} is encrypted (password-protected); zip the data set again without a password")
    if info.compress_type not in _READABLE_METHODS:
        raise ArchiveError(f"{where} uses compression method {info.compress_type}, which cannot be read: {_REZIP}")
    if info.file_size > limits.max_file_bytes:
        raise ArchiveError(
            f"{where} is {info.file_size / 1024**2:.1f} MiB uncompressed, over the "
            f"{limits.max_file_bytes / 1024**2:.0f} MiB limit per file; remove it from the zip"
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > _RATIO_FLOOR_BYTES and ratio > limits.max_ratio:
        raise ArchiveError(
            f"{where} expands {ratio:.0f} times (limit {limits.max_ratio:.0f}): it looks like a zip bomb; "
            "refusing the archive"
        )


def _plan(zf: zipfile.ZipFile, name: str, limits: ArchiveLimits) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """The entries to extract with their path components, after checking every declared size."""
    infos = zf.infolist()
    if len(infos) > _ENTRY_FACTOR * limits.max_files:
        raise ArchiveError(
            f"{name} holds {len(infos)} entries, too many (limit {limits.max_files} files): upload a smaller data set"
        )
    plan = []
    for info in infos:
        parts = _safe_parts(info, name)  # every entry, skipped or not: a hostile one refuses the archive
        if _is_symlink(info):
            raise ArchiveError(f"{name}: entry {info.filename!r} is a symbolic link; refusing the archive: {_REZIP}")
        if info.is_dir() or not parts or _is_junk(parts):
            continue
        if PurePosixPath(parts[-1]).suffix.lower() not in EXTRACTED_EXTENSIONS:
            continue
        _check_entry(info, name, limits)
        plan.append((info, parts))
    if len(plan) > limits.max_files:
        raise ArchiveError(f"{name} holds {len(plan)} files, over the limit of {limits.max_files}: upload a smaller data set")
    total = sum(info.file_size for info, _ in plan)
    if total > limits.max_total_bytes:
        raise ArchiveError(
            f"{name} is {total / 1024**2:.0f} MiB uncompressed, over the limit of "
            f"{limits.max_total_bytes / 1024**2:.0f} MiB: upload a smaller data set"
        )
    if not any(PurePosixPath(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS for _, parts in plan):
        kinds = ", ".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
        raise ArchiveError(f"{name} holds no images ({kinds}): {_REZIP}")
    return plan


# ---------------------------------------------------------------------------------------------
# extracting


def _target(root: Path, parts: tuple[str, ...], name: str, entry: str) -> Path:
    path = root.joinpath(*parts)
    # the components were checked already; resolving guards against anything we did not think of
    if not path.resolve().is_relative_to(root.resolve()):
        raise ArchiveError(f"{name}: entry {entry!r} would land outside the destination; refusing the archive")
    return path


def _copy_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, name: str, budget: int, limits: ArchiveLimits) -> int:
    """Stream one entry to `dest`, refusing it as soon as it outgrows what was declared or allowed.
    Returns the bytes written. (Staying within the declared size also keeps the ratio checked.)"""
    allowed = min(info.file_size, limits.max_file_bytes, budget)
    written = 0
    with zf.open(info) as src, open(dest, "wb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > allowed:
                raise ArchiveError(
                    f"{name}: entry {info.filename!r} holds more data than it declares ({info.file_size} bytes) "
                    "or than the limits allow; refusing the archive"
                )
            out.write(chunk)
    return written


def _extract_into(zf: zipfile.ZipFile, plan, root: Path, name: str, limits: ArchiveLimits) -> dict:
    total = 0
    for info, parts in plan:
        dest = _target(root, parts, name, info.filename)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            total += _copy_entry(zf, info, dest, name, limits.max_total_bytes - total, limits)
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:  # bad CRC, truncated or corrupt data
            raise ArchiveError(f"{name}: entry {info.filename!r} is damaged ({exc}); zip the data set again") from None
        except (OSError, RuntimeError, NotImplementedError) as exc:
            raise ArchiveError(f"{name}: cannot extract entry {info.filename!r}: {exc}") from None
    return {"archive": name, "files": len(plan), "bytes": total}


def _publish(tmp: Path, target: Path) -> None:
    """Rename the finished folder into place; another upload of the same zip may have won the race."""
    for attempt in range(2):
        try:
            os.replace(tmp, target)
            return
        except OSError as exc:
            if (target / COMPLETE_MARKER).is_file():
                return  # theirs holds the same files
            if attempt:
                raise ArchiveError(f"cannot move the extracted files to {target}: {exc}") from None
            shutil.rmtree(target, ignore_errors=True)  # a leftover without the marker is not a finished extraction


def extract_dataset_zip(
    source: ArchiveSource,
    dest_root: str | Path | None = None,
    limits: ArchiveLimits | None = None,
) -> Path:
    """Extract a data set zip (path, bytes or binary file) into a new folder under `dest_root`
    (default: ``<data_root>/uploads``) named by the archive's hash, and return that folder.
    The same archive is extracted only once. Raises ArchiveError, leaving nothing behind, for an
    archive that is corrupt, hostile, too large or holds no images."""
    limits = limits or ArchiveLimits()
    dest_root = Path(dest_root) if dest_root is not None else settings.data_root() / "uploads"
    with _open_source(source) as (stream, name):
        digest = _digest(stream)
        target = dest_root.expanduser() / digest[:16]
        if (target / COMPLETE_MARKER).is_file():
            return target
        try:
            zf = zipfile.ZipFile(stream)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise ArchiveError(f"{name} is not a zip file, or it is damaged ({exc}): {_REZIP}") from None
        with zf:
            plan = _plan(zf, name, limits)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{digest[:16]}-", dir=target.parent))
            try:
                info = _extract_into(zf, plan, tmp, name, limits)
                (tmp / COMPLETE_MARKER).write_text(json.dumps({**info, "sha256": digest}))
                _publish(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target
