"""Which co-occurrence detector to ship, chosen on VALIDATION only: feature sets (neighbour
directions), training sources (the shared set alone, or with more fakes of other generators) and the
logistic regression's C, each scored on the shared set's validation split (seed 42, the split every
run of the shared set uses). The test split is never read here.

    PYTHONPATH=. python benchmarks/cooc_variants.py [--extra ../shared/datasets/extra-gan-fakes/boredhumans]

Prints the feature time per image and one row per (directions, training sources, C)."""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fvr_core import settings
from fvr_core.data.augment import normalize
from fvr_core.data.dataset import load_dataset, split_ids
from fvr_core.models.forensic import CoocFeatures
from fvr_core.metrics import classification_metrics
from fvr_core.settings import FAKE


@torch.inference_mode()
def features(images: np.ndarray, directions: str) -> np.ndarray:
    """The detector's own sqrt co-occurrence features (fvr_core.models.forensic.CoocFeatures)."""
    extractor = CoocFeatures(directions)
    return torch.cat([extractor(normalize(torch.from_numpy(np.ascontiguousarray(images[start : start + 8])))).sqrt()
                      for start in range(0, len(images), 8)]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(settings.beside_project("../shared/datasets/tpdne-vs-ffhq-300")))
    parser.add_argument("--extra", action="append", default=[], help="more fakes (a folder): its train part joins training")
    parser.add_argument("--directions", default="hv,hvda")
    parser.add_argument("--C", default="0.001,0.01,0.1,0.3,1,3,10")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from sklearn.linear_model import LogisticRegression

    spec = ";".join([args.data] + [f"fake:{e}" for e in args.extra])
    data = load_dataset(spec, 300)
    split = {name: data.indices_of(ids) for name, ids in split_ids(data, (0.6, 0.2, 0.2), 42).items()}
    main_source = data.sources == 0
    train_sets = {"shared set": split["train"][main_source[split["train"]]]}
    if args.extra:
        train_sets["shared set + extra fakes"] = split["train"]
    val = split["val"][main_source[split["val"]]]  # the shared set's validation images only
    print(f"{len(data)} images; train {len(split['train'])}, shared-set val {len(val)}")
    print("| directions | trained on | C | val balanced acc | val ROC AUC | features | fit s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for directions in args.directions.split(","):
        started = time.perf_counter()
        needed = np.unique(np.concatenate([val, *train_sets.values()]))
        computed = features(data.images[needed], directions)
        f = np.zeros((len(data), computed.shape[1]), np.float32)
        f[needed] = computed
        print(f"<!-- {directions}: {(time.perf_counter() - started) / len(needed) * 1000:.0f} ms an image -->", flush=True)
        for train_name, train in train_sets.items():
            mean, scale = f[train].mean(0), f[train].std(0)
            scale = np.where(scale > 1e-8, scale, 1.0)
            z_train, z_val = (f[train] - mean) / scale, (f[val] - mean) / scale
            y_train = (data.labels[train] == FAKE).astype(int)
            for c in (float(v) for v in args.C.split(",")):
                started = time.perf_counter()
                lr = LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit(z_train, y_train)
                metrics = classification_metrics(data.labels[val], lr.predict_proba(z_val)[:, 1])
                print(f"| {directions} | {train_name} | {c:g} | {metrics['balanced_accuracy']:.3f} | "
                      f"{metrics['roc_auc']:.3f} | {f.shape[1]} | {time.perf_counter() - started:.1f} |", flush=True)


if __name__ == "__main__":
    main()
