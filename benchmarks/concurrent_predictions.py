"""Twenty visitors predicting at once: latency, throughput and memory of the Predict page's work
under concurrency, in one process as a Streamlit server runs its sessions (one thread each).

Each prediction is what the page does for a fresh upload: decode the photo, find and crop its faces
(or not, with face crop off) and run one model shared by every thread (Predictor.predict_prepared
through predict_with_each), with the page's torch threads (FVR_PAGE_THREADS, default 1) and, as the
page, at most --slots predictions at once (FVR_PAGE_PREDICTIONS; 0: no limit), the others waiting in
arrival order (latency includes that wait), and glibc's malloc arenas capped as streamlit_app.py
caps them (--malloc-arenas, FVR_MALLOC_ARENAS; 0: glibc's default). The models
have random weights (speed does not depend on them), at 300 px; the photo is a 640x480 frame
holding one face (a shared real face when ../shared/datasets is there, else a synthetic one). Each
setting runs in a fresh process: one prediction at a time first (the idle latency), then THREADS
threads start together and make PER_THREAD predictions each. Memory is the process's resident set
before the burst and its peak during it (/proc/self/status VmRSS, and VmHWM reset before the burst).

    PYTHONPATH=. python benchmarks/concurrent_predictions.py [--threads 20] [--per-thread 5] [--models cnn,resnet18]
        [--slots N] [--malloc-arenas N]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from process_memory import reset_peak, rss_mb  # benchmarks/ is on the path when a benchmark runs

REPO = Path(__file__).resolve().parent.parent


def photo() -> tuple[bytes, str]:
    from PIL import Image

    shared = Path(os.environ.get("FVR_SHARED_DATASETS", REPO.parent / "shared" / "datasets")) / "tpdne-vs-ffhq-300" / "real" / "3.jpg"
    if shared.is_file():
        face, source = Image.open(shared).convert("RGB"), "a shared real face (300 px)"
    else:
        from fvr_core.data.demo import make_demo_dataset

        folder = make_demo_dataset(Path(tempfile.mkdtemp()) / "demo", per_class=1, size=256)
        face, source = Image.open(next((folder / "real").glob("*.jpg"))).convert("RGB"), "a synthetic demo face (256 px)"
    canvas = Image.new("RGB", (640, 480), (128, 128, 128))
    canvas.paste(face, (280, 100))
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), source


def predictor(model_name: str, size: int):
    from fvr_core.models.registry import build_model
    from fvr_core.inference.predict import Predictor
    from fvr_core.settings import CLASSES

    return Predictor(build_model(model_name, pretrained=False), {"image_size": size, "model": model_name, "classes": list(CLASSES)})


def predict_once(shared, data: bytes, face_crop: bool) -> tuple[float, list[dict]]:
    """The page's work for one upload (no cache: every visitor's photo is new): seconds and rows."""
    from contextlib import nullcontext

    from fvr_core.inference.predict import predict_with_each, prepare_photo
    from fvr_core.settings import prediction_slot

    slot = prediction_slot if os.environ["FVR_PAGE_PREDICTIONS"] != "0" else nullcontext
    start = time.perf_counter()
    with slot():  # pages/_common.prepared_photo
        prepared = [prepare_photo(data, "photo.jpg", face_crop)]
    with slot():  # pages/predict.py
        rows = predict_with_each({"model": shared}, prepared)
    return time.perf_counter() - start, rows


def burst(shared, data: bytes, face_crop: bool, threads: int, per_thread: int) -> dict:
    barrier = threading.Barrier(threads)
    latencies: list[float] = []
    answers: list[float] = []
    errors: list[str] = []

    def session() -> None:
        barrier.wait()
        for _ in range(per_thread):
            try:
                seconds, rows = predict_once(shared, data, face_crop)
                latencies.append(seconds)
                answers.append(rows[0]["prob_fake"])
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

    reset_peak()
    workers = [threading.Thread(target=session) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    return {"latencies": latencies, "answers": answers, "errors": errors, "wall": wall, "peak": rss_mb()[1]}


def measure(model_name: str, face_crop: bool, args) -> None:
    """One setting in this (fresh) process: prints its table row."""
    import torch

    from fvr_core.settings import bound_thread_memory, page_threads

    bound_thread_memory()  # as streamlit_app.py does
    torch.set_num_threads(page_threads())
    data, _ = photo()
    shared = predictor(model_name, args.image_size)
    predict_once(shared, data, face_crop)  # warm-up: detector and kernels loaded
    alone = [predict_once(shared, data, face_crop) for _ in range(max(5, args.per_thread))]
    alone_ms = [s * 1000 for s, _ in alone]
    before = rss_mb()[0]
    result = burst(shared, data, face_crop, args.threads, args.per_thread)
    assert not result["errors"], result["errors"][:3]
    reference = alone[0][1][0]["prob_fake"]
    equal = all(abs(a - reference) <= 1e-6 for a in result["answers"])
    p50, p95 = np.percentile(np.array(result["latencies"]) * 1000, [50, 95])
    throughput = len(result["latencies"]) / result["wall"]
    print(f"| {model_name} | {'on' if face_crop else 'off'} ({alone[0][1][0]['face']}) | {np.median(alone_ms):.0f} ms | {p50:.0f} / {p95:.0f} ms | "
          f"{throughput:.1f}/s | {1000 / np.median(alone_ms):.1f}/s | {before:.0f} MB | {result['peak']:.0f} MB "
          f"(+{result['peak'] - before:.0f}) | {'yes' if equal else 'NO'} ({len(result['answers'])}) |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--per-thread", type=int, default=5)
    parser.add_argument("--models", default="cnn,resnet18")
    parser.add_argument("--image-size", type=int, default=300)
    parser.add_argument("--slots", type=int, default=None, help="predictions at once (default: the page's, FVR_PAGE_PREDICTIONS); 0: no limit")
    parser.add_argument("--malloc-arenas", type=int, default=None, help="glibc malloc arenas (default: the app's, FVR_MALLOC_ARENAS); 0: glibc's default")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # MODEL:on|off, measured in a fresh process
    args = parser.parse_args()
    from fvr_core.settings import page_predictions, page_threads

    os.environ["FVR_PAGE_PREDICTIONS"] = slots = str(page_predictions() if args.slots is None else args.slots)
    if args.malloc_arenas is not None:
        os.environ["FVR_MALLOC_ARENAS"] = str(args.malloc_arenas)
    arenas = os.environ.get("FVR_MALLOC_ARENAS", "2")
    if args.one:
        model_name, crop = args.one.split(":")
        measure(model_name, crop == "on", args)
        return
    _, source = photo()
    print(f"{os.cpu_count()} cores, torch threads {page_threads()} (FVR_PAGE_THREADS), photo 640x480 with {source}; "
          f"{args.threads} threads x {args.per_thread} predictions, {'no limit' if slots == '0' else f'at most {slots}'} at once; "
          f"malloc arenas {'glibc default' if arenas == '0' else arenas}; each setting in a fresh process")
    print("| model | face crop | alone p50 | concurrent p50 / p95 | throughput | alone throughput | RSS before | peak RSS in the burst | answers equal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for model_name in args.models.split(","):
        for crop in ("on", "off"):
            subprocess.run([sys.executable, __file__, "--one", f"{model_name}:{crop}", "--threads", str(args.threads),
                            "--per-thread", str(args.per_thread), "--image-size", str(args.image_size), "--slots", slots],
                           check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


if __name__ == "__main__":
    main()
