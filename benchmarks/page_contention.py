"""How fast the dashboard answers a prediction while a training process uses the CPU, with the
page process's torch threads set to 1 (fvr's default, FVR_PAGE_THREADS) or left at torch's
default (one per core).

It trains resnet18 at 128 px on the synthetic demo set in a separate process (as the dashboard's
background worker does, with its default threads), and meanwhile keeps predicting: Predictor.
predict_one on a 640x480 photo (decode, resize and centre crop, forward) for the cnn and resnet18
at 128 px, taking turns, first on an idle machine, then beside the training process. It also
reports the training process's images/s alone and under each page setting, from its metrics.

    PYTHONPATH=. python benchmarks/page_contention.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _photo() -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _predictor(model_name: str, size: int):
    from fvr_core.models.registry import build_model
    from fvr_core.inference.predict import Predictor
    from fvr_core.settings import CLASSES

    model = build_model(model_name, pretrained=False)
    return Predictor(model, {"image_size": size, "model": model_name, "classes": list(CLASSES)})


def _latencies(predictors: dict, photo: bytes, seconds: float) -> dict[str, tuple[float, float]]:
    """p50 and p95 milliseconds of predict_one per model, taking turns for `seconds` (a page kept busy)."""
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for predictor in predictors.values():
        predictor.predict_one(io.BytesIO(photo))  # warm-up
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for name, predictor in predictors.items():
            start = time.perf_counter()
            predictor.predict_one(io.BytesIO(photo))
            times[name].append(time.perf_counter() - start)
    result = {}
    for name, values in times.items():
        values.sort()
        result[name] = (statistics.median(values) * 1000, values[int(0.95 * (len(values) - 1))] * 1000)
    return result


def _training_process(data: Path, runs: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "fvr_core", "train", "--data", str(data), "--model", "resnet18",
               "--image-size", "128", "--epochs", "1000", "--batch-size", "32", "--runs-dir", str(runs)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _training_rate(runs: Path, since: float) -> float | None:
    """Training images/s of the background run over its step rows after `since`."""
    from fvr_core.runs.store import RunStore

    runs_list = RunStore(runs).list()
    if not runs_list:
        return None
    steps = [r for r in runs_list[0].step_rows() if r["time"] >= since]
    if len(steps) < 2:
        return None
    return (steps[-1]["step"] - steps[0]["step"]) * 32 / (steps[-1]["time"] - steps[0]["time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="length of each measured window")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fvr-contention-") as tmp:
        scratch = Path(tmp)
        os.environ["FVR_CACHE_DIR"] = str(scratch / "cache")
        import torch

        from fvr_core.data.demo import make_demo_dataset

        data = make_demo_dataset(scratch / "demo", per_class=200, size=128)
        photo = _photo()
        predictors = {name: _predictor(name, 128) for name in ("cnn", "resnet18")}
        default_threads = torch.get_num_threads()
        settings = [("1 (fvr default)", 1), (f"{default_threads} (torch default)", default_threads)]
        print(f"{os.cpu_count()} CPUs; predict_one on a 640x480 JPEG at 128 px, models taking turns for "
              f"{args.seconds:.0f} s per window; latencies p50 / p95 in ms")
        idle = {}
        for label, threads in settings:
            torch.set_num_threads(threads)
            idle[label] = _latencies(predictors, photo, args.seconds / 2)
        trainer = _training_process(data, scratch / "runs")
        try:
            time.sleep(15)  # decoding done, steps under way
            since = time.time()
            time.sleep(args.seconds)
            print(f"training process alone (resnet18, 128 px, torch default threads): "
                  f"{_training_rate(scratch / 'runs', since) or float('nan'):.1f} images/s")
            header = (f"{'page threads':<20} {'model':<9} {'idle p50':>9} {'idle p95':>9} {'busy p50':>9} "
                      f"{'busy p95':>9} {'slowdown':>9} {'trainer img/s':>14}")
            print(header)
            print("-" * len(header))
            for label, threads in settings:
                torch.set_num_threads(threads)
                since = time.time()
                busy = _latencies(predictors, photo, args.seconds)
                rate = _training_rate(scratch / "runs", since)
                for name in predictors:
                    (i50, i95), (b50, b95) = idle[label][name], busy[name]
                    rate_text = f"{rate:.1f}" if rate else "n/a"
                    print(f"{label:<20} {name:<9} {i50:>9.1f} {i95:>9.1f} {b50:>9.1f} {b95:>9.1f} {b50 / i50:>8.1f}x {rate_text:>14}")
        finally:
            trainer.kill()
            trainer.wait()


if __name__ == "__main__":
    main()
