"""Extraction of uploaded data set zips: a good one extracts once, every hostile one is refused
and leaves nothing behind."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
from pathlib import Path

import pytest

from conftest import make_class_folders, write_image
from fvr_core.data import archive as archive_module
from fvr_core.data.archive import COMPLETE_MARKER, ArchiveError, ArchiveLimits, extract_dataset_zip
from fvr_core.data.dataset import find_dataset_root, scan_dataset


def _zip_folder(folder: Path, prefix: str = "", **extra: bytes) -> bytes:
    """Zip every file under `folder` (names prefixed by `prefix`), plus `extra` name -> bytes entries."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
        for name, data in extra.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _zip_entries(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory) -> bytes:
    return write_image(tmp_path_factory.mktemp("img") / "face.jpg", (24, 24)).read_bytes()


@pytest.fixture
def good_zip(tmp_path) -> bytes:
    folder = make_class_folders(tmp_path / "src" / "faces", n_fake=3, n_real=3, size=(24, 24))
    return _zip_folder(folder.parent, "wrapper/")


def _assert_refused(data, dest: Path, match: str, limits: ArchiveLimits | None = None) -> None:
    with pytest.raises(ArchiveError, match=match):
        extract_dataset_zip(data, dest, limits)
    assert not dest.exists() or not any(dest.iterdir()), list(dest.iterdir())


# ---------------------------------------------------------------------------------------------
# good archives


def test_good_zip_extracts_and_scans(good_zip, tmp_path):
    upload = io.BytesIO(good_zip)
    upload.name = "my faces.zip"  # as Streamlit's UploadedFile
    folder = extract_dataset_zip(upload, tmp_path / "uploads")
    assert folder.parent == tmp_path / "uploads" and len(folder.name) == 16
    assert (folder / COMPLETE_MARKER).is_file()
    assert find_dataset_root(folder) == folder / "wrapper" / "faces"
    _root, records, report = scan_dataset(folder)
    assert sorted({r.label for r in records}) == [0, 1] and len(records) == 6
    assert report.skipped == []
    assert not [p for p in (tmp_path / "uploads").iterdir() if p.name.startswith(".tmp")]


def test_default_destination_is_under_data_root(good_zip, tmp_path, monkeypatch):
    monkeypatch.setenv("FVR_DATA_DIR", str(tmp_path / "data"))
    folder = extract_dataset_zip(good_zip)
    assert folder.parent == tmp_path / "data" / "uploads"


def test_same_bytes_twice_reuse_the_extraction(good_zip, tmp_path):
    archive = tmp_path / "faces.zip"
    archive.write_bytes(good_zip)
    first = extract_dataset_zip(archive, tmp_path / "uploads")
    marker_mtime = (first / COMPLETE_MARKER).stat().st_mtime_ns
    second = extract_dataset_zip(good_zip, tmp_path / "uploads")
    assert second == first
    assert (first / COMPLETE_MARKER).stat().st_mtime_ns == marker_mtime
    assert len(list((tmp_path / "uploads").iterdir())) == 1


def test_macos_junk_and_other_files_are_skipped(jpeg, tmp_path):
    data = _zip_entries(
        {
            "set/fake/a.jpg": jpeg,
            "set/real/b.jpg": jpeg,
            "set/real/notes.txt": b"hello",
            "set/data.csv": b"images_id,label\n",
            "set/run.sh": b"rm -rf /",
            "__MACOSX/set/fake/._a.jpg": b"junk",
            "set/fake/._a.jpg": b"junk",
            "set/.DS_Store": b"junk",
        }
    )
    folder = extract_dataset_zip(data, tmp_path / "uploads")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == [COMPLETE_MARKER, "set/data.csv", "set/fake/a.jpg", "set/real/b.jpg", "set/real/notes.txt"]


def test_unicode_and_spaces_in_names(jpeg, tmp_path):
    data = _zip_entries({"visages réels/fake/ä b.jpg": jpeg, "visages réels/real/日本 1.png": jpeg})
    folder = extract_dataset_zip(data, tmp_path / "uploads")
    assert (folder / "visages réels" / "fake" / "ä b.jpg").read_bytes() == jpeg
    assert (folder / "visages réels" / "real" / "日本 1.png").is_file()


# ---------------------------------------------------------------------------------------------
# hostile or unusable archives


@pytest.mark.parametrize(
    "name, match",
    [
        ("../evil.jpg", "outside"),
        ("real/../../evil.jpg", "outside"),
        ("..\\evil.jpg", "outside"),
        ("/abs.jpg", "absolute"),
        ("C:/evil.jpg", "absolute"),
    ],
)
def test_path_traversal_is_refused(jpeg, tmp_path, name, match):
    data = _zip_entries({"fake/a.jpg": jpeg, name: jpeg})
    _assert_refused(data, tmp_path / "uploads", match)
    assert not (tmp_path / "evil.jpg").exists()


def test_symlink_entry_is_refused(jpeg, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("fake/a.jpg", jpeg)
        link = zipfile.ZipInfo("real/b.jpg")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    _assert_refused(buf.getvalue(), tmp_path / "uploads", "symbolic link")


def test_encrypted_entry_is_refused(jpeg, tmp_path):
    data = bytearray(_zip_entries({"fake/a.jpg": jpeg}))
    # zipfile cannot write encrypted entries: set the 'encrypted' flag bit in the central directory
    cd = data.rfind(b"PK\x01\x02")
    flags = struct.unpack_from("<H", data, cd + 8)[0]
    struct.pack_into("<H", data, cd + 8, flags | 0x1)
    _assert_refused(bytes(data), tmp_path / "uploads", "encrypted")


def test_zip_bomb_is_refused(jpeg, tmp_path):
    data = _zip_entries({"fake/a.jpg": jpeg, "real/bomb.png": bytes(4 * 1024**2)})  # ~4 KB compressed
    _assert_refused(data, tmp_path / "uploads", "zip bomb")


def test_file_over_the_per_file_limit_is_refused(jpeg, tmp_path):
    data = _zip_entries({"fake/a.jpg": jpeg, "real/b.jpg": jpeg}, zipfile.ZIP_STORED)
    _assert_refused(data, tmp_path / "uploads", "limit per file", ArchiveLimits(max_file_bytes=len(jpeg) - 1))


def test_total_size_over_the_limit_is_refused(jpeg, tmp_path):
    data = _zip_entries({f"fake/{i}.jpg": jpeg for i in range(4)})
    _assert_refused(data, tmp_path / "uploads", "uncompressed, over the limit", ArchiveLimits(max_total_bytes=3 * len(jpeg)))


def test_too_many_files_is_refused(jpeg, tmp_path):
    data = _zip_entries({f"fake/{i}.jpg": jpeg for i in range(6)})
    _assert_refused(data, tmp_path / "uploads", "6 files, over the limit of 5", ArchiveLimits(max_files=5))


def test_too_many_entries_even_if_skipped_is_refused(jpeg, tmp_path):
    entries = {"fake/a.jpg": jpeg, **{f"junk/{i}.bin": b"" for i in range(20)}}
    _assert_refused(_zip_entries(entries), tmp_path / "uploads", "entries, too many", ArchiveLimits(max_files=5))


@pytest.mark.parametrize("data", [b"", b"not a zip at all", b"PK\x03\x04" + bytes(100)])
def test_corrupt_or_non_zip_is_refused(data, tmp_path):
    _assert_refused(data, tmp_path / "uploads", "not a zip file")


def test_truncated_zip_is_refused(good_zip, tmp_path):
    _assert_refused(good_zip[: len(good_zip) // 2], tmp_path / "uploads", "not a zip file")


def test_zip_without_images_is_refused(tmp_path):
    data = _zip_entries({"set/data.csv": b"images_id,label\n", "set/readme.md": b"hi", "__MACOSX/._x.jpg": b"j"})
    _assert_refused(data, tmp_path / "uploads", r"holds no images \(jpg, jpeg, png")


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(ArchiveError, match="cannot read archive"):
        extract_dataset_zip(tmp_path / "nope.zip", tmp_path / "uploads")


def test_declared_size_that_lies_is_refused(jpeg, tmp_path):
    """The central directory says 100 bytes; the entry really holds 2 MiB (so its ratio looks harmless)."""
    data = bytearray(_zip_entries({"fake/a.jpg": jpeg, "real/b.jpg": bytes(2 * 1024**2)}))
    cd = data.rfind(b"PK\x01\x02")  # the last entry's central directory header
    assert struct.unpack_from("<I", data, cd + 24)[0] == 2 * 1024**2
    struct.pack_into("<I", data, cd + 24, 100)  # uncompressed size
    _assert_refused(bytes(data), tmp_path / "uploads", "damaged|more data than it declares")


def test_streaming_guard_stops_an_entry_larger_than_declared(jpeg, tmp_path, monkeypatch):
    """Our own guard, independent of zipfile's: a stream yielding more than declared is cut off."""
    data = _zip_entries({"fake/a.jpg": jpeg, "real/b.jpg": jpeg})
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info, *a, **k: io.BytesIO(bytes(len(jpeg) + 1)))
    monkeypatch.setattr(archive_module, "_CHUNK", 64)
    _assert_refused(data, tmp_path / "uploads", "more data than it declares")


def test_crc_mismatch_is_refused(jpeg, tmp_path):
    data = bytearray(_zip_entries({"fake/a.jpg": jpeg}, zipfile.ZIP_STORED))
    data[30 + len("fake/a.jpg") + 10] ^= 0xFF  # one byte of the stored file's data
    _assert_refused(bytes(data), tmp_path / "uploads", "damaged")
