"""Every kind of bad input a user can hand fvr, through every entry point that takes it.

The corpus is written by the tests themselves (under tmp_path, nothing in the repository):

* IMAGES: files a user may upload or put in a data set: broken, disguised, hostile (decompression
  bombs) and unusual but usable (alpha, palette, grey, CMYK, 16-bit, 1x1, EXIF-rotated, animated,
  unicode and spaces in names);
* LAYOUTS: data set folders: empty, one class, csv naming missing files, duplicate ids, unknown
  labels, nested folders, symbolic links leading outside;
* ZIPS: uploaded data set archives: path traversal, absolute paths, a zip bomb, no images, ...;
* CHECKPOINTS: damaged weights, another architecture or image size, and pickles that would run code;
* SETTINGS: training settings out of range, in the library, the CLI and the Train page's widgets.

Each entry says what must happen: used cleanly, or refused with a reason (a regex the message must
match). The last test prints how many kinds went through how many entry points (`-s` shows it).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image, ImageFile

from conftest import REPO, make_class_folders, write_image
from fvr_core import cli
from fvr_core.data.archive import ArchiveError, extract_dataset_zip
from fvr_core.config import ConfigError, TrainConfig
from fvr_core.data.dataset import DataError, find_dataset_root, load_dataset, require_trainable
from fvr_core.data.images import ImageError, load_rgb, prepare_image

# ---------------------------------------------------------------------------------------------
# what was tried through what (the summary at the end reads this)

ENTRY_POINTS = {
    "images.load_rgb": "files",
    "images.prepare_image": "files",
    "dataset.load_dataset": "files, data sets",
    "Data page (chosen folder)": "files, data sets",
    "archive.extract_dataset_zip": "zips",
    "Data page (zip upload)": "zips",
    "Predict page (labelled zip)": "zips",
    "Predict page (photo uploads)": "files, checkpoints",
    "predict.Predictor": "files, checkpoints",
    "CLI predict": "files, checkpoints",
    "CLI train": "data sets, settings",
    "config.TrainConfig.validate": "settings",
    "Train page widgets": "settings",
    "checkpoint.load_checkpoint": "checkpoints",
    "resume (library and CLI)": "checkpoints",
}
TRIED: dict[str, set[str]] = defaultdict(set)


def tried(entry: str, *kinds: str) -> None:
    assert entry in ENTRY_POINTS, entry
    TRIED[entry].update(kinds)


# ---------------------------------------------------------------------------------------------
# the image corpus


@dataclass(frozen=True)
class BadFile:
    name: str  # the file's name: some carry unicode and spaces on purpose
    write: Callable[[Path], None]
    reason: str | None = None  # None: usable; else a regex the refusal must match
    bomb: bool = False  # must be refused before any pixel is decoded
    check: Callable[[Image.Image], None] | None = None  # what the decoded RGB image must look like

    @property
    def usable(self) -> bool:
        return self.reason is None


def _noise(size, mode="RGB", color=(150, 100, 80)) -> Image.Image:
    rng = np.random.default_rng(size[0] * 7919 + size[1])
    arr = np.clip(rng.normal(color, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    return img if mode == "RGB" else img.convert(mode)


def _encoded(img: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **save)
    return buffer.getvalue()


def _bytes(data: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data() if callable(data) else data)


def _saved(make: Callable[[], Image.Image], fmt: str, **save) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(_encoded(make(), fmt, **save))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but holds a few bytes: a bomb that costs nothing on
    disk (and cannot be decoded, so a 'too large' refusal proves nothing was decoded)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encoded(_noise((16, 16)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encoded(Image.new("P", (8, 8)), "GIF"))
    struct.pack_into("<HH", data, 6, width, height)  # the logical screen size
    return bytes(data)


def _halves(size=(60, 30)) -> Image.Image:
    """Left half red, right half blue: which way up it is decoded shows."""
    img = Image.new("RGB", size, (255, 0, 0))
    img.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    return img


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _frames(fmt: str, **save) -> Callable[[Path], None]:
    frames = [Image.new("RGB", (24, 24), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    return lambda path: path.write_bytes(_encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50,
                                                  loop=0, **save))


def _alpha() -> Image.Image:
    img = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # hidden colour red, fully transparent
    img.paste((0, 0, 255, 255), (20, 0, 40, 40))
    return img


def _palette() -> Image.Image:
    img = Image.new("P", (40, 40), 0)
    img.putpalette([200, 30, 30, 20, 180, 40] + [0] * (256 * 3 - 6))
    img.paste(1, (20, 0, 40, 40))
    return img


def _grey16() -> Image.Image:
    return Image.fromarray(np.linspace(0, 65535, 40 * 40).astype(np.uint16).reshape(40, 40))


def _float_tiff(path: Path) -> None:
    Image.fromarray(np.linspace(0, 255, 40 * 40, dtype=np.float32).reshape(40, 40), mode="F").save(path, "TIFF")


def _multipage_tiff(path: Path) -> None:
    pages = [_noise((32, 32)), Image.new("RGB", (32, 32), (0, 255, 0))]
    pages[0].save(path, "TIFF", save_all=True, append_images=pages[1:])


def _truncated(fmt: str) -> Callable[[Path], None]:
    return _bytes(lambda: (lambda data: data[: len(data) // 2])(_encoded(_noise((64, 64)), fmt)))


def _corrupt_png_data() -> bytes:
    data = bytearray(_encoded(_noise((40, 40)), "PNG"))
    data[-20] ^= 0xFF  # a byte of the compressed pixels
    return bytes(data)


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int32)


def _check_white_left_blue_right(img: Image.Image) -> None:
    arr = _pixels(img)
    assert (arr[:, :20] == 255).all(), "transparent pixels must show white, not their hidden colour"
    assert (arr[:, 20:] == (0, 0, 255)).all()


def _check_palette(img: Image.Image) -> None:
    arr = _pixels(img)
    assert (arr[:, :20] == (200, 30, 30)).all() and (arr[:, 20:] == (20, 180, 40)).all()


def _check_grey(img: Image.Image) -> None:
    arr = _pixels(img)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def _check_grey16_scaled(img: Image.Image) -> None:
    _check_grey(img)
    arr = _pixels(img)[..., 0]
    assert arr.min() == 0 and arr.max() == 255, "16-bit grey must be scaled to 8 bits, not clipped"


def _check_cmyk(img: Image.Image) -> None:
    assert np.abs(_pixels(img).reshape(-1, 3).mean(0) - (200, 40, 30)).max() <= 12


def _check_size(size):
    def check(img: Image.Image) -> None:
        assert img.size == size, img.size
    return check


def _check_rotated(img: Image.Image) -> None:
    # orientation 6: turn a quarter clockwise to display; the left (red) half ends on top
    assert img.size == (30, 60), img.size
    top, bottom = _pixels(img)[4:26].reshape(-1, 3).mean(0), _pixels(img)[34:56].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50, top
    assert bottom[2] > 200 and bottom[0] < 50, bottom


def _check_unrotated(img: Image.Image) -> None:
    assert img.size == (60, 30), img.size
    left, right = _pixels(img)[:, 4:26].reshape(-1, 3).mean(0), _pixels(img)[:, 34:56].reshape(-1, 3).mean(0)
    assert left[0] > 200 and right[2] > 200


def _check_first_frame_red(img: Image.Image) -> None:
    arr = _pixels(img).reshape(-1, 3).mean(0)
    assert arr[0] > 230 and arr[1] < 25 and arr[2] < 25, arr


NOT_AN_IMAGE = "not an image"
TOO_LARGE = "too large.*refused before decoding"
MILLION = 1_000_000

IMAGES: dict[str, BadFile] = {
    # usable: converted, rotated, resized; never stretched
    "png with alpha": BadFile("alpha.png", _saved(_alpha, "PNG"), check=_check_white_left_blue_right),
    "palette png": BadFile("palette.png", _saved(_palette, "PNG"), check=_check_palette),
    "grey png": BadFile("grey.png", _saved(lambda: _noise((40, 40), "L"), "PNG"), check=_check_grey),
    "grey png with alpha": BadFile("grey alpha.png", _saved(lambda: _noise((40, 40), "LA"), "PNG")),
    "1-bit png": BadFile("bilevel.png", _saved(lambda: _noise((40, 40), "1"), "PNG"), check=_check_grey),
    "CMYK jpeg": BadFile("cmyk.jpg", _saved(lambda: Image.new("RGB", (40, 40), (200, 40, 30)).convert("CMYK"), "JPEG",
                                            quality=95), check=_check_cmyk),
    "16-bit grey png": BadFile("grey16.png", _saved(_grey16, "PNG"), check=_check_grey16_scaled),
    "32-bit float tiff": BadFile("float.tif", _float_tiff, check=_check_grey),
    "multi-page tiff": BadFile("pages.tiff", _multipage_tiff, check=_check_size((32, 32))),
    "1x1 image": BadFile("one pixel.png", _saved(lambda: Image.new("RGB", (1, 1), (10, 200, 10)), "PNG"),
                         check=_check_size((1, 1))),
    "1x20000 strip": BadFile("strip.png", _saved(lambda: Image.new("RGB", (1, 20000), (90, 90, 90)), "PNG"),
                             check=_check_size((1, 20000))),
    "EXIF-rotated jpeg": BadFile("rotated.jpg", _saved(_halves, "JPEG", exif=_exif(6), quality=95), check=_check_rotated),
    "EXIF orientation out of range": BadFile("orientation 9.jpg", _saved(_halves, "JPEG", exif=_exif(9), quality=95),
                                             check=_check_unrotated),
    "animated gif": BadFile("animated.gif", _frames("GIF"), check=_check_first_frame_red),
    "animated webp": BadFile("animated.webp", _frames("WEBP", lossless=True), check=_check_first_frame_red),
    "progressive jpeg": BadFile("progressive.jpg", _saved(lambda: _noise((48, 40)), "JPEG", progressive=True)),
    "jpeg named .png": BadFile("really a jpeg.png", _saved(lambda: _noise((40, 48)), "JPEG")),
    "jpeg with bytes after its end": BadFile("trailing.jpg", _bytes(lambda: _encoded(_noise((40, 40)), "JPEG") + b"junk" * 100)),
    "unicode and spaces in the name": BadFile("visage été n°1 – copie ✓.jpg", _saved(lambda: _noise((64, 48)), "JPEG")),
    "upper-case extension": BadFile("PHOTO 2.JPEG", _saved(lambda: _noise((40, 40)), "JPEG")),
    # refused, each with its reason
    "zero bytes": BadFile("empty.jpg", _bytes(b""), "empty file"),
    "truncated jpeg": BadFile("half.jpg", _truncated("JPEG"), "(?i)truncated"),
    "truncated png": BadFile("half.png", _truncated("PNG"), "(?i)truncated"),
    "png with damaged pixel data": BadFile("damaged.png", _bytes(_corrupt_png_data), "cannot decode image"),
    "random bytes named .jpg": BadFile("noise.jpg", _bytes(lambda: np.random.default_rng(0).bytes(4096)), NOT_AN_IMAGE),
    "text file renamed .jpg": BadFile("notes.jpg", _bytes(b"these are my notes, not a picture\n" * 20), NOT_AN_IMAGE),
    "PDF renamed .png": BadFile("scan.png", _bytes(b"%PDF-1.4\n1 0 obj <</Type /Catalog>> endobj\ntrailer <<>>\n%%EOF\n"),
                                NOT_AN_IMAGE),
    "SVG renamed .webp": BadFile("vector.webp", _bytes(b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'),
                                 NOT_AN_IMAGE),
    "png 0 pixels wide": BadFile("no width.png", _bytes(lambda: _png_header_only(0, 10)), NOT_AN_IMAGE),
    "broken file with unicode name": BadFile("cassé ✗ copie.jpg", _bytes(b"\xff\xd8\xff\xe0 not really a jpeg"),
                                                     "unreadable file.*(?i:truncated)"),
    "bomb: png 9000x9000": BadFile("bomb.png", _bytes(lambda: _png_header_only(9000, 9000)), TOO_LARGE, bomb=True),
    "bomb: png 100000x100000": BadFile("huge.png", _bytes(lambda: _png_header_only(100_000, 100_000)), TOO_LARGE, bomb=True),
    "bomb: jpeg 30000x30000": BadFile("huge.jpg", _bytes(lambda: _jpeg_claiming(30_000, 30_000)), TOO_LARGE, bomb=True),
    "bomb: gif 9000x9000": BadFile("huge.gif", _bytes(lambda: _gif_claiming(9000, 9000)), TOO_LARGE, bomb=True),
}
USABLE = [k for k, f in IMAGES.items() if f.usable]
REFUSED = [k for k, f in IMAGES.items() if not f.usable]


def write_image_corpus(folder: Path) -> dict[str, tuple[Path, BadFile]]:
    """Write every kind of IMAGES into `folder`: {kind: (path, what must happen to it)}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind, bad in IMAGES.items():
        path = folder / bad.name
        bad.write(path)
        out[kind] = (path, bad)
    assert len({p for p, _ in out.values()}) == len(IMAGES), "two kinds share a file name"
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, tuple[Path, BadFile]]:
    return write_image_corpus(tmp_path_factory.mktemp("corpus") / "bad files")


@pytest.fixture(autouse=True)
def keep_sigterm():
    """The CLI's train and resume turn SIGTERM into KeyboardInterrupt: not in pytest's process after the test."""
    import signal

    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


@pytest.fixture
def no_decoding(monkeypatch):
    """Make any attempt to decode pixels fail loudly: a bomb must be refused from its header."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{self.format} image {self.size} was decoded: a bomb must be refused before that")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(Image.Image, "load", refuse)


# ---------------------------------------------------------------------------------------------
# 1. images.load_rgb and prepare_image


@pytest.mark.parametrize("kind", list(IMAGES))
def test_every_file_kind_through_load_rgb_and_prepare_image(kind, corpus, request):
    path, bad = corpus[kind]
    if bad.bomb:
        request.getfixturevalue("no_decoding")
    for source in (path, path.read_bytes(), str(path)):
        start = time.perf_counter()
        if bad.usable:
            img = load_rgb(source)
            assert img.mode == "RGB" and min(img.size) >= 1
            if bad.check:
                bad.check(img)
            arr = prepare_image(source, 300)
            assert arr.shape == (3, 300, 300) and arr.dtype == np.uint8
        else:
            with pytest.raises(ImageError, match=bad.reason):
                load_rgb(source)
            with pytest.raises(ImageError, match=bad.reason):
                prepare_image(source, 300)
        # a few hundred bytes must never cost seconds (the 1x20000 strip took 20 s before)
        assert time.perf_counter() - start < 3.0, f"{kind}: {time.perf_counter() - start:.1f} s"
    tried("images.load_rgb", kind)
    tried("images.prepare_image", kind)


def test_the_no_decoding_guard_catches_decoding(no_decoding):
    """The bombs above pass with decoding made impossible; this shows that the guard is live."""
    with pytest.raises(AssertionError, match="was decoded"):
        load_rgb(_encoded(_noise((8, 8)), "PNG"))


# ---------------------------------------------------------------------------------------------
# 2. data loading: the whole corpus inside a data set, and bad data set layouts

GOOD_PER_CLASS = 4


def corpus_dataset(root: Path) -> Path:
    """fake/ and real/ with GOOD_PER_CLASS good images each, plus every corpus file in fake/."""
    make_class_folders(root, GOOD_PER_CLASS, GOOD_PER_CLASS, size=(40, 40))
    write_image_corpus(root / "fake")
    return root


@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory) -> Path:
    return corpus_dataset(tmp_path_factory.mktemp("dataset") / "faces")


def test_a_data_set_holding_the_whole_corpus_keeps_the_good_and_lists_each_bad_file(bad_dataset):
    data = load_dataset(bad_dataset, 32)
    require_trainable(data)  # the good ones are enough to train
    assert data.images.shape == (len(data), 3, 32, 32)
    kept, skipped = set(data.ids), {s.id: s.reason for s in data.report.skipped}
    for kind, bad in IMAGES.items():
        image_id = f"fake/{bad.name}"
        if bad.usable:
            assert image_id in kept and image_id not in skipped, kind
        else:
            assert image_id not in kept, kind
            assert re.search(bad.reason, skipped[image_id]), (kind, skipped[image_id])
    assert len(data) == 2 * GOOD_PER_CLASS + len(USABLE)
    assert len(skipped) == len(REFUSED)
    assert data.report.counts == {"fake": GOOD_PER_CLASS + len(USABLE), "real": GOOD_PER_CLASS}
    tried("dataset.load_dataset", *IMAGES)


@dataclass(frozen=True)
class BadLayout:
    build: Callable[[Path, Path], Path]  # (tmp folder, a folder outside the data set) -> the path a user gives
    reason: str  # regex: in the DataError, or in a skipped file's reason
    trainable: bool  # whether require_trainable accepts what is left


def _good(root: Path, n=GOOD_PER_CLASS) -> Path:
    return make_class_folders(root, n, n, size=(32, 32))


def _kaggle(root: Path, rows: str, n=GOOD_PER_CLASS) -> Path:
    """The Kaggle layout: ids without folder or extension in data.csv."""
    for i in range(n):
        write_image(root / "fake" / f"fake_{i}.jpg", (32, 32), (180, 60, 60))
        write_image(root / "real" / f"real_{i}.jpg", (32, 32), (60, 60, 180))
    header = "images_id,label\n" + "".join(f"fake_{i},fake\nreal_{i},real\n" for i in range(n))
    (root / "data.csv").write_text(header + rows)
    return root


def _one_class(t: Path, _o: Path) -> Path:
    for i in range(6):
        write_image(t / "set" / "fake" / f"{i}.jpg", (32, 32))
    return t / "set"


def _other_class_empty(t: Path, _o: Path) -> Path:
    root = _one_class(t, _o)
    (root / "real").mkdir()
    return root


def _nested(t: Path, _o: Path) -> Path:
    root = _good(t / "set")
    write_image(root / "fake" / "2019" / "batch a" / "deep.jpg", (32, 32))
    write_image(root / "real" / "x" / "y" / "z" / "deeper.png", (32, 32))
    return root


def _two_cases(t: Path, _o: Path) -> Path:
    root = _good(t / "set")
    for i in range(2):  # a merged set: Real/ beside real/ (was: one of the two silently left out)
        write_image(root / "Real" / f"merged {i}.jpg", (32, 32))
        write_image(root / "FAKE" / f"merged {i}.jpg", (32, 32))
    return root


def _wrapped(t: Path, _o: Path) -> Path:
    _good(t / "download" / "archive (1)" / "faces")
    return t / "download"


def _symlink_file(t: Path, outside: Path) -> Path:
    root = _good(t / "set")
    (root / "fake" / "elsewhere.jpg").symlink_to(write_image(outside / "private.jpg", (32, 32)))
    return root


def _symlink_class_folder(t: Path, outside: Path) -> Path:
    root = _good(t / "set")
    shutil.rmtree(root / "real")
    _good(outside / "other set")
    (root / "real").symlink_to(outside / "other set" / "real", target_is_directory=True)
    return root


def _symlink_subfolder(t: Path, outside: Path) -> Path:
    root = _good(t / "set")
    _good(outside / "more")
    (root / "fake" / "more").symlink_to(outside / "more" / "fake", target_is_directory=True)
    return root


def _symlink_loop(t: Path, _o: Path) -> Path:
    root = _good(t / "set")
    (root / "fake" / "again").symlink_to(root / "fake", target_is_directory=True)
    return root


def _not_images(t: Path, _o: Path) -> Path:
    root = _good(t / "set")
    (root / "fake" / "README").write_text("no extension")
    (root / "real" / "notes.txt").write_text("text")
    (root / "real" / "face.svg").write_text("<svg/>")
    return root


def _all_bad(t: Path, _o: Path) -> Path:
    root = t / "set"
    for name in ("fake", "real"):
        (root / name).mkdir(parents=True)
        for kind in REFUSED[:4]:
            IMAGES[kind].write(root / name / IMAGES[kind].name)
    return root


def _a_file(t: Path, _o: Path) -> Path:
    (t / "faces.zip").write_bytes(b"PK")
    return t / "faces.zip"


def _csv_contradicts(t: Path, _o: Path) -> Path:
    root = _kaggle(t / "set", "")
    rows = [f"fake_{i},real" for i in range(GOOD_PER_CLASS)] + [f"real_{i},real" for i in range(GOOD_PER_CLASS)]
    (root / "data.csv").write_text("images_id,label\n" + "\n".join(rows) + "\n")
    return root


def _csv_other_columns(t: Path, _o: Path) -> Path:
    root = _good(t / "set")
    (root / "data.csv").write_text("file,class\nf0,fake\n")
    return root


def _bytes_csv(t: Path, _o: Path) -> Path:
    root = _good(t / "set")
    (root / "data.csv").write_bytes(b"\xff\xfe\x00\x00 binary \x81\x82")
    return root


LAYOUTS: dict[str, BadLayout] = {
    "empty folder": BadLayout(lambda t, o: (t / "empty").mkdir() or t / "empty", "no data set found", False),
    "missing folder": BadLayout(lambda t, o: t / "nowhere", "does not exist", False),
    "path with a NUL byte": BadLayout(lambda t, o: t / "fa\x00ces", "does not exist", False),
    "path too long": BadLayout(lambda t, o: t / ("a" * 5000), "cannot be opened", False),
    "home folder of an unknown user": BadLayout(lambda t, o: Path("~no-such-user-fvr/faces"), "cannot be opened", False),
    "a file, not a folder": BadLayout(_a_file, "is a file, not a folder", False),
    "one class only": BadLayout(_one_class, "no data set found", False),
    "other class folder empty": BadLayout(_other_class_empty, "not enough usable images.*real has 0", False),
    "every image unusable": BadLayout(_all_bad, "not enough usable images", False),
    "csv naming missing files": BadLayout(lambda t, o: _kaggle(t / "set", "ghost_1,fake\nghost_2,real\n"),
                                          "csv row names no file", True),
    "csv with duplicate ids": BadLayout(lambda t, o: _kaggle(t / "set", "fake_0,fake\nreal_1,real\n"),
                                        "duplicate id", True),
    "csv labels other than fake/real": BadLayout(lambda t, o: _kaggle(t / "set", "fake_1,FAKE!\nreal_2,human\nfake_3,\n"),
                                                 "neither fake nor real", True),
    "csv label contradicting the folder": BadLayout(_csv_contradicts, "csv says real but the file is fake/", False),
    "csv with other columns": BadLayout(_csv_other_columns, "must have the columns images_id,label", False),
    "csv that is not text": BadLayout(_bytes_csv, "cannot read", False),
    "nested folders": BadLayout(_nested, "", True),
    "wrapped in two folders": BadLayout(_wrapped, "", True),
    "class folders in two cases": BadLayout(_two_cases, "", True),
    "symlink to a file outside": BadLayout(_symlink_file, "symbolic link pointing outside the data folder", True),
    "class folder linked outside": BadLayout(_symlink_class_folder, "symbolic link pointing outside.*|not enough usable", False),
    "subfolder linked outside": BadLayout(_symlink_subfolder, "symbolic link pointing outside the data folder", True),
    "symlink loop": BadLayout(_symlink_loop, "symbolic link to a folder \\(not followed\\)", True),
    "files that are not images": BadLayout(_not_images, "not an image file extension", True),
}


def _outcome(path: Path) -> tuple[str, list[str], bool, list[str]]:
    """(DataError message or "", skipped "id: reason"s, trainable, ids kept) of `path` as a data set."""
    try:
        data = load_dataset(path, 32)
    except DataError as exc:
        return str(exc), [], False, []
    reasons = [f"{s.id}: {s.reason}" for s in data.report.skipped]
    try:
        require_trainable(data)
    except DataError as exc:
        return str(exc), reasons, False, data.ids
    return "", reasons, True, data.ids


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_every_data_set_layout_through_load_dataset(kind, tmp_path):
    layout = LAYOUTS[kind]
    path = layout.build(tmp_path, tmp_path / "outside")
    error, reasons, trainable, ids = _outcome(path)
    assert trainable == layout.trainable, (kind, error, reasons)
    said = "\n".join([error, *reasons])
    if layout.reason:
        assert re.search(layout.reason, said), (kind, said)
    else:
        assert not reasons and not error, said
    root = find_dataset_root(path).resolve() if ids else None
    assert all((root / i).resolve().is_relative_to(root) for i in ids), "a file outside the data folder was read"
    if kind == "nested folders":
        assert {"fake/2019/batch a/deep.jpg", "real/x/y/z/deeper.png"} <= set(ids)
    if kind == "class folders in two cases":
        assert sum(i.startswith("Real/") for i in ids) == 2 and sum(i.startswith("FAKE/") for i in ids) == 2
        assert len(ids) == 2 * GOOD_PER_CLASS + 4
    tried("dataset.load_dataset", kind)


@pytest.mark.parametrize("kind", [k for k, v in LAYOUTS.items() if not v.trainable])
def test_unusable_data_sets_through_cli_train_exit_3_with_the_reason(kind, tmp_path, capsys):
    layout = LAYOUTS[kind]
    path = layout.build(tmp_path, tmp_path / "outside")
    code = cli.main(["train", "--data", str(path), "--epochs", "1", "--image-size", "48", "--threads", "1",
                     "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_DATA, err
    assert "Traceback" not in err, err
    if not re.search(layout.reason, err):  # the reason is a skipped file's: in the run's data report
        assert "not enough usable images" in err, err
        (report,) = (tmp_path / "runs").glob("*/data_report.json")
        assert any(re.search(layout.reason, f"{s['id']}: {s['reason']}") for s in json.loads(report.read_text())["skipped"])
    tried("CLI train", kind)


# ---------------------------------------------------------------------------------------------
# 3. the Data page: a folder with bad files, bad layouts, bad zips


def _app(data: Path | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    if data is not None:
        at.session_state["data_path"] = str(data)
    return at.run()


def _page(at, name: str):
    return at.switch_page(f"pages/{name}.py").run()


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def _no_traceback(at) -> None:
    assert not at.exception, _texts(at.exception)


def test_data_page_on_the_corpus_lists_every_bad_file_with_its_reason(bad_dataset):
    at = _page(_app(bad_dataset), "data")
    _no_traceback(at)
    report = at.dataframe[0].value
    reasons = dict(zip(report["file"], report["reason"]))
    for kind in REFUSED:
        bad = IMAGES[kind]
        assert re.search(bad.reason, reasons[f"fake/{bad.name}"]), kind
    assert len(reasons) == len(REFUSED)
    assert f"{len(REFUSED)} file(s) were skipped" in _texts(at.warning)
    assert f"{2 * GOOD_PER_CLASS + len(USABLE)} usable images" in _texts(at.caption)
    tried("Data page (chosen folder)", *IMAGES)


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_every_data_set_layout_on_the_data_page(kind, tmp_path):
    layout = LAYOUTS[kind]
    path = layout.build(tmp_path, tmp_path / "outside")
    at = _page(_app(path), "data")
    _no_traceback(at)
    shown = "\n".join([_texts(at.error), _texts(at.warning), _texts(at.success)]
                      + ["\n".join(f"{f}: {r}" for f, r in zip(d.value["file"], d.value["reason"])) for d in at.dataframe])
    if layout.reason:
        assert re.search(layout.reason, shown) or (not layout.trainable and "fewer than 3 usable images" in shown), shown
    else:
        assert "nothing was skipped" in shown, shown
    if not layout.trainable:
        assert "cannot be used" in shown or "fewer than 3 usable images" in shown, shown
    tried("Data page (chosen folder)", kind)


@pytest.mark.parametrize("text, reason", [
    ("", "no folder given"), ("   ", "no folder given"), ("fa\x00ces", "not a path this machine can open"),
    ("/" + "a" * 5000, "not a path this machine can open"), ("~no-such-user-fvr/faces", "not a path this machine can open"),
    ("/dev/null", "is a file"), ("{tmp}/nowhere", "does not exist"), ("{tmp}", "no data set found"),
])
def test_typed_folder_paths_on_the_data_page(text, reason, tmp_path):
    at = _page(_app(), "data")
    at.get("button_group")[0].set_value("Folder path").run()
    at.text_input(key="data_folder").input(text.replace("{tmp}", str(tmp_path))).run()
    next(b for b in at.button if b.label == "Use this folder").click().run()
    _no_traceback(at)
    assert re.search(reason, _texts(at.error)), _texts(at.error)
    assert "data_path" not in at.session_state
    tried("Data page (chosen folder)", f"typed path: {reason}")


@dataclass(frozen=True)
class BadZip:
    build: Callable[[bytes, Path, Path], bytes]  # (a good jpeg, the corpus folder, an outside folder) -> the zip
    reason: str | None  # regex of the refusal; None: extracts and reads, skipping the bad files inside


def _zip(entries: dict, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in entries.items():
            if isinstance(data, zipfile.ZipInfo):
                zf.writestr(data, b"/etc/passwd")
            else:
                zf.writestr(name, data)
    return buffer.getvalue()


def _faces(jpeg: bytes, **extra) -> dict:
    return {**{f"faces/{c}/{i}.jpg": jpeg for c in ("fake", "real") for i in range(3)}, **extra}


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("faces/real/link.jpg")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _encrypted(jpeg: bytes) -> bytes:
    data = bytearray(_zip(_faces(jpeg)))
    cd = data.rfind(b"PK\x01\x02")  # zipfile cannot write encrypted entries: set the flag bit
    struct.pack_into("<H", data, cd + 8, struct.unpack_from("<H", data, cd + 8)[0] | 0x1)
    return bytes(data)


def _corpus_zip(jpeg: bytes, corpus_folder: Path) -> bytes:
    return _zip(_faces(jpeg, **{f"faces/fake/{p.name}": p.read_bytes() for p in sorted(corpus_folder.iterdir())}))


ZIPS: dict[str, BadZip] = {
    "path traversal (../)": BadZip(lambda j, c, o: _zip(_faces(j, **{"../../../evil.jpg": j})), "outside"),
    "path traversal inside a folder": BadZip(lambda j, c, o: _zip(_faces(j, **{"faces/real/../../../../evil.jpg": j})), "outside"),
    "path traversal with backslashes": BadZip(lambda j, c, o: _zip(_faces(j, **{"..\\..\\..\\evil.jpg": j})), "outside"),
    "absolute path": BadZip(lambda j, c, o: _zip(_faces(j, **{f"{o}/absolute evil.jpg": j})), "absolute"),
    "windows drive path": BadZip(lambda j, c, o: _zip(_faces(j, **{"C:/evil.jpg": j})), "absolute"),
    "symbolic link entry": BadZip(lambda j, c, o: _zip(_faces(j, link=_symlink_entry())), "symbolic link"),
    "zip bomb": BadZip(lambda j, c, o: _zip(_faces(j, **{"faces/real/bomb.png": bytes(8 * MILLION)})), "zip bomb"),
    "encrypted entry": BadZip(lambda j, c, o: _encrypted(j), "encrypted"),
    "no images": BadZip(lambda j, c, o: _zip({"set/data.csv": b"images_id,label\n", "set/readme.md": b"hi"}), "holds no images"),
    "not a zip": BadZip(lambda j, c, o: b"this is not a zip at all", "not a zip file"),
    "empty file": BadZip(lambda j, c, o: b"", "not a zip file"),
    "truncated zip": BadZip(lambda j, c, o: (lambda z: z[: len(z) // 2])(_zip(_faces(j))), "not a zip file"),
    "images but no class folders": BadZip(lambda j, c, o: _zip({"photos/a.jpg": j, "photos/b.jpg": j}), "no data set found"),
    "the whole bad-file corpus inside": BadZip(lambda j, c, o: _corpus_zip(j, c), None),
}


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return _encoded(_noise((32, 32)), "JPEG")


def _zip_bytes(kind: str, jpeg: bytes, corpus, outside: Path) -> bytes:
    corpus_folder = next(iter(corpus.values()))[0].parent
    return ZIPS[kind].build(jpeg, corpus_folder, outside)


def _nothing_outside(tmp_path: Path) -> None:
    """The zip tests extract under tmp_path/root/data (FVR_DATA_DIR); hostile entries aim above it
    and at tmp_path/outside."""
    found = [p for p in (tmp_path / "root").rglob("*") if p.is_file() and not p.is_relative_to(tmp_path / "root" / "data")]
    found += [p for p in (tmp_path / "outside").rglob("*")] if (tmp_path / "outside").exists() else []
    assert not found, f"written outside the data folder: {found}"


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "root" / "data"
    root.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    monkeypatch.setenv("FVR_DATA_DIR", str(root))
    return root


@pytest.mark.parametrize("kind", list(ZIPS))
def test_every_zip_through_extract_dataset_zip(kind, jpeg, corpus, tmp_path, data_root):
    bad = ZIPS[kind]
    data = _zip_bytes(kind, jpeg, corpus, tmp_path / "outside")
    try:
        folder = find_dataset_root(extract_dataset_zip(data))
    except (ArchiveError, DataError) as exc:
        assert bad.reason and re.search(bad.reason, str(exc)), (kind, exc)
        if isinstance(exc, ArchiveError):  # refused before a byte was written
            assert not (data_root / "uploads").exists() or not any((data_root / "uploads").iterdir())
    else:
        assert bad.reason is None, f"{kind} was accepted"
        error, reasons, trainable, _ = _outcome(folder)
        assert trainable, error
        assert len([r for r in reasons if r.startswith("fake/")]) == len(REFUSED), reasons
    _nothing_outside(tmp_path)
    tried("archive.extract_dataset_zip", kind)


def _upload_zip(at, key: str, name: str, data: bytes):
    at.file_uploader(key=key).set_value((name, data, "application/zip")).run()
    return at


@pytest.mark.parametrize("kind", list(ZIPS))
def test_every_zip_uploaded_on_the_data_page(kind, jpeg, corpus, tmp_path, data_root):
    bad = ZIPS[kind]
    at = _page(_app(), "data")
    at.get("button_group")[0].set_value("Upload a zip").run()
    _upload_zip(at, "data_zip", f"{kind}.zip", _zip_bytes(kind, jpeg, corpus, tmp_path / "outside"))
    next(b for b in at.button if b.label == "Use this zip").click().run()
    _no_traceback(at)
    if bad.reason:
        errors = _texts(at.error)
        assert f"{kind}.zip" in errors and re.search(bad.reason, errors), errors
        if "no data set found" not in bad.reason:  # refused before a byte was written, no half-extracted folder left
            assert not (data_root / "uploads").exists() or not any((data_root / "uploads").iterdir())
    else:
        assert str(data_root / "uploads") in at.session_state["data_path"]
        report = at.dataframe[0].value
        assert len(report) == len(REFUSED) and all(report["reason"].str.len() > 0)
    _nothing_outside(tmp_path)
    tried("Data page (zip upload)", kind)


# ---------------------------------------------------------------------------------------------
# 4. Predict: uploads of every file kind, labelled zips, broken checkpoints


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> Path:
    """A finished run of the small CNN (trained once here; tests copy it into their runs folder)."""
    from fvr_core.training.trainer import train

    base = tmp_path_factory.mktemp("trained")
    data = make_class_folders(base / "faces", 6, 6, size=(32, 32))
    run = train(TrainConfig(data=str(data), model="tiny_cnn", epochs=1, image_size=48, batch_size=8, threads=1),
                runs_dir=base / "runs")
    assert run.state == "completed", run.status()
    return run.path


def _link_or_copy(src: str, dst: str) -> None:
    # the weights and optimizer state are 150 MB a run: linked, and replaced (never written through) by _replace
    if src.endswith((".safetensors", ".pt")):
        os.symlink(src, dst)
    else:
        shutil.copy2(src, dst)


def _replace(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)  # a link to the trained run's file: never write through it
    path.write_bytes(data)


@pytest.fixture
def run(trained_dir):
    """A copy of the trained run in this test's runs folder (tests may damage it)."""
    from fvr_core.runs.store import Run

    target = Path(os.environ["FVR_RUNS_DIR"]) / trained_dir.name
    shutil.copytree(trained_dir, target, ignore=shutil.ignore_patterns("*.tmp"), copy_function=_link_or_copy)
    return Run(target)


def _good_photo(tmp_path: Path) -> Path:
    return write_image(tmp_path / "good photo.jpg", (120, 90), (90, 120, 200))


# the Predict uploader takes these (Streamlit refuses other extensions itself, in the browser and on the server)
UPLOADABLE = (".jpg", ".jpeg", ".png", ".webp")


def test_every_file_kind_uploaded_at_once_on_predict(run, corpus, tmp_path):
    at = _page(_app(), "predict")
    _no_traceback(at)
    at.toggle(key="judge_without_face").set_value(True).run()  # the corpus holds no faces: judge them whole
    chosen = {k: (p, bad) for k, (p, bad) in corpus.items() if p.suffix.lower() in UPLOADABLE}
    assert len(chosen) >= len(corpus) - 4
    uploads = [(p.name, p.read_bytes(), "application/octet-stream") for p, _ in chosen.values()]
    uploads.append(("good photo.jpg", _good_photo(tmp_path).read_bytes(), "image/jpeg"))
    at.file_uploader(key="photos").set_value(uploads).run()
    _no_traceback(at)
    errors = [str(e.value) for e in at.error]
    refused = [k for k in chosen if not IMAGES[k].usable]
    for kind in refused:
        bad = IMAGES[kind]
        mine = [e for e in errors if e.startswith(f"{bad.name}: ")]
        assert len(mine) == 1 and re.search(bad.reason, mine[0]), (kind, errors)
    assert len(errors) == len(refused), errors
    assert [s.value for s in at.subheader] == [name for name, _, _ in uploads]  # every photo has its section
    verdicts = [m.value for m in at.markdown if "% fake" in str(m.value)]
    assert len(verdicts) >= len(chosen) - len(refused) + 1, verdicts  # a probability for every usable photo
    tried("Predict page (photo uploads)", *chosen)


def test_every_file_kind_through_the_predictor(run, corpus, tmp_path):
    from fvr_core.inference.predict import Predictor

    paths = [p for p, _ in corpus.values()] + [_good_photo(tmp_path)]
    # face search runs on every kind; none holds a face, so each is judged whole when asked to
    predictions = Predictor.from_run(run).predict(paths, face_crop=True, judge_without_face=True)
    by_source: dict[str, list] = defaultdict(list)
    for p in predictions:
        by_source[p.source].append(p)
    for kind, (path, bad) in corpus.items():
        (first, *_) = by_source[str(path)]
        if bad.usable:
            assert all(p.error is None and 0 <= p.prob_fake <= 1 and p.verdict for p in by_source[str(path)]), kind
        else:
            assert first.error and re.search(bad.reason, first.error) and first.prob_fake is None, (kind, first)
    tried("predict.Predictor", *IMAGES)


def test_every_file_kind_through_cli_predict(run, corpus, tmp_path):
    """A real process: per-file errors, exit code 3, and the good files still predicted."""
    paths = [str(p) for p, _ in corpus.values()] + [str(_good_photo(tmp_path))]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "fvr_core", "predict", run.id, *paths, "--json", "--no-face-crop"],
                            capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == cli.EXIT_DATA, result.stderr
    assert "Traceback" not in result.stderr
    rows = {r["image"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(paths)
    for kind, (path, bad) in corpus.items():
        row = rows[str(path)]
        if bad.usable:
            assert row["error"] is None and 0 <= row["prob_fake"] <= 1, (kind, row)
        else:
            assert row["error"] and re.search(bad.reason, row["error"]), (kind, row)
    assert rows[paths[-1]]["error"] is None
    tried("CLI predict", *IMAGES)


def test_cli_predict_on_a_folder_without_images_exits_3(run, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.txt").write_text("no photos here")
    code = cli.main(["predict", run.id, str(tmp_path / "photos")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_DATA and "no image files" in err and str(tmp_path / "photos") in err, err


@pytest.mark.parametrize("kind", [k for k, z in ZIPS.items() if z.reason and "no data set" not in z.reason])
def test_every_hostile_zip_as_a_labelled_set_on_predict(kind, run, jpeg, corpus, tmp_path, data_root):
    at = _page(_app(), "predict")
    _upload_zip(at, "labelled_zip", f"{kind}.zip", _zip_bytes(kind, jpeg, corpus, tmp_path / "outside"))
    _no_traceback(at)
    assert re.search(ZIPS[kind].reason, _texts(at.error)), _texts(at.error)
    _nothing_outside(tmp_path)
    tried("Predict page (labelled zip)", kind)


# ---------------------------------------------------------------------------------------------
# 5. checkpoints: damaged, for another model or size, and pickles that would run code


class _RunsCode:
    """Unpickling this opens (creates) the marker file: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        import builtins

        return (builtins.open, (self.marker, "w"))


def _malicious_pickle(marker: Path) -> bytes:
    import pickle

    return pickle.dumps({"state_dict": _RunsCode(marker)})


def _edit_json(run_path: Path, **changes) -> None:
    meta = json.loads((run_path / "best.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (run_path / "best.json").write_text(json.dumps(meta))


def _weights(run_path: Path, make: Callable[[bytes], bytes]) -> None:
    path = run_path / "best.safetensors"
    _replace(path, make(path.read_bytes()))


@dataclass(frozen=True)
class BadCheckpoint:
    damage: Callable[[Path, Path], None]  # (run folder, marker file) -> None
    reason: str | None  # None: loads and predicts
    image_size: int | None = None  # the size predictions then use


DAMAGED = "is damaged or not a safetensors file"
CHECKPOINTS: dict[str, BadCheckpoint] = {
    "weights: random bytes": BadCheckpoint(lambda r, m: _weights(r, lambda b: os.urandom(4096)), DAMAGED),
    "weights: truncated": BadCheckpoint(lambda r, m: _weights(r, lambda b: b[: len(b) // 2]), DAMAGED),
    "weights: empty": BadCheckpoint(lambda r, m: _weights(r, lambda b: b""), DAMAGED),
    "weights: a pickle that runs code": BadCheckpoint(lambda r, m: _weights(r, lambda b: _malicious_pickle(m)), DAMAGED),
    "metadata: missing": BadCheckpoint(lambda r, m: (r / "best.json").unlink(), "missing or damaged|No such file"),
    "metadata: not JSON": BadCheckpoint(lambda r, m: (r / "best.json").write_text("{model: cnn"), "missing or damaged"),
    "another architecture": BadCheckpoint(lambda r, m: _edit_json(r, model="resnet18"), "does not fit model 'resnet18'"),
    "unknown architecture": BadCheckpoint(lambda r, m: _edit_json(r, model="alexnet"), "unknown model 'alexnet'"),
    # the cnn ends in adaptive pooling: its weights work at any input size, and photos are scaled
    # to the size the checkpoint names
    "another image size": BadCheckpoint(lambda r, m: _edit_json(r, image_size=64), None, image_size=64),
    "image size too small for the model": BadCheckpoint(lambda r, m: _edit_json(r, image_size=4), r"tiny_cnn needs at least 8 px"),
    "image size missing": BadCheckpoint(lambda r, m: _edit_json(r, image_size=None), "image_size None"),
    "image size not a number": BadCheckpoint(lambda r, m: _edit_json(r, image_size="large"), "image_size 'large'"),
    "temperature 0": BadCheckpoint(lambda r, m: _edit_json(r, temperature=0), "temperature 0"),
}


def _damaged(run, kind: str, tmp_path: Path) -> Path:
    marker = tmp_path / "code ran"
    CHECKPOINTS[kind].damage(run.path, marker)
    return marker


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_every_checkpoint_kind_through_load_checkpoint_and_the_predictor(kind, run, tmp_path):
    from fvr_core.runs.checkpoint import CheckpointError, load_checkpoint
    from fvr_core.inference.predict import Predictor

    bad = CHECKPOINTS[kind]
    marker = _damaged(run, kind, tmp_path)
    photo = _good_photo(tmp_path)
    if bad.reason is None:
        model, meta = load_checkpoint(run.path / "best.safetensors")
        predictor = Predictor.from_run(run)
        assert predictor.image_size == bad.image_size
        (pred,) = predictor.predict([photo], face_crop=False)
        assert pred.error is None and 0 <= pred.prob_fake <= 1
    else:
        with pytest.raises((CheckpointError, OSError), match=bad.reason):
            load_checkpoint(run.path / "best.safetensors")
        with pytest.raises((CheckpointError, OSError), match=bad.reason):
            Predictor.from_run(run)
    assert not marker.exists(), "loading a checkpoint ran code from it"
    tried("checkpoint.load_checkpoint", kind)
    tried("predict.Predictor", kind)


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_every_checkpoint_kind_through_cli_predict(kind, run, tmp_path, capsys):
    bad = CHECKPOINTS[kind]
    marker = _damaged(run, kind, tmp_path)
    code = cli.main(["predict", run.id, str(_good_photo(tmp_path)), "--json", "--no-face-crop"])
    out, err = capsys.readouterr()
    if bad.reason is None:
        assert code == cli.EXIT_OK, err
        assert json.loads(out)[0]["prob_fake"] is not None
    else:
        assert code == cli.EXIT_RUN, err
        assert re.search(bad.reason, err) and str(run.path) in err, err
    assert not marker.exists()
    tried("CLI predict", kind)


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_every_checkpoint_kind_on_the_predict_page(kind, run, tmp_path):
    bad = CHECKPOINTS[kind]
    marker = _damaged(run, kind, tmp_path)
    at = _page(_app(), "predict")
    _no_traceback(at)
    if bad.reason is None:
        at.toggle(key="judge_without_face").set_value(True).run()  # the photo is judged whole: it is about the checkpoint
        at.file_uploader(key="photos").set_value([("good photo.jpg", _good_photo(tmp_path).read_bytes(), "image/jpeg")]).run()
        _no_traceback(at)
        assert "% fake" in _texts(at.markdown)
    else:
        errors = _texts(at.error)
        assert f"Cannot load {run.id}" in errors and re.search(bad.reason, errors), errors
    assert not marker.exists()
    tried("Predict page (photo uploads)", kind)


def _torch_saved(state) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _state_tensors() -> dict:
    import torch

    return {"step": 3, "epoch": 1, "torch_rng": torch.get_rng_state()}


LAST_STATES: dict[str, Callable[[Path, Path], None]] = {
    "training state: a pickle that runs code": lambda path, m: _replace(path, _torch_saved({"optimizer": _RunsCode(m), "step": 3})),
    "training state: random bytes": lambda path, m: _replace(path, os.urandom(2048)),
    "training state: empty": lambda path, m: _replace(path, b""),
    "training state: truncated": lambda path, m: _replace(path, _torch_saved(_state_tensors())[:300]),
    "training state: not a dict": lambda path, m: _replace(path, _torch_saved([1, 2, 3])),
}
CHECKPOINT_KINDS = [*CHECKPOINTS, *LAST_STATES]


@pytest.mark.parametrize("kind", list(LAST_STATES))
def test_every_training_state_kind_is_refused_without_running_code(kind, run, tmp_path, capsys):
    from fvr_core.runs.checkpoint import CheckpointError, load_training_state
    from fvr_core.runs.store import FAILED, STOPPED, Run
    from fvr_core.training.trainer import resume

    marker = tmp_path / "code ran"
    LAST_STATES[kind](run.path / "last_state.pt", marker)
    with pytest.raises(CheckpointError, match=re.escape(str(run.path / "last_state.pt"))):
        load_training_state(run.path / "last_state.pt")
    assert not marker.exists()

    run.write_status(STOPPED, message="stopped by the test")
    with pytest.raises(CheckpointError):
        resume(run)
    assert not marker.exists(), "resuming ran code from last_state.pt"
    assert run.state == FAILED and run.status().get("message")

    if kind.endswith("runs code"):  # the CLI names what it refused, and never prints a traceback
        code = cli.main(["resume", run.id])
        err = capsys.readouterr().err
        assert code == cli.EXIT_RUN and "last_state.pt" in err and "Traceback" not in err, err
        assert not marker.exists()
    assert Run(run.path).state == FAILED
    tried("resume (library and CLI)", kind)


def test_fvr_core_loads_no_pickle_except_with_weights_only():
    """Every torch.load in fvr_core passes weights_only=True; nothing else unpickles."""
    loads = []
    for path in sorted((REPO / "fvr_core").rglob("*.py")):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\((.*)", text):
            loads.append(path.name)
            assert "weights_only=True" in match.group(1), f"{path.name}: {match.group(0)}"
        for unsafe in (r"\bpickle\.loads?\(", r"allow_pickle\s*=\s*True", r"\bjoblib\.load\(", r"\bdill\b", r"weights_only\s*=\s*False"):
            assert not re.search(unsafe, text), f"{path.name} uses {unsafe}"
    assert loads, "expected fvr_core's resume to torch.load last_state.pt"


# ---------------------------------------------------------------------------------------------
# 6. settings: the library, the CLI and the Train page's widgets


@dataclass(frozen=True)
class BadSetting:
    field: str
    value: object
    cli: str  # the same value as typed on a command line


SETTINGS: dict[str, BadSetting] = {
    "epochs 0": BadSetting("epochs", 0, "0"),
    "epochs -1": BadSetting("epochs", -1, "-1"),
    "epochs not a number": BadSetting("epochs", "three", "three"),
    "epochs 2.5": BadSetting("epochs", 2.5, "2.5"),
    "lr 0": BadSetting("lr", 0.0, "0"),
    "lr -1": BadSetting("lr", -1.0, "-1"),
    "lr nan": BadSetting("lr", math.nan, "nan"),
    "lr inf": BadSetting("lr", math.inf, "inf"),
    "batch size 0": BadSetting("batch_size", 0, "0"),
    "batch size -8": BadSetting("batch_size", -8, "-8"),
    "image size 8 (cnn needs 44)": BadSetting("image_size", 8, "8"),
    "image size 0": BadSetting("image_size", 0, "0"),
    "unknown model": BadSetting("model", "alexnet", "alexnet"),
    "unknown optimizer": BadSetting("optimizer", "lion", "lion"),
    "unknown augmentation": BadSetting("augment", "extreme", "extreme"),
    "seed -1": BadSetting("seed", -1, "-1"),
    "split with an empty part": BadSetting("split", (0.8, 0.2, 0.0), "0.8,0.2,0"),
    "split of two parts": BadSetting("split", (0.8, 0.2), "0.8,0.2"),
    "label smoothing 1": BadSetting("label_smoothing", 1.0, "1"),
    "weight decay -0.1": BadSetting("weight_decay", -0.1, "-0.1"),
    "weight decay inf": BadSetting("weight_decay", math.inf, "inf"),
    "warm-up -1": BadSetting("warmup_epochs", -1.0, "-1"),
    "patience -1": BadSetting("patience", -1, "-1"),
    "threads -1": BadSetting("threads", -1, "-1"),
    "log every 0": BadSetting("log_every", 0, "0"),
}


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_every_bad_setting_through_the_library(kind):
    bad = SETTINGS[kind]
    with pytest.raises(ConfigError, match=bad.field):
        TrainConfig.from_dict({bad.field: bad.value}).validate()
    tried("config.TrainConfig.validate", kind)


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_every_bad_setting_through_cli_train_exits_2_naming_the_field(kind, tmp_path, capsys):
    bad = SETTINGS[kind]
    runs = tmp_path / "runs"
    args = ["train", "--data", str(_good(tmp_path / "faces")), f"--{bad.field.replace('_', '-')}", bad.cli, "--runs-dir", str(runs)]
    try:
        code = cli.main(args)
    except SystemExit as exc:  # argparse refuses values outside an option's choices itself
        code = exc.code
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE, err
    assert re.search(f"{bad.field}|--{bad.field.replace('_', '-')}", err), err
    assert not runs.exists() or not any(runs.iterdir()), "a refused setting must not leave a run behind"
    tried("CLI train", kind)


def test_a_bad_setting_in_a_real_process_exits_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "fvr_core", "train", "--data", str(tmp_path), "--lr", "-1",
                             "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert result.returncode == cli.EXIT_USAGE and "lr=-1.0" in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("text", ["[1, 2]", '"epochs"', "{epochs: 3", ""])
def test_a_config_file_that_is_not_settings_exits_2(text, tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(text)  # a JSON list or string was a TypeError traceback
    try:
        code = cli.main(["train", "--data", str(tmp_path), "--config", str(config), "--runs-dir", str(tmp_path / "runs")])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and str(config) in err and "Traceback" not in err, err


@pytest.mark.parametrize("demo", [False, True], ids=["local", "demo mode"])
def test_the_train_page_widgets_cannot_produce_an_invalid_config(demo, monkeypatch):
    """Every widget at its lowest and highest value, with every model offered, validates."""
    from fvr_core.config import check_limits
    from fvr_core.models.registry import MODELS
    from fvr_core.settings import app_limits

    if demo:
        monkeypatch.setenv("FVR_DEMO_MODE", "1")
    at = _page(_app(), "train")
    _no_traceback(at)
    extremes: dict[str, list] = {}  # field -> [lowest, highest] a widget offers
    current: dict[str, object] = {}  # field -> the widget's value now (a preset's, within this app's limits)
    for w in at.slider:
        extremes[w.key.removeprefix("cfg_")] = [type(w.value)(w.min), type(w.value)(w.max)]
    for w in at.select_slider:
        options = [type(w.value)(o) for o in w.options]  # AppTest gives the formatted labels
        extremes[w.key.removeprefix("cfg_")] = [min(options), max(options)]
    for w in at.number_input:
        extremes[w.key.removeprefix("cfg_")] = [w.min, w.max]
    for w in [*at.slider, *at.select_slider, *at.number_input]:
        current[w.key.removeprefix("cfg_")] = w.value
    models = [option.split(" ")[0] for option in at.selectbox(key="cfg_model").options]  # "cnn (10.1 M parameters)"
    assert models and all(m in MODELS for m in models), models
    for key in ("epochs", "lr", "batch_size", "image_size", "seed", "warmup_epochs", "patience", "weight_decay",
                "grad_clip", "label_smoothing"):
        assert key in extremes, f"no widget for {key}"
    limits = app_limits()
    checked = 0
    for model in models:
        for field, values in extremes.items():
            for value in values:
                config = TrainConfig(data="x", **{**current, "model": model, field: value})
                config.validate()  # the widget's bound is a valid setting
                check_limits(config, limits)  # and one this app allows
                checked += 1
        # all the lower bounds at once, then all the upper ones
        for end in (0, 1):
            check_limits(TrainConfig(data="x", model=model, **{f: v[end] for f, v in extremes.items()}).validate(), limits)
    assert checked
    tried("Train page widgets", *(f"{f} bounds" for f in extremes))


# ---------------------------------------------------------------------------------------------
# the report


def test_summary_of_bad_inputs_tried(request):
    """The line printed is what this session checked: the entry points whose tests ran and passed,
    each with the kinds it took; a failure above (a crash, an input neither refused nor used) fails
    the summary too, so the line never claims "no crash" over a failure."""
    kinds = {"files": len(IMAGES), "data sets": len(LAYOUTS), "zips": len(ZIPS), "checkpoints": len(CHECKPOINT_KINDS),
             "settings": len(SETTINGS)}
    assert all(kinds.values()), kinds
    assert USABLE and REFUSED and any(IMAGES[k].bomb for k in REFUSED)
    mine = [item for item in request.session.items if item.module is request.node.module and item is not request.node]
    failed = [item.nodeid for item in mine if getattr(item, "fvr_failed", False)]
    assert not failed, f"bad inputs that crashed or were mishandled: {failed}"
    if not mine:
        pytest.skip("nothing to summarise: run the summary with the bad-input tests")
    assert TRIED and set(TRIED) <= set(ENTRY_POINTS), TRIED
    pairs = sum(len(v) for v in TRIED.values())
    print(
        f"\nbad inputs: {kinds['files']} kinds of file ({len(USABLE)} usable, {len(REFUSED)} refused), "
        f"{kinds['data sets']} kinds of data set, {kinds['zips']} zips, {kinds['checkpoints']} checkpoints, "
        f"{kinds['settings']} settings, through {len(TRIED)} of {len(ENTRY_POINTS)} entry points: "
        f"{pairs} (entry point, kind) pairs, each refused with a message or used cleanly, no crash"
    )
    print(f"this session checked {pairs} (entry point, kind) pairs:")
    for entry in ENTRY_POINTS:
        print(f"  {entry:<30} {len(TRIED.get(entry, ())):>3} kinds")
