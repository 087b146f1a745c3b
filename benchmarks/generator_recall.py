"""Per-generator recall of runs on folders of fakes only (e.g. ../shared/datasets/extra-gan-fakes):
the share of each folder's images a run calls fake (calibrated P(fake) >= 0.5), judged whole as
the test split is (no face search: these are face crops already), resized to the run's input size.

    PYTHONPATH=. python benchmarks/generator_recall.py --runs-dir /work/runs13 RUN [RUN ...] \
        --folder ../shared/datasets/extra-gan-fakes/boredhumans --folder ../shared/datasets/extra-gan-fakes/stylegan3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fvr_core.data.images import load_rgb
from fvr_core.inference.outside import list_photos
from fvr_core.inference.predict import Predictor
from fvr_core.runs.store import RunStore


def recall(predictor: Predictor, folder: Path, limit: int = 0, batch: int = 32) -> tuple[int, int, float]:
    """(caught, images, mean calibrated P(fake)) over the images of `folder` (every `len // limit`-th
    in name order when `limit` caps how many are judged)."""
    photos = list_photos(folder)
    if limit and len(photos) > limit:
        photos = photos[:: len(photos) // limit][:limit]
    probs = []
    for start in range(0, len(photos), batch):
        arrays = np.stack([predictor.model_input(load_rgb(p.path)) for p in photos[start : start + batch]])
        probs.append(predictor.probabilities(arrays)[0])
    p = np.concatenate(probs) if probs else np.zeros(0)
    return int((p >= 0.5).sum()), len(p), float(p.mean()) if len(p) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--runs-dir")
    parser.add_argument("--folder", action="append", required=True, help="a folder of fakes from one generator; repeat")
    parser.add_argument("--limit", type=int, default=0, help="judge at most this many images per folder, evenly spread (0: all)")
    args = parser.parse_args()
    store = RunStore(args.runs_dir)
    print("| run | model | generator | caught / images | recall | mean P(fake) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run_id in args.runs:
        run = store.get(run_id)
        predictor = Predictor.from_run(run)
        for folder in map(Path, args.folder):
            caught, total, mean = recall(predictor, folder, args.limit)
            print(f"| {run.id} | {run.config.model} | {folder.name} | {caught} / {total} | {caught / max(1, total):.3f} | {mean:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
