"""How close fvr_core.training.estimate's time estimates come to real training runs on this machine.

Five runs, one after the other, as a user would start them: each is estimated as the Train page
does (estimate.speed_for: a finished run's real speed when one of the same model, image size and
batch size exists, else a short measurement), then trained with fvr_core.training.trainer.train, and the
estimate is printed beside the wall time, with the range the page states. The estimate from a
fresh measurement alone is printed too, for the runs whose estimate came from a finished run.
Everything (decoded images, speed cache, runs) goes into a temporary folder, so the first run at
each image size decodes its images and is estimated with decode time.

    PYTHONPATH=. python benchmarks/estimate_accuracy.py [--markdown]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

SHARED_FACES = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "tpdne-vs-ffhq-300"
# (model, image size, epochs): the second run of a pair is estimated from the first one's real speed
CASES = [("cnn", 64, 3), ("cnn", 64, 5), ("resnet18", 64, 2), ("resnet18", 64, 3), ("cnn", 96, 2)]


def _data_folder(scratch: Path) -> Path:
    if (SHARED_FACES / "data.csv").is_file():
        return SHARED_FACES
    from fvr_core.data.demo import make_demo_dataset

    return make_demo_dataset(scratch / "demo", per_class=200, size=128)


def _split_sizes(data: Path, config) -> dict[str, int]:
    from fvr_core.data.dataset import scan_dataset, stratified_split

    _, records, _ = scan_dataset(data)
    split = stratified_split([r.label for r in records], config.split, config.seed)
    return {name: len(positions) for name, positions in split.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown (the README's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fvr-estimate-") as tmp:
        scratch = Path(tmp)
        os.environ["FVR_CACHE_DIR"] = str(scratch / "cache")  # before fvr_core reads it: a cold cache
        from fvr_core.config import TrainConfig
        from fvr_core.training.estimate import estimate_run, format_range, measure_speed, speed_for
        from fvr_core.runs.store import RunStore
        from fvr_core.training.trainer import train

        data = _data_folder(scratch)
        store = RunStore(scratch / "runs")
        print(f"data: {data}; load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        rows = []
        decoded_sizes: set[int] = set()
        for model, size, epochs in CASES:
            config = TrainConfig(data=str(data), model=model, image_size=size, epochs=epochs,
                                 batch_size=args.batch_size, device="cpu")
            sizes = _split_sizes(data, config)
            decoded = size in decoded_sizes
            estimate = estimate_run(config, sizes, decoded=decoded, speed=speed_for(config, store.list()))
            measured_only = estimate_run(config, sizes, decoded=decoded, speed=measure_speed(model, size, args.batch_size))
            started = time.perf_counter()
            run = train(config, runs_dir=store.root)
            actual = time.perf_counter() - started
            decoded_sizes.add(size)
            assert run.state == "completed", run.status()
            low, high = estimate.range_seconds()
            rows.append({
                "run": f"{model} {size} px, {epochs} epochs", "basis": "finished run" if estimate.from_run else "measurement",
                "estimate": estimate.total_seconds, "range": format_range(low, high), "measured only": measured_only.total_seconds,
                "actual": actual, "actual/estimate": actual / estimate.total_seconds, "in range": low <= actual <= high,
                "load": os.getloadavg()[0],
            })
            r = rows[-1]
            print(f"{r['run']:<26} {r['basis']:<13} estimate {r['estimate']:6.1f} s ({r['range']})  measured only "
                  f"{r['measured only']:6.1f} s  actual {actual:6.1f} s  actual/estimate {r['actual/estimate']:.2f}  "
                  f"{'in' if r['in range'] else 'OUT OF'} range  load {r['load']:.1f}", flush=True)
        if args.markdown:
            print("\n| run | estimate from | estimate | stated range | measurement alone | actual | actual / estimate |")
            print("|---|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['run']} | {r['basis']} | {r['estimate']:.0f} s | {r['range']} | {r['measured only']:.0f} s | "
                      f"{r['actual']:.0f} s | {r['actual/estimate']:.2f} |")


if __name__ == "__main__":
    main()
