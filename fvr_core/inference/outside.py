"""Photos from outside the training data: a labelled folder evaluated (like the original
write-up's 32 outside photos) and an unlabelled folder predicted to CSV.

A labelled folder is either a folder with a csv of `file,label` rows (label fake or real; the
file relative to the folder) or a folder with `fake/` and `real/` subfolders. A photo's verdict
is its largest face's (a photo with no face found is "not judged" unless the whole photo is asked
to be judged, and counts in no score then): evaluation counts photos,
not faces, so a group photo is not counted several times.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fvr_core.data.dataset import is_inside
from fvr_core.metrics import classification_metrics
from fvr_core.settings import CLASSES, IMAGE_EXTENSIONS, NOT_JUDGED
from fvr_core import settings

FILE_COLUMNS = ("file", "filename", "path", "image", "images_id", "id")
LABEL_COLUMNS = ("label", "class", "truth")


class OutsideError(ValueError):
    """A folder or label file cannot be used; the message names it and says what to fix."""


@dataclass(frozen=True)
class OutsidePhoto:
    path: Path
    name: str  # relative to the folder: what tables show
    label: int | None = None  # index into CLASSES; None when unlabelled


def list_photos(folder: str | Path) -> list[OutsidePhoto]:
    """Every image file under `folder` (sorted; links pointing outside it are left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OutsideError(f"{folder} is not a folder: give the folder that holds the photos")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and is_inside(p, folder))
    return [OutsidePhoto(p, p.relative_to(folder).as_posix()) for p in paths]


def _column(header: Sequence[str], choices: Sequence[str], csv_path: Path) -> str:
    lowered = {h.strip().lower(): h for h in header}
    for name in choices:
        if name in lowered:
            return lowered[name]
    raise OutsideError(f"{csv_path} needs a column named one of {', '.join(choices)} (it has {', '.join(header) or 'none'})")


def _read_label_csv(folder: Path, csv_path: Path) -> tuple[list[OutsidePhoto], list[str]]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise OutsideError(f"cannot read {csv_path}: {exc}") from None
    file_col, label_col = _column(header, FILE_COLUMNS, csv_path), _column(header, LABEL_COLUMNS, csv_path)
    by_name = {}
    for photo in list_photos(folder):
        by_name.setdefault(photo.name, photo.path)
        by_name.setdefault(Path(photo.name).name, photo.path)
        by_name.setdefault(Path(photo.name).with_suffix("").as_posix(), photo.path)
    photos, problems = [], []
    for line, row in enumerate(rows, start=2):
        name, label = (row.get(file_col) or "").strip(), (row.get(label_col) or "").strip().lower()
        if label not in CLASSES:
            problems.append(f"{csv_path.name} line {line}: label {label!r} is neither fake nor real")
        elif name not in by_name:
            problems.append(f"{csv_path.name} line {line}: no image {name!r} in {folder}")
        else:
            photos.append(OutsidePhoto(by_name[name], name, CLASSES.index(label)))
    return photos, problems


def unwrap(folder: str | Path) -> Path:
    """The folder itself, or the one folder it only wraps (as an unpacked zip often does)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OutsideError(f"{folder} is not a folder: give the folder that holds the photos")
    for _depth in range(3):
        entries = [e for e in folder.iterdir() if not e.name.startswith(".") and e.name != "__MACOSX"]
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].name.lower() in CLASSES:
            break
        folder = entries[0]
    return folder


def labelled_photos(folder: str | Path, labels_csv: str | Path | None = None) -> tuple[list[OutsidePhoto], list[str]]:
    """The labelled photos of a folder and the problems found (rows skipped and why).

    Labels come from `labels_csv`, else from a labels.csv in the folder, else from fake/ and real/
    subfolders."""
    folder = unwrap(folder)
    csv_path = Path(labels_csv) if labels_csv else folder / "labels.csv"
    if labels_csv or csv_path.is_file():
        photos, problems = _read_label_csv(folder, csv_path)
    else:
        photos, problems = [], []
        for label, name in enumerate(CLASSES):
            # every folder of the class (real/ and Real/ may sit side by side): none is left out silently
            for sub in sorted(d for d in folder.iterdir() if d.is_dir() and d.name.lower() == name):
                photos += [OutsidePhoto(p.path, f"{sub.name}/{p.name}", label) for p in list_photos(sub)]
        if not photos:
            raise OutsideError(f"{folder} has no labels: add a labels.csv (columns file,label) or fake/ and real/ subfolders")
    if not photos:
        raise OutsideError(f"no labelled photo could be used in {folder}: " + "; ".join(problems[:3]))
    return photos, problems


def photo_rows(rows: list[dict]) -> list[dict]:
    """The per-photo rows of a prediction table: each photo's largest face (face_index 0)."""
    return [r for r in rows if r.get("face_index", 0) == 0]


def evaluate_labelled(rows: list[dict], photos: Sequence[OutsidePhoto]) -> tuple[list[dict], list[dict]]:
    """Scores per model of predict_with_each rows against the photos' labels, and the per-photo
    table with each photo's truth and whether each model's verdict was right. Accuracy, balanced
    accuracy and ROC AUC read the calibrated probability at 0.5, as the test-split figures do;
    `unsure` counts the photos inside the unsure band, `not_judged` those without a face (not
    judged unless asked) and `correct_confident` the right verdicts outside the band."""
    truth = {p.name: CLASSES[p.label] for p in photos if p.label is not None}
    table, scores = [], []
    for row in photo_rows(rows):
        row = {**row, "truth": truth.get(row["image"])}
        row["correct"] = None if row["verdict"] in (None, NOT_JUDGED) else row["verdict"] == row["truth"]
        table.append(row)
    for model in dict.fromkeys(r["model"] for r in table):
        mine = [r for r in table if r["model"] == model and r["prob_fake"] is not None and r["truth"]]
        labels = np.array([CLASSES.index(r["truth"]) for r in mine])
        probs = np.array([r["prob_fake"] for r in mine])
        metrics = classification_metrics(labels, probs) if mine else {}
        scores.append({
            "model": model, "photos": len(mine), "accuracy": metrics.get("accuracy"),
            "balanced_accuracy": metrics.get("balanced_accuracy"), "roc_auc": metrics.get("roc_auc"),
            "unsure": sum(r["verdict"] == "unsure" for r in mine),
            "not_judged": sum(1 for r in table if r["model"] == model and r["verdict"] == NOT_JUDGED),
            "correct_confident": sum(bool(r["correct"]) for r in mine),
            "errors": sum(1 for r in table if r["model"] == model and r["error"]),
        })
    return scores, table



def predict_photos(predictors: dict, photos: Sequence[OutsidePhoto], face_crop: bool = True, tta: bool = False,
                   unsure_band: tuple[float, float] | None = None, judge_without_face: bool = False) -> tuple[list, list[dict]]:
    """(prepared photos, predict_with_each rows) for outside photos, each photo decoded and its
    faces found once for every model."""
    from fvr_core.inference.predict import for_display, predict_with_each, prepare_photo  # loads torch: here, not when the module loads (start-up speed)

    photos = settings.enforced_limits().photo_cap(photos)  # demo mode: the demo's photo count, whoever calls
    # one full-size photo decoded at a time: each is kept at display size once its faces are cut out
    prepared = [for_display(prepare_photo(p.path, p.name, face_crop)) for p in photos]
    return prepared, predict_with_each(predictors, prepared, tta, unsure_band, judge_without_face)


def evaluate_folder(predictors: dict, folder: str | Path, labels_csv: str | Path | None = None, face_crop: bool = True,
                    tta: bool = False, unsure_band: tuple[float, float] | None = None, judge_without_face: bool = False) -> dict:
    """A labelled folder through every predictor: {"scores", "table", "problems", "prepared"}."""
    photos, problems = labelled_photos(folder, labels_csv)
    prepared, rows = predict_photos(predictors, photos, face_crop, tta, unsure_band, judge_without_face)
    scores, table = evaluate_labelled(rows, photos)
    return {"scores": scores, "table": table, "problems": problems, "prepared": prepared, "rows": rows}
