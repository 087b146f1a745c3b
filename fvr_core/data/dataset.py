"""Finding, validating, decoding-once and splitting a data set of fake and real faces.

Two layouts are read:

* the Kaggle "Fake-Vs-Real-Faces (Hard)" layout: ``data.csv`` (``images_id,label``; ids without
  folder or extension) beside class folders ``fake/`` and ``real/``;
* any plain class-folder layout: ``fake/`` and ``real/`` folders (any depth below them).

Class indices are fixed: fake=0, real=1 (what the original's ImageFolder gave).
Every image is decoded once into a uint8 array cache on disk keyed by the files' contents and the
image size; every file that cannot be used is listed in the report with the reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from fvr_core import settings
from fvr_core.data.images import ImageError, prepare_image
from fvr_core.settings import CLASSES, FAKE, IMAGE_EXTENSIONS

CACHE_FORMAT = 2  # bump when decoding or resizing changes, so old caches are not reused (2: box resize)
MIN_IMAGES_PER_CLASS = 3  # one per split at least

ProgressFn = Callable[[int, int], None]


class DataError(ValueError):
    """The data set cannot be used as it is; the message names the path and what to do."""


@dataclass(frozen=True)
class ImageRecord:
    id: str  # path relative to the data root, with forward slashes
    label: int


@dataclass
class SkippedFile:
    id: str
    reason: str


@dataclass
class DataReport:
    root: str
    layout: str
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[SkippedFile] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DataReport":
        skipped = [SkippedFile(**s) for s in data.get("skipped", [])]
        return cls(root=data["root"], layout=data["layout"], counts=dict(data.get("counts", {})), skipped=skipped)

    def summary(self) -> str:
        counts = ", ".join(f"{n} {name}" for name, n in self.counts.items())
        return f"{self.root} ({self.layout}): {counts}; {len(self.skipped)} skipped"


# ---------------------------------------------------------------------------------------------
# scanning


def _class_dirs(root: Path) -> dict[int, list[Path]]:
    found: dict[int, list[Path]] = {}
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() in CLASSES:
            # real/ and Real/ side by side (merged sets, case-sensitive disks): read both, lose neither
            found.setdefault(CLASSES.index(child.name.lower()), []).append(child)
    return found


def find_dataset_root(path: str | Path) -> Path:
    """The folder holding ``data.csv`` or the class folders: `path` itself or a folder a few levels
    below it (a downloaded archive often wraps the data set in one or two extra folders)."""
    try:
        path = Path(path).expanduser()
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, RuntimeError) as exc:  # a name too long, ~nosuchuser
        raise DataError(f"{str(path)[:200]!r} cannot be opened ({exc.__class__.__name__}: {str(exc)[:200]}): "
                        "pass the folder that holds fake/ and real/") from None
    if not exists:
        raise DataError(f"data folder {path} does not exist: pass the folder that holds fake/ and real/")
    if not is_dir:
        raise DataError(f"{path} is a file, not a folder: pass the folder that holds fake/ and real/")
    frontier = [path]
    try:
        for _depth in range(3):
            for folder in frontier:
                if (folder / "data.csv").is_file() or len(_class_dirs(folder)) == 2:
                    return folder
            frontier = [c for f in frontier for c in sorted(f.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    except OSError as exc:  # a folder that cannot be listed (permissions): say which, rather than a traceback
        raise DataError(f"cannot read {exc.filename or path} while looking for the data set in {path} ({exc.strerror or exc}): "
                        "pass the folder that holds fake/ and real/") from None
    raise DataError(
        f"no data set found in {path}: expected class folders fake/ and real/ "
        "(optionally with a data.csv of images_id,label), as in the Kaggle 'Fake-Vs-Real-Faces (Hard)' set"
    )


def is_inside(path: Path, root: Path) -> bool:
    """Whether `path`, links resolved, lies within `root`."""
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _walk_images(folder: Path, root: Path, skipped: list[SkippedFile]) -> Iterable[Path]:
    if not is_inside(folder, root):  # a class folder that is a link to elsewhere: its files are not the data set's
        skipped.append(SkippedFile(folder.relative_to(root).as_posix(), "symbolic link pointing outside the data folder"))
        return
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        # os.walk does not follow linked folders (they may loop): list them instead of leaving them out silently
        for link in [Path(dirpath) / d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            dirnames.remove(link.name)
            where = "to a folder (not followed)" if is_inside(link, root) else "pointing outside the data folder"
            skipped.append(SkippedFile(link.relative_to(root).as_posix(), f"symbolic link {where}"))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() and not is_inside(path, root):
                skipped.append(SkippedFile(rel, "symbolic link pointing outside the data folder"))
            elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(SkippedFile(rel, f"not an image file extension ({path.suffix or 'none'})"))
            else:
                yield path


def _label_index(label: str) -> int | None:
    label = label.strip().lower()
    return CLASSES.index(label) if label in CLASSES else None


def _id_keys(path: Path, root: Path) -> set[str]:
    """Every form a csv id may take for this file: with or without its class folder and extension."""
    rel = path.relative_to(root)
    in_class = Path(*rel.parts[1:])
    return {p.as_posix() for p in (rel, rel.with_suffix(""), in_class, in_class.with_suffix(""))}


def _scan_csv(root: Path, csv_path: Path, skipped: list[SkippedFile]) -> list[ImageRecord]:
    by_key: dict[str, list[Path]] = {}
    files: list[Path] = []
    for folder in (f for folders in _class_dirs(root).values() for f in folders):
        for path in _walk_images(folder, root, skipped):
            files.append(path)
            for key in _id_keys(path, root):
                by_key.setdefault(key, []).append(path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {csv_path}: {exc}") from None
    if rows and not {"images_id", "label"} <= set(rows[0]):
        raise DataError(f"{csv_path} must have the columns images_id,label (it has {','.join(rows[0])})")
    records: list[ImageRecord] = []
    used: set[Path] = set()
    for line, row in enumerate(rows, start=2):
        image_id, label_text = (row.get("images_id") or "").strip(), (row.get("label") or "").strip()
        label = _label_index(label_text)
        where = f"data.csv line {line} ({image_id or 'no id'})"
        if label is None:
            skipped.append(SkippedFile(where, f"label {label_text!r} is neither fake nor real"))
            continue
        candidates = by_key.get(image_id, [])
        in_class = [p for p in candidates if p.relative_to(root).parts[0].lower() == CLASSES[label]]
        if not candidates:
            skipped.append(SkippedFile(where, f"csv row names no file (looked for {CLASSES[label]}/{image_id}.*)"))
        elif not in_class:
            other = candidates[0].relative_to(root).as_posix()
            skipped.append(SkippedFile(where, f"csv says {CLASSES[label]} but the file is {other}"))
        elif in_class[0] in used:
            skipped.append(SkippedFile(where, "duplicate id in data.csv (first row kept)"))
        else:
            used.add(in_class[0])
            records.append(ImageRecord(in_class[0].relative_to(root).as_posix(), label))
    for path in files:
        if path not in used:
            skipped.append(SkippedFile(path.relative_to(root).as_posix(), "file has no row in data.csv"))
    return records


def _scan_folders(root: Path, skipped: list[SkippedFile]) -> list[ImageRecord]:
    records = []
    for label, folders in sorted(_class_dirs(root).items()):
        for folder in folders:
            records += [ImageRecord(p.relative_to(root).as_posix(), label) for p in _walk_images(folder, root, skipped)]
    return records


def scan_dataset(path: str | Path) -> tuple[Path, list[ImageRecord], DataReport]:
    """List the images of a data set and their labels, without decoding them."""
    root = find_dataset_root(path)
    skipped: list[SkippedFile] = []
    csv_path = root / "data.csv"
    if csv_path.is_file():
        layout, records = "kaggle-csv", _scan_csv(root, csv_path, skipped)
    else:
        layout, records = "class-folders", _scan_folders(root, skipped)
    records.sort(key=lambda r: r.id)
    return root, records, DataReport(str(root), layout, skipped=skipped)


# ---------------------------------------------------------------------------------------------
# decode-once cache


@dataclass
class ImageSet:
    """Decoded images of a data set: ``images`` is (N, 3, S, S) uint8 (memory-mapped from the cache)."""

    root: Path
    images: np.ndarray
    labels: np.ndarray
    ids: list[str]
    report: DataReport
    image_size: int
    cache_key: str = ""
    # where each image comes from: sources[i] indexes source_names (one source: all 0) and
    # source_roots (the folder its id is relative to, after the source's name for several sources)
    sources: np.ndarray | None = None
    source_names: list[str] = field(default_factory=list)
    source_roots: list[Path] = field(default_factory=list)
    ids_prefixed: bool = False  # ids start with their source's name (a set put together from sources)

    def __post_init__(self) -> None:
        if self.sources is None:
            self.sources = np.zeros(len(self.ids), dtype=np.int64)
        if not self.source_names:
            self.source_names = [self.root.name]
            self.source_roots = [self.root]

    def __len__(self) -> int:
        return len(self.ids)

    def path_of(self, image_id: str) -> Path:
        """The file behind an id (ids of several sources start with their source's name)."""
        if not self.ids_prefixed:
            return self.source_roots[0] / image_id
        name, _, rest = image_id.partition("/")
        return self.source_roots[self.source_names.index(name)] / rest

    def strata(self) -> np.ndarray:
        """What the split stratifies by: (source, class); with one source that is the class alone,
        so a one-source data set splits exactly as it did before sources existed."""
        return self.sources * len(CLASSES) + self.labels

    def class_counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(CLASSES)}

    def indices_of(self, ids: Sequence[str]) -> np.ndarray:
        """Positions of the given ids; raises DataError naming the first id that is missing."""
        position = {image_id: i for i, image_id in enumerate(self.ids)}
        missing = [i for i in ids if i not in position]
        if missing:
            raise DataError(
                f"{len(missing)} image(s) of the saved split are not in {self.root} (first: {missing[0]}); "
                "point --data at the data set the run was trained on"
            )
        return np.array([position[i] for i in ids], dtype=np.int64)


def _content_key(root: Path, records: list[ImageRecord], image_size: int) -> str:
    digest = hashlib.blake2b(f"fvr-cache:{CACHE_FORMAT}:{image_size}".encode(), digest_size=16)
    for record in records:
        digest.update(f"\n{record.id}\t{record.label}\t".encode())
        try:
            digest.update(hashlib.blake2b((root / record.id).read_bytes(), digest_size=16).digest())
        except OSError as exc:
            digest.update(repr(exc).encode())
    return digest.hexdigest()


def _decode_into(root: Path, records: list[ImageRecord], out: np.ndarray, size: int, progress: ProgressFn | None):
    """Decode every record into `out`; returns the reason per failed index."""
    failures: dict[int, str] = {}

    def work(i: int) -> None:
        try:
            out[i] = prepare_image(root / records[i].id, size)
        except ImageError as exc:
            failures[i] = str(exc)
        except Exception as exc:  # a decoder bug on one file must not lose the whole data set
            failures[i] = f"cannot decode image: {type(exc).__name__}: {exc}"

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for done, _ in enumerate(pool.map(work, range(len(records))), start=1):
            if progress and (done % 32 == 0 or done == len(records)):
                progress(done, len(records))
    return failures


def _write_cache(folder: Path, root: Path, records, size, progress) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        scratch = np.lib.format.open_memmap(tmp / "all.npy", mode="w+", dtype=np.uint8, shape=(len(records), 3, size, size))
        failures = _decode_into(root, records, scratch, size, progress)
        keep = [i for i in range(len(records)) if i not in failures]
        if failures:  # compact the good images; chunked so memory stays bounded
            images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(keep), 3, size, size))
            for start in range(0, len(keep), 256):
                images[start : start + 256] = scratch[keep[start : start + 256]]
            images.flush()
            del images
        scratch.flush()
        del scratch
        if failures:
            (tmp / "all.npy").unlink()
        else:
            os.replace(tmp / "all.npy", tmp / "images.npy")
        index = {
            "ids": [records[i].id for i in keep],
            "labels": [records[i].label for i in keep],
            "failed": [{"id": records[i].id, "reason": failures[i]} for i in sorted(failures)],
            "image_size": size,
            "root": str(root),  # so deleting an upload can delete what was decoded from it (uploads.prune_uploads)
        }
        (tmp / "index.json").write_text(json.dumps(index))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same cache first: theirs is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_dataset(
    path: str | Path,
    image_size: int,
    cache_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> ImageSet:
    """Scan, validate and decode a data set once; later calls with the same files and size load
    the cache in about a second. Unusable files are skipped and listed in ``report.skipped``.

    `path` is one folder with class folders, or several sources joined by ';' (see
    parse_sources): each source is decoded and cached on its own, then they are put together with
    ids prefixed by the source's name."""
    if image_size < 8:
        raise DataError(f"image size {image_size} is too small: use at least 8 pixels")
    sources = parse_sources(str(path))
    if len(sources) == 1 and sources[0].label is None:
        return _load_source(sources[0], image_size, cache_dir, progress)
    parts = [_load_source(source, image_size, cache_dir, progress) for source in sources]
    return _combine(parts, str(path))


def _load_source(source: "Source", image_size: int, cache_dir, progress) -> ImageSet:
    if source.label is None:
        root, records, report = scan_dataset(source.path)
    else:
        root, records, report = scan_one_class(source.path, source.label)
    key = _content_key(root, records, image_size)
    folder = Path(cache_dir or settings.cache_root()) / "images" / key
    if not (folder / "index.json").is_file():
        _write_cache(folder, root, records, image_size, progress)
    index = json.loads((folder / "index.json").read_text())
    images = np.load(folder / "images.npy", mmap_mode="r")
    report.skipped += [SkippedFile(f["id"], f["reason"]) for f in index["failed"]]
    labels = np.asarray(index["labels"], dtype=np.int64)
    report.counts = {name: int((labels == i).sum()) for i, name in enumerate(CLASSES)}
    return ImageSet(root, images, labels, list(index["ids"]), report, image_size, key)


def is_cached(path: str | Path, image_size: int, cache_dir: str | Path | None = None) -> bool:
    """Whether `load_dataset(path, image_size)` would find its decoded images in the cache."""
    try:
        scans = [scan_dataset(s.path) if s.label is None else scan_one_class(s.path, s.label) for s in parse_sources(str(path))]
    except DataError:
        return False
    folder = Path(cache_dir or settings.cache_root()) / "images"
    return bool(scans) and all((folder / _content_key(root, records, image_size) / "index.json").is_file()
                               for root, records, _ in scans)


# ---------------------------------------------------------------------------------------------
# several sources


@dataclass(frozen=True)
class Source:
    """One source of a data set: a folder with class folders (label None), or a folder whose
    images are all of one class (`fake:PATH`, `real:PATH`: a generator's fakes, a photo collection)."""

    path: str
    label: int | None = None

    @property
    def spec(self) -> str:
        return self.path if self.label is None else f"{CLASSES[self.label]}:{self.path}"


def parse_sources(data: str) -> list[Source]:
    """The sources of a TrainConfig `data` value: ';'-separated, each PATH (class folders) or
    CLASS:PATH (one class: fake or real)."""
    sources = []
    for part in (p.strip() for p in str(data).split(";")):
        if not part:
            continue
        prefix, sep, rest = part.partition(":")
        if sep and prefix.strip().lower() in CLASSES:
            if not rest.strip():
                raise DataError(f"data source {part!r} names no folder: write {prefix}:PATH")
            sources.append(Source(rest.strip(), CLASSES.index(prefix.strip().lower())))
        else:
            sources.append(Source(part))
    if not sources:
        raise DataError("no data set given: pass the folder that holds fake/ and real/")
    return sources


def source_folders(data: str) -> list[Path]:
    """Each source's folder, absolute: the one way fvr turns a user's data path into a folder."""
    return [Path(s.path).expanduser().resolve() for s in parse_sources(data)]


def resolve_sources(data: str) -> str:
    """`data` with every source's path made absolute (prefixes kept), as a run's config stores it."""
    return ";".join(Source(str(folder), s.label).spec for folder, s in zip(source_folders(data), parse_sources(data)))


def check_sources(data: str) -> list[Path]:
    """Raise DataError naming the first source that cannot be read; returns each source's folder."""
    roots = []
    for source in parse_sources(data):
        roots.append(find_dataset_root(source.path) if source.label is None else _one_class_folder(source.path))
    return roots


def _one_class_folder(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"one-class source folder {folder} does not exist or is not a folder: pass a folder of images")
    return folder


def scan_one_class(path: str | Path, label: int) -> tuple[Path, list[ImageRecord], DataReport]:
    """The images under a folder (any depth), all labelled `label`."""
    root = _one_class_folder(path)
    skipped: list[SkippedFile] = []
    records = sorted((ImageRecord(p.relative_to(root).as_posix(), label) for p in _walk_images(root, root, skipped)),
                     key=lambda r: r.id)
    return root, records, DataReport(str(root), f"one class ({CLASSES[label]})", skipped=skipped)


def _source_names(roots: Sequence[Path]) -> list[str]:
    """A short, unique name per source: its folder's name (a number added where two share one)."""
    names: list[str] = []
    for root in roots:
        name, n = root.name or "source", 2
        while name in names:
            name, n = f"{root.name}-{n}", n + 1
        names.append(name)
    return names


def _combine(parts: list[ImageSet], description: str) -> ImageSet:
    """One ImageSet of several sources, in the order given; ids become SOURCE/ID."""
    names = _source_names([p.root for p in parts])
    ids = [f"{name}/{image_id}" for name, part in zip(names, parts) for image_id in part.ids]
    images = np.concatenate([np.asarray(p.images) for p in parts]) if parts else np.zeros((0, 3, 1, 1), np.uint8)
    labels = np.concatenate([p.labels for p in parts])
    sources = np.concatenate([np.full(len(p), i, dtype=np.int64) for i, p in enumerate(parts)])
    skipped = [SkippedFile(f"{name}/{s.id}", s.reason) for name, p in zip(names, parts) for s in p.report.skipped]
    report = DataReport(description, "sources: " + ", ".join(f"{n} ({p.report.layout})" for n, p in zip(names, parts)),
                        counts={c: int((labels == i).sum()) for i, c in enumerate(CLASSES)}, skipped=skipped)
    roots = [p.root for p in parts]
    # absolute first: one source given relative to the working folder and one absolute have a common folder too
    common = Path(os.path.commonpath([str(r.absolute()) for r in roots])) if roots else Path(".")
    return ImageSet(common, images, labels, ids, report, parts[0].image_size, "+".join(p.cache_key for p in parts),
                    sources, names, roots, ids_prefixed=True)


def source_class_names(data: ImageSet) -> list[str]:
    """A name per (source, class) group, in strata order: 'stylegan3 fake', 'tpdne-vs-ffhq-300 real'."""
    return [f"{name} {c}" for name in data.source_names for c in CLASSES]


def per_source_recall(data: ImageSet, indices: Sequence[int], prob_fake: Sequence[float], threshold: float = 0.5) -> list[dict]:
    """Per (source, class) among `indices`: how many images, how many the detector got right (fakes
    caught, reals kept) and that share (the recall of that group). Groups with no image are left out."""
    indices = np.asarray(indices, dtype=np.int64)
    called_fake = np.asarray(prob_fake, dtype=np.float64) >= threshold
    rows = []
    for s, name in enumerate(data.source_names):
        for c, cls in enumerate(CLASSES):
            members = (data.sources[indices] == s) & (data.labels[indices] == c)
            n = int(members.sum())
            if not n:
                continue
            right = int((called_fake[members] == (c == FAKE)).sum())
            rows.append({"source": name, "class": cls, "n": n, "correct": right, "recall": right / n,
                         "what": "fakes caught" if cls == "fake" else "reals kept"})
    return rows


def require_trainable(data: ImageSet) -> None:
    """Raise DataError unless every class has enough usable images for a train/val/test split."""
    short = [f"{name} has {n}" for name, n in data.class_counts().items() if n < MIN_IMAGES_PER_CLASS]
    if short:
        raise DataError(
            f"{data.root}: not enough usable images to train ({'; '.join(short)}; "
            f"need at least {MIN_IMAGES_PER_CLASS} per class). {len(data.report.skipped)} file(s) were skipped: "
            "see the data report"
        )


# ---------------------------------------------------------------------------------------------
# split

SPLIT_NAMES = ("train", "val", "test")


def stratified_split(labels: Sequence[int], fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 42) -> dict[str, np.ndarray]:
    """Deterministic stratified split into train/val/test positions. `labels` is each image's
    stratum (its class, or ImageSet.strata(): source and class); every split gets at least one
    image of each stratum that has three or more."""
    labels = np.asarray(labels)
    total = float(sum(fractions))
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLIT_NAMES}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n = len(members)
        n_val = int(round(n * fractions[1] / total))
        n_test = int(round(n * fractions[2] / total))
        if n >= 3:
            n_val, n_test = max(1, n_val), max(1, n_test)
            n_val = min(n_val, n - n_test - 1)
        n_train = n - n_val - n_test
        parts["train"].append(members[:n_train])
        parts["val"].append(members[n_train : n_train + n_val])
        parts["test"].append(members[n_train + n_val :])
    return {name: np.sort(np.concatenate(chunks)) if chunks else np.zeros(0, np.int64) for name, chunks in parts.items()}


def split_ids(data: ImageSet, fractions: Sequence[float], seed: int) -> dict[str, list[str]]:
    """The split of a data set by id, stratified by (source, class): one source splits as it always did."""
    positions = stratified_split(data.strata(), fractions, seed)
    return {name: [data.ids[i] for i in idx] for name, idx in positions.items()}
