"""Decoding any image a user may hand us: modes, EXIF rotation, broken files, bombs, resizing."""

from __future__ import annotations

import io
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import write_image
from fvr_core.data.images import MAX_IMAGE_PIXELS, ImageError, load_rgb, prepare_image, resize_center_crop


def assert_rgb8(img: Image.Image, size) -> np.ndarray:
    assert img.mode == "RGB"
    assert img.size == tuple(size)
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.shape == (size[1], size[0], 3)
    return arr.astype(int)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height grey pixels but whose data is a few bytes:
    cheap on disk, and it cannot be decoded, so refusing it 'too large' proves nothing was decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------
# modes


def test_greyscale_becomes_rgb_with_equal_channels(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (24, 16), 77).save(path)
    arr = assert_rgb8(load_rgb(path), (24, 16))
    assert (arr == 77).all()


def test_rgba_transparent_pixels_become_white_and_opaque_keep_colour(tmp_path):
    img = Image.new("RGBA", (20, 10), (255, 0, 0, 0))  # hidden colour red, fully transparent
    img.paste((0, 0, 255, 255), (10, 0, 20, 10))  # right half opaque blue
    path = tmp_path / "alpha.png"
    img.save(path)
    arr = assert_rgb8(load_rgb(path), (20, 10))
    assert (arr[:, :10] == 255).all(), "transparent pixels must show white, not their hidden colour"
    assert (arr[:, 10:] == (0, 0, 255)).all()


def test_palette_image_becomes_rgb_with_its_palette_colours(tmp_path):
    img = Image.new("P", (20, 10), 0)
    img.putpalette([200, 30, 30, 20, 180, 40] + [0] * (256 * 3 - 6))
    img.paste(1, (10, 0, 20, 10))
    path = tmp_path / "palette.png"
    img.save(path)
    assert Image.open(path).mode == "P"
    arr = assert_rgb8(load_rgb(path), (20, 10))
    assert (arr[:, :10] == (200, 30, 30)).all()
    assert (arr[:, 10:] == (20, 180, 40)).all()


def test_cmyk_jpeg_becomes_rgb_close_to_the_original_colour(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (24, 24), (200, 40, 30)).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    arr = assert_rgb8(load_rgb(path), (24, 24))
    assert np.abs(arr - (200, 40, 30)).max() <= 12


def test_16bit_grey_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    path = tmp_path / "grey16.png"
    values = np.array([[0, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    arr = assert_rgb8(load_rgb(path), (3, 4))
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    black, mid, white = arr[0, :, 0]
    assert black == 0
    assert abs(mid - 128) <= 1, f"16-bit mid-grey became {mid}, expected about 128"
    assert white == 255


# ---------------------------------------------------------------------------------------------
# orientation, animation


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 30), (255, 0, 0))
    img.paste((0, 0, 255), (30, 0, 60, 30))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    arr = assert_rgb8(load_rgb(path), (30, 60))
    # a clockwise quarter turn puts the left (red) half on top and the right (blue) half below
    top, bottom = arr[4:26].reshape(-1, 3).mean(0), arr[34:56].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50, top
    assert bottom[2] > 200 and bottom[0] < 50, bottom


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    arr = assert_rgb8(load_rgb(path), (16, 16))
    assert (arr == (255, 0, 0)).all()


# ---------------------------------------------------------------------------------------------
# broken files


def test_zero_byte_file_is_refused_as_empty(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_rgb(path)


def test_truncated_jpeg_is_refused_as_truncated(tmp_path):
    full = (write_image(tmp_path / "full.jpg", (64, 64))).read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageError, match="(?i)truncated"):
        load_rgb(path)


def test_random_bytes_named_jpg_are_not_an_image(tmp_path):
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError, match="not an image"):
        load_rgb(path)


def test_text_file_renamed_png_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are my notes, not a picture\n" * 20)
    with pytest.raises(ImageError, match="not an image"):
        load_rgb(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    side = int(MAX_IMAGE_PIXELS**0.5) + 100  # just over the limit
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(side, side))
    assert path.stat().st_size < 1000
    with pytest.raises(ImageError, match="too large"):
        load_rgb(path)
    # and far over the limit, from bytes too
    with pytest.raises(ImageError, match="too large"):
        load_rgb(png_header_only(20000, 20000))


def test_limit_follows_max_image_pixels(tmp_path, monkeypatch):
    import fvr_core.data.images as images

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = write_image(tmp_path / "big.png", (40, 40))  # 1600 pixels, a valid image
    with pytest.raises(ImageError, match="too large"):
        load_rgb(path)
    assert load_rgb(write_image(tmp_path / "small.png", (30, 30))).size == (30, 30)


class _GatedStream(io.BytesIO):
    """A file whose first read waits for `gate`: holds a load_rgb call in the middle of opening."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.entered, self.gate = threading.Event(), threading.Event()

    def read(self, *args):
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(10)
        return super().read(*args)


def test_bomb_is_refused_while_another_image_loads_in_another_thread(tmp_path):
    """load_dataset decodes with several threads: the bomb check must not depend on what another
    thread's load_rgb does at the same time."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    good, bomb = _GatedStream(buf.getvalue()), _GatedStream(png_header_only(9000, 9000))
    results: dict[str, object] = {}

    def run(name, stream):
        try:
            results[name] = load_rgb(stream)
        except Exception as exc:  # noqa: BLE001 - recorded and checked below
            results[name] = exc

    filters_before = list(warnings.filters)
    a = threading.Thread(target=run, args=("good", good))
    b = threading.Thread(target=run, args=("bomb", bomb))
    a.start()
    assert good.entered.wait(10)
    b.start()
    assert bomb.entered.wait(10)
    good.gate.set()  # the good image finishes first ...
    a.join(10)
    bomb.gate.set()  # ... then the bomb's header is read
    b.join(10)
    assert isinstance(results["good"], Image.Image)
    assert isinstance(results["bomb"], ImageError) and "too large" in str(results["bomb"]), results["bomb"]
    assert list(warnings.filters) == filters_before, "load_rgb left the process's warning filters changed"


# ---------------------------------------------------------------------------------------------
# resizing


def test_resize_center_crop_keeps_aspect_ratio_and_cuts_the_centre():
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    img.paste((0, 255, 0), (50, 0, 150, 100))  # green middle square, red side strips
    out = resize_center_crop(img, 50)
    arr = assert_rgb8(out, (50, 50))
    # stretching would squeeze the red strips into the picture; only the green square may remain
    assert (arr[..., 0] < 40).all() and (arr[..., 1] > 200).all(), (arr[..., 0].max(), arr[..., 1].min())
    portrait = img.transpose(Image.Transpose.ROTATE_90)  # 100x200, green square in the middle
    arr = assert_rgb8(resize_center_crop(portrait, 50), (50, 50))
    assert (arr[..., 0] < 40).all() and (arr[..., 1] > 200).all()


def test_resize_center_crop_returns_an_image_of_the_right_size_unchanged():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))
    out = resize_center_crop(img, 300)
    assert out.size == (300, 300)
    assert np.array_equal(np.asarray(out), np.asarray(img))


def test_prepare_image_from_path_and_from_bytes(tmp_path):
    path = write_image(tmp_path / "face.jpg", (80, 60), (30, 140, 220))
    from_path = prepare_image(path, 32)
    from_bytes = prepare_image(path.read_bytes(), 32)
    for arr in (from_path, from_bytes):
        assert arr.shape == (3, 32, 32) and arr.dtype == np.uint8
    assert np.array_equal(from_path, from_bytes)
    # channel first: the channel means are the image's colour
    assert np.abs(from_path.reshape(3, -1).mean(1) - (30, 140, 220)).max() < 12
