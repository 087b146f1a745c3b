"""How close fvr_core.estimate's time estimates come to real training runs on this machine.

For a few small configurations it prints the estimate (measured speed, then estimate_run) beside
the wall time of fvr_core.training.train, with their ratio. Everything (decoded images, speed
cache, runs) goes into a temporary folder, so the first run at each image size decodes its images
and is estimated with decode time, and a later run at the same size reuses them.

    PYTHONPATH=. python benchmarks/estimate_accuracy.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

SHARED_FACES = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "tpdne-vs-ffhq-300"
CASES = [("cnn", 64), ("cnn", 128), ("resnet18", 64)]


def _data_folder(scratch: Path) -> Path:
    if (SHARED_FACES / "data.csv").is_file():
        return SHARED_FACES
    from fvr_core.demo import make_demo_dataset

    return make_demo_dataset(scratch / "demo", per_class=200, size=128)


def _split_sizes(data: Path, config) -> dict[str, int]:
    from fvr_core.dataset import scan_dataset, stratified_split

    _, records, _ = scan_dataset(data)
    split = stratified_split([r.label for r in records], config.split, config.seed)
    return {name: len(positions) for name, positions in split.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fvr-estimate-") as tmp:
        scratch = Path(tmp)
        os.environ["FVR_CACHE_DIR"] = str(scratch / "cache")  # before fvr_core reads it: a cold cache
        from fvr_core.config import TrainConfig
        from fvr_core.estimate import estimate_run, format_duration
        from fvr_core.training import train

        data = _data_folder(scratch)
        print(f"data: {data}")
        header = f"{'model':<9} {'px':>4} {'measure':>8} {'est train':>9} {'est eval':>8} {'est dec':>7} {'estimate':>8} {'actual':>8} {'act train':>9} {'actual/est':>10}"
        print(header)
        print("-" * len(header))
        decoded_sizes: set[int] = set()
        for model, size in CASES:
            config = TrainConfig(data=str(data), model=model, image_size=size, epochs=args.epochs,
                                 batch_size=args.batch_size, device="cpu")
            started = time.perf_counter()
            estimate = estimate_run(config, _split_sizes(data, config), decoded=size in decoded_sizes)
            measure = time.perf_counter() - started
            started = time.perf_counter()
            run = train(config, runs_dir=scratch / "runs")
            actual = time.perf_counter() - started
            decoded_sizes.add(size)
            assert run.state == "completed", run.status()
            train_actual = sum(row["epoch_seconds"] for row in run.epoch_rows())
            print(f"{model:<9} {size:>4} {measure:>7.1f}s {estimate.train_seconds:>8.1f}s {estimate.eval_seconds:>7.1f}s "
                  f"{estimate.decode_seconds:>6.1f}s {estimate.total_seconds:>7.1f}s {actual:>7.1f}s {train_actual:>8.1f}s "
                  f"{actual / estimate.total_seconds:>10.2f}")
            print(f"{'':<14} {estimate.describe()}; actually took {format_duration(actual)}")


if __name__ == "__main__":
    main()
