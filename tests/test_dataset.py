"""The data layer: finding and scanning data sets (Kaggle csv and plain class folders), decoding
once into a cache, skipping unusable files with reasons, splitting, and batch augmentation."""

from __future__ import annotations

import csv
import io
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_class_folders, write_image
from fvr_core.data import dataset as dataset_module
from fvr_core.data.augment import AUGMENTATIONS, BatchAugmenter, normalize
from fvr_core.config import TrainConfig
from fvr_core.data.dataset import (
    DataError,
    DataReport,
    SkippedFile,
    find_dataset_root,
    load_dataset,
    require_trainable,
    scan_dataset,
    split_ids,
    stratified_split,
)
from fvr_core.settings import CLASSES, FAKE, REAL


def tiny_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 90, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def write_csv(path, rows) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["images_id", "label"])
        writer.writerows(rows)


def reasons_by_id(report: DataReport) -> dict[str, str]:
    return {s.id: s.reason for s in report.skipped}


def skipped_for(report: DataReport, text: str) -> list[SkippedFile]:
    """The skipped entries whose id mentions `text` (csv rows are named 'data.csv line N (id)')."""
    return [s for s in report.skipped if text in s.id]


# ---------------------------------------------------------------------------------------------
# Kaggle layout


def test_kaggle_layout_exactly_as_published(kaggle_csv, tmp_path):
    with open(kaggle_csv, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    data = tiny_jpeg()
    expected = {}
    for row in rows:
        image_id, label = row["images_id"], row["label"]
        assert "/" not in image_id and "." not in image_id  # the published ids: no folder, no extension
        (tmp_path / label).mkdir(exist_ok=True)
        (tmp_path / label / f"{image_id}.jpg").write_bytes(data)
        expected[f"{label}/{image_id}.jpg"] = CLASSES.index(label)
    shutil.copy(kaggle_csv, tmp_path / "data.csv")

    root, records, report = scan_dataset(tmp_path)
    assert root == tmp_path and report.layout == "kaggle-csv"
    assert report.skipped == []
    assert len(records) == len(rows) == 1289
    assert sum(r.label == FAKE for r in records) == 700
    assert sum(r.label == REAL for r in records) == 589
    assert {r.id: r.label for r in records} == expected


@pytest.fixture
def kaggle_with_problems(tmp_path):
    """fake_1..4, real_1..4 on disk; the csv misses real_4.jpg, names a missing fake_9, has a row
    with label 'unknown' and a duplicate row of real_2."""
    data = tiny_jpeg()
    for label in CLASSES:
        (tmp_path / label).mkdir()
        for i in range(1, 5):
            (tmp_path / label / f"{label}_{i}.jpg").write_bytes(data)
    rows = [(f"fake_{i}", "fake") for i in range(1, 5)] + [(f"real_{i}", "real") for i in range(1, 4)]
    rows += [("fake_9", "fake"), ("fake_4", "unknown"), ("real_2", "real")]
    write_csv(tmp_path / "data.csv", rows)
    return tmp_path


def test_csv_row_without_file_is_skipped_with_reason(kaggle_with_problems):
    _, records, report = scan_dataset(kaggle_with_problems)
    (entry,) = skipped_for(report, "fake_9")
    assert "no file" in entry.reason
    assert not any("fake_9" in r.id for r in records)


def test_file_without_csv_row_is_skipped_and_not_trained_on(kaggle_with_problems):
    _, records, report = scan_dataset(kaggle_with_problems)
    assert "no row" in reasons_by_id(report)["real/real_4.jpg"]
    assert "real/real_4.jpg" not in {r.id for r in records}
    loaded = load_dataset(kaggle_with_problems, 8)
    assert "real/real_4.jpg" not in loaded.ids
    assert sorted(loaded.ids) == sorted([f"fake/fake_{i}.jpg" for i in range(1, 5)]
                                        + [f"real/real_{i}.jpg" for i in range(1, 4)])
    assert loaded.report.counts == {"fake": 4, "real": 3}


def test_csv_label_other_than_fake_or_real_is_skipped_with_reason(kaggle_with_problems):
    _, records, report = scan_dataset(kaggle_with_problems)
    (entry,) = [s for s in report.skipped if "unknown" in s.reason]
    assert "fake_4" in entry.id and "neither fake nor real" in entry.reason
    # the valid row of fake_4 still counts, with its csv label
    assert [r.label for r in records if r.id == "fake/fake_4.jpg"] == [FAKE]


def test_duplicate_csv_id_is_skipped(kaggle_with_problems):
    _, records, report = scan_dataset(kaggle_with_problems)
    (entry,) = skipped_for(report, "real_2")
    assert "duplicate" in entry.reason
    assert [r.id for r in records].count("real/real_2.jpg") == 1


def test_csv_ids_naming_folder_and_extension_find_their_files(tmp_path):
    """An id may name its folder ('fake/x') or its extension ('x.jpg'); naming both
    ('fake/x.jpg', the file's own relative path) must work too."""
    make_class_folders(tmp_path, n_fake=3, n_real=3, size=(16, 16))
    ids = [f"fake/f{i}.jpg" for i in range(3)] + [f"real/r{i}.jpg" for i in range(3)]
    write_csv(tmp_path / "data.csv", [(i, i.split("/")[0]) for i in ids])
    _, records, report = scan_dataset(tmp_path)
    assert report.skipped == []
    assert {r.id: r.label for r in records} == {i: CLASSES.index(i.split("/")[0]) for i in ids}


def test_csv_ids_containing_a_dot_find_their_files(tmp_path):
    """Ids are file names without extension: a dot inside a name ('face.001') is not an extension."""
    for i in range(3):
        write_image(tmp_path / "fake" / f"face.00{i}.jpg", (16, 16))
        write_image(tmp_path / "real" / f"photo.00{i}.jpg", (16, 16))
    rows = [(f"face.00{i}", "fake") for i in range(3)] + [(f"photo.00{i}", "real") for i in range(3)]
    write_csv(tmp_path / "data.csv", rows)
    _, records, report = scan_dataset(tmp_path)
    assert report.skipped == []
    assert len(records) == 6


# ---------------------------------------------------------------------------------------------
# plain class folders


@pytest.fixture
def class_folders(tmp_path):
    root = tmp_path / "faces"
    write_image(root / "Fake" / "a.jpg", (16, 16))
    write_image(root / "Fake" / "batch1" / "deep" / "b.png", (16, 16), fmt="PNG")
    write_image(root / "REAL" / "c.jpg", (16, 16))
    write_image(root / "REAL" / "2023" / "d.jpeg", (16, 16))
    write_image(root / "REAL" / ".e.jpg", (16, 16))  # hidden file
    write_image(root / "REAL" / ".thumbs" / "f.jpg", (16, 16))  # hidden folder
    (root / "Fake" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "REAL" / "notes.txt").write_text("where these came from")
    outside = write_image(tmp_path / "elsewhere" / "g.jpg", (16, 16))
    os.symlink(outside, root / "Fake" / "g.jpg")
    return root


def test_class_folders_any_case_and_nested_subfolders(class_folders):
    root, records, report = scan_dataset(class_folders)
    assert root == class_folders and report.layout == "class-folders"
    assert {r.id: r.label for r in records} == {
        "Fake/a.jpg": FAKE,
        "Fake/batch1/deep/b.png": FAKE,
        "REAL/c.jpg": REAL,
        "REAL/2023/d.jpeg": REAL,
    }


def test_class_folders_hidden_files_are_ignored(class_folders):
    _, records, report = scan_dataset(class_folders)
    mentioned = [r.id for r in records] + [s.id for s in report.skipped]
    assert not any(name in i for i in mentioned for name in (".e.jpg", ".thumbs", ".DS_Store"))


def test_class_folders_text_file_is_reported_as_not_an_image_extension(class_folders):
    _, records, report = scan_dataset(class_folders)
    assert "not an image file extension" in reasons_by_id(report)["REAL/notes.txt"]
    assert "REAL/notes.txt" not in {r.id for r in records}


def test_class_folders_symlink_outside_root_is_reported_and_not_used(class_folders):
    _, records, report = scan_dataset(class_folders)
    assert "outside" in reasons_by_id(report)["Fake/g.jpg"]
    assert "Fake/g.jpg" not in {r.id for r in records}


# ---------------------------------------------------------------------------------------------
# find_dataset_root


def test_find_dataset_root_at_the_path_and_one_or_two_folders_below(tmp_path):
    make_class_folders(tmp_path / "here", 1, 1, size=(8, 8))
    make_class_folders(tmp_path / "download" / "wrapped", 1, 1, size=(8, 8))
    make_class_folders(tmp_path / "archive" / "extract" / "set", 1, 1, size=(8, 8))
    assert find_dataset_root(tmp_path / "here") == tmp_path / "here"
    assert find_dataset_root(tmp_path / "download") == tmp_path / "download" / "wrapped"
    assert find_dataset_root(tmp_path / "archive") == tmp_path / "archive" / "extract" / "set"


def test_find_dataset_root_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as err:
        find_dataset_root(missing)
    assert str(missing) in str(err.value)


def test_find_dataset_root_file(tmp_path):
    file = write_image(tmp_path / "photo.jpg", (8, 8))
    with pytest.raises(DataError, match="file") as err:
        find_dataset_root(file)
    assert str(file) in str(err.value)


def test_find_dataset_root_folder_without_class_folders(tmp_path):
    write_image(tmp_path / "holiday" / "a.jpg", (8, 8))
    write_image(tmp_path / "fake" / "b.jpg", (8, 8))  # one class folder is not a data set
    with pytest.raises(DataError, match="no data set found") as err:
        find_dataset_root(tmp_path)
    assert str(tmp_path) in str(err.value)


# ---------------------------------------------------------------------------------------------
# load_dataset


def test_load_dataset_skips_broken_files_with_reasons_and_loads_the_rest(tmp_path):
    make_class_folders(tmp_path, n_fake=4, n_real=4, size=(24, 24))
    (tmp_path / "fake" / "empty.jpg").write_bytes(b"")
    (tmp_path / "real" / "noise.jpg").write_bytes(np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    full = (tmp_path / "fake" / "f0.jpg").read_bytes()
    (tmp_path / "fake" / "half.jpg").write_bytes(full[: len(full) // 2])
    data = load_dataset(tmp_path, 16)
    reasons = reasons_by_id(data.report)
    assert "empty" in reasons["fake/empty.jpg"]
    assert "not an image" in reasons["real/noise.jpg"]
    assert "truncated" in reasons["fake/half.jpg"].lower()
    assert sorted(data.ids) == sorted([f"fake/f{i}.jpg" for i in range(4)] + [f"real/r{i}.jpg" for i in range(4)])
    assert data.images.shape == (8, 3, 16, 16)
    # after the broken files were left out, every image still sits beside its own id and label
    for image, image_id, label in zip(data.images, data.ids, data.labels):
        red, blue = image[0].mean(), image[2].mean()
        assert (label == FAKE) == image_id.startswith("fake/") == (red > blue), (image_id, red, blue)


def test_load_dataset_converts_and_resizes_every_mode_and_size(tmp_path):
    write_image(tmp_path / "fake" / "rgb_wide.jpg", (50, 30))
    write_image(tmp_path / "fake" / "grey.png", (30, 30), mode="L")
    write_image(tmp_path / "fake" / "alpha.png", (20, 40), mode="RGBA")
    write_image(tmp_path / "real" / "cmyk.jpg", (40, 40), mode="CMYK")
    write_image(tmp_path / "real" / "tiny.bmp", (10, 12))
    Image.fromarray(np.full((30, 30), 32768, np.uint16)).save(tmp_path / "real" / "grey16.png")
    data = load_dataset(tmp_path, 24)
    assert data.report.skipped == []
    assert data.images.shape == (6, 3, 24, 24) and data.images.dtype == np.uint8
    assert data.image_size == 24
    by_id = dict(zip(data.ids, data.images))
    assert abs(int(by_id["real/grey16.png"].mean()) - 128) <= 1  # 16-bit mid-grey, scaled not clipped
    grey = by_id["fake/grey.png"].astype(int)
    assert (grey[0] == grey[1]).all() and (grey[1] == grey[2]).all()


def test_load_dataset_labels_follow_folders_and_counts_are_reported(tmp_path):
    make_class_folders(tmp_path, n_fake=5, n_real=3, size=(16, 16))
    data = load_dataset(tmp_path, 16)
    assert data.images.shape == (8, 3, 16, 16) and data.images.dtype == np.uint8
    assert data.labels.tolist() == [FAKE if i.startswith("fake/") else REAL for i in data.ids]
    assert data.report.counts == {"fake": 5, "real": 3} == data.class_counts()
    assert len(data) == 8


def test_load_dataset_decodes_once(tmp_path, monkeypatch):
    make_class_folders(tmp_path / "data", n_fake=4, n_real=4, size=(20, 20))
    cache = tmp_path / "cache"
    calls = []
    real_prepare = dataset_module.prepare_image

    def counting(source, size):
        calls.append(source)
        return real_prepare(source, size)

    monkeypatch.setattr(dataset_module, "prepare_image", counting)
    first = load_dataset(tmp_path / "data", 16, cache_dir=cache)
    assert len(calls) == 8

    def must_not_decode(source, size):
        raise AssertionError(f"decoded {source} again")

    monkeypatch.setattr(dataset_module, "prepare_image", must_not_decode)
    second = load_dataset(tmp_path / "data", 16, cache_dir=cache)
    assert second.report.skipped == []
    assert second.ids == first.ids and np.array_equal(second.labels, first.labels)
    assert np.array_equal(np.asarray(second.images), np.asarray(first.images))
    assert second.cache_key == first.cache_key


def test_load_dataset_new_cache_when_a_file_or_the_size_changes(tmp_path, monkeypatch):
    make_class_folders(tmp_path / "data", n_fake=3, n_real=3, size=(20, 20))
    cache = tmp_path / "cache"
    first = load_dataset(tmp_path / "data", 16, cache_dir=cache)
    calls = []
    real_prepare = dataset_module.prepare_image

    def counting(source, size):
        calls.append(source)
        return real_prepare(source, size)

    monkeypatch.setattr(dataset_module, "prepare_image", counting)
    # same name, new contents: the cache must not serve the old pixels
    write_image(tmp_path / "data" / "fake" / "f0.jpg", (20, 20), color=(10, 250, 10))
    changed = load_dataset(tmp_path / "data", 16, cache_dir=cache)
    assert calls, "a changed file was not decoded again"
    assert changed.cache_key != first.cache_key
    i = changed.ids.index("fake/f0.jpg")
    assert changed.images[i][1].mean() > 200 > first.images[i][1].mean()

    calls.clear()
    bigger = load_dataset(tmp_path / "data", 24, cache_dir=cache)
    assert calls, "a new image size was not decoded again"
    assert bigger.images.shape == (6, 3, 24, 24)
    assert bigger.cache_key not in (first.cache_key, changed.cache_key)


# ---------------------------------------------------------------------------------------------
# require_trainable


def test_require_trainable_refuses_one_class_only(tmp_path):
    make_class_folders(tmp_path, n_fake=6, n_real=0, size=(16, 16))
    (tmp_path / "real").mkdir(exist_ok=True)
    data = load_dataset(tmp_path, 16)
    assert data.report.counts == {"fake": 6, "real": 0}
    with pytest.raises(DataError, match="real has 0") as err:
        require_trainable(data)
    assert str(tmp_path) in str(err.value)


def test_require_trainable_refuses_too_few_images(tmp_path):
    make_class_folders(tmp_path, n_fake=2, n_real=5, size=(16, 16))
    (tmp_path / "real" / "r0.jpg").write_bytes(b"")  # skipped: leaves 4 usable reals
    data = load_dataset(tmp_path, 16)
    with pytest.raises(DataError, match="fake has 2"):
        require_trainable(data)


def test_require_trainable_accepts_three_per_class(tmp_path):
    make_class_folders(tmp_path, n_fake=3, n_real=3, size=(16, 16))
    require_trainable(load_dataset(tmp_path, 16))  # no exception


# ---------------------------------------------------------------------------------------------
# stratified_split

LABELS = np.array([FAKE] * 200 + [REAL] * 600)
rng_labels = np.random.default_rng(7).permutation(LABELS)


def test_stratified_split_is_deterministic_for_a_seed_and_differs_for_another():
    a, b = stratified_split(rng_labels, seed=1), stratified_split(rng_labels, seed=1)
    other = stratified_split(rng_labels, seed=2)
    for name in ("train", "val", "test"):
        assert np.array_equal(a[name], b[name])
    assert any(not np.array_equal(a[name], other[name]) for name in ("train", "val", "test"))


def test_stratified_split_is_disjoint_and_covers_every_index():
    parts = stratified_split(rng_labels, seed=3)
    joined = np.concatenate([parts["train"], parts["val"], parts["test"]])
    assert len(joined) == len(rng_labels)
    assert np.array_equal(np.sort(joined), np.arange(len(rng_labels)))


def test_stratified_split_keeps_class_proportions():
    parts = stratified_split(rng_labels, (0.6, 0.2, 0.2), seed=4)
    for name, fraction in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        labels = rng_labels[parts[name]]
        assert abs((labels == FAKE).sum() - 200 * fraction) <= 1, name
        assert abs((labels == REAL).sum() - 600 * fraction) <= 1, name


def test_stratified_split_gives_every_split_both_classes_for_small_classes():
    for n in (3, 4, 5):
        labels = np.array([FAKE] * n + [REAL] * n)
        for seed in range(5):
            parts = stratified_split(labels, seed=seed)
            for name, idx in parts.items():
                assert set(labels[idx].tolist()) == {FAKE, REAL}, (n, seed, name)


# ---------------------------------------------------------------------------------------------
# the shared real data set


def test_shared_faces_load(shared_faces):
    data = load_dataset(shared_faces, 32)
    assert data.report.skipped == []
    assert data.images.shape == (800, 3, 32, 32) and data.images.dtype == np.uint8
    assert data.report.counts == {"fake": 200, "real": 600}
    # the ids are relative paths that name their class folder
    assert all(i.startswith(("fake/", "real/")) for i in data.ids)
    assert data.labels.tolist() == [FAKE if i.startswith("fake/") else REAL for i in data.ids]


def test_shared_faces_split_at_defaults(shared_faces):
    data = load_dataset(shared_faces, 32)
    defaults = TrainConfig()
    split = split_ids(data, defaults.split, defaults.seed)
    assert [len(split[n]) for n in ("train", "val", "test")] == [480, 160, 160]
    fakes = {n: sum(i.startswith("fake/") for i in ids) for n, ids in split.items()}
    assert fakes == {"train": 120, "val": 40, "test": 40}
    assert len(set().union(*split.values())) == 800
    assert split == split_ids(data, defaults.split, defaults.seed)


# ---------------------------------------------------------------------------------------------
# augmentation


@pytest.fixture
def batch():
    return torch.from_numpy(np.random.default_rng(11).integers(0, 256, (64, 3, 16, 16), dtype=np.uint8))


def test_augment_none_is_plain_normalisation(batch):
    out = BatchAugmenter("none", seed=0)(batch)
    assert out.dtype == torch.float32
    assert torch.allclose(out, normalize(batch))


def test_augment_light_flips_some_images_not_all(batch):
    out = BatchAugmenter("light", seed=0)(batch)
    plain, flipped = normalize(batch), normalize(batch.flip(-1))
    is_plain = torch.isclose(out, plain).flatten(1).all(1)
    is_flipped = torch.isclose(out, flipped).flatten(1).all(1)
    assert (is_plain | is_flipped).all(), "light must only flip, nothing else"
    assert 0 < int(is_flipped.sum()) < 64


def test_augment_is_deterministic_for_a_seed(batch):
    a = BatchAugmenter("light", seed=5)
    b = BatchAugmenter("light", seed=5)
    for _ in range(3):
        assert torch.equal(a(batch), b(batch))


def test_augment_standard_keeps_shape(batch):
    out = BatchAugmenter("standard", seed=0)(batch)
    assert out.shape == batch.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_augment_robust_shape_and_dtype(batch):
    out = BatchAugmenter("robust", seed=0)(batch)
    assert out.shape == batch.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_augment_unknown_level_raises():
    with pytest.raises(ValueError, match="unknown augmentation"):
        BatchAugmenter("extreme")
    assert "extreme" not in AUGMENTATIONS
