"""How long a hyperparameter search takes, with and without pruning (README: Hyperparameter search).

    PYTHONPATH=. nice -n 10 python benchmarks/search_timing.py [--data ../shared/datasets/tpdne-vs-ffhq-300]

Runs the same search twice through the CLI's library calls (12 cnn trials, 64 px, 5 epochs, lr
1e-4:1e-2 on a log scale, batch size 16/32/64, augmentation none/light, sampler seed 0), once
with the median pruner and once with none, each in a fresh runs folder, and prints the wall time,
epochs trained and the best validation balanced accuracy of each. The decoded-image cache is
filled first, so neither pays for decoding."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from fvr_core.config import TrainConfig
from fvr_core.data.dataset import load_dataset
from fvr_core.training.search import run_search
from fvr_core.training.searches import SearchSpec, SearchStore, parse_range


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "tpdne-vs-ffhq-300"))
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--pruners", default="median,none")
    args = parser.parse_args()

    load_dataset(args.data, args.image_size)  # decode once: both searches read the cache
    base = TrainConfig(data=args.data, model=args.model, epochs=args.epochs, image_size=args.image_size)
    space = {"lr": parse_range("lr", "1e-4:1e-2"), "batch_size": parse_range("batch_size", "16,32,64"),
             "augment": parse_range("augment", "none,light")}
    for pruner in args.pruners.split(","):
        root = Path(tempfile.mkdtemp(prefix=f"fvr-search-{pruner}-"))
        try:
            search = SearchStore(root).create(SearchSpec(base=base, space=space, trials=args.trials, pruner=pruner))
            started = time.perf_counter()

            def report(event: str, info: dict) -> None:  # a line per trial: a cut-short benchmark still tells something
                if event == "trial" and info["state"] != "running":
                    print(f"  {pruner}: trial {info['trial']} {info['state']} {info.get('message', '')} "
                          f"at {time.perf_counter() - started:.0f} s", flush=True)

            run_search(search, progress=report)
            seconds = time.perf_counter() - started
            rows = search.trials_table()
            epochs = sum(r["epochs"] for r in rows)
            pruned = sum(str(r["state"]).startswith("pruned") for r in rows)
            best = search.best()
            print(f"pruner {pruner}: {len(rows)} trials in {seconds / 60:.1f} min ({seconds:.0f} s), {epochs} epochs trained "
                  f"of {args.trials * args.epochs}, {pruned} pruned, best val balanced acc "
                  f"{best['value']:.3f} (trial {best['trial']})", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
