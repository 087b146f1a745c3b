"""Memory of the Predict page when visitors upload large photos: SESSIONS sessions (Streamlit's
AppTest, one thread each, in this one process as a server holds its sessions) each upload PHOTOS
large photos at once to the Predict page's Photos tab, face crop and saliency maps on (the page's
defaults), all at the same moment. Photos are synthetic JPEGs of WIDTHxHEIGHT (smooth colours
with noise, about 2-4 MB each: under the demo's 20 MB per file), a different set per session.

Memory is the process's resident set (/proc/self/status): after a warm-up session predicted one
photo (torch, the face detector, the model and Streamlit loaded: "the models"), then its peak
while the sessions predict (VmHWM, reset before). The figure to read is the peak minus the
warm-up: what the photos cost. The model is a 1-epoch cnn run on the demo set (48 px, random
enough: memory does not depend on the weights).

    PYTHONPATH=. python benchmarks/photo_memory.py [--sessions 5] [--photos 20] [--size 6000x4000]
        [--repo PATH]  (another checkout's pages and fvr_core, e.g. to measure an older version)
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from process_memory import reset_peak, rss_mb  # benchmarks/ is on the path when a benchmark runs


def large_photo(seed: int, width: int, height: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (max(2, height // 80), max(2, width // 80), 3), dtype=np.uint8)
    picture = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR), dtype=np.int16)
    picture += rng.integers(-6, 7, picture.shape, dtype=np.int16)  # sensor noise: JPEG cannot squeeze it away
    buffer = io.BytesIO()
    Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def predict_session(repo: Path, photos: list[tuple[str, bytes]], errors: list, start: threading.Event | None = None) -> float:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(repo / "streamlit_app.py"), default_timeout=3600).run()
    at = at.switch_page("pages/predict.py").run()
    if start is not None:
        start.wait()
    began = time.perf_counter()
    at.file_uploader(key="photos").set_value([(name, data, "image/jpeg") for name, data in photos]).run()
    errors.extend(str(e.value) for e in [*at.exception, *at.error])
    shown = [s.value for s in at.subheader]
    if shown != [name for name, _ in photos]:
        errors.append(f"a session showed {shown[:3]}... instead of its {len(photos)} photos")
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT of each photo (6000x4000: 24 MP, 72 MB decoded)")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    repo = args.repo.resolve()
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    width, height = (int(v) for v in args.size.lower().split("x"))
    scratch = Path(tempfile.mkdtemp(prefix="fvr-photo-memory-"))
    for name in ("FVR_RUNS_DIR", "FVR_DATA_DIR", "FVR_CACHE_DIR"):
        os.environ[name] = str(scratch / name.lower())
    os.environ["FVR_REFERENCE_DIR"] = str(scratch / "no-reference")

    from fvr_core.config import TrainConfig
    from fvr_core.data.demo import make_demo_dataset
    from fvr_core.settings import bound_thread_memory
    from fvr_core.training.trainer import train

    bound_thread_memory()  # as streamlit_app.py does
    data = make_demo_dataset(scratch / "demo", per_class=20, size=64)
    train(TrainConfig(data=str(data), model="cnn", epochs=1, image_size=48, batch_size=16, threads=1))

    started = time.perf_counter()
    sets = [[(f"s{s}-p{p}.jpg", large_photo(1000 * s + p, width, height)) for p in range(args.photos)] for s in range(args.sessions)]
    mb = sum(len(d) for photos in sets for _, d in photos) / 1024**2
    print(f"{args.sessions} sessions x {args.photos} photos of {width}x{height} ({width * height / 1e6:.0f} MP, "
          f"{width * height * 3 / 1024**2:.0f} MB decoded each), {mb:.0f} MB of JPEG in all, made in {time.perf_counter() - started:.0f} s")

    errors: list[str] = []
    predict_session(repo, [("warm-up.jpg", large_photo(99, width, height))], errors)
    warm, _ = rss_mb()
    reset_peak()
    start = threading.Event()
    seconds: list[float] = []
    threads = [threading.Thread(target=lambda p=photos: seconds.append(predict_session(repo, p, errors, start))) for photos in sets]
    for t in threads:
        t.start()
    time.sleep(2.0)  # every session has opened the page
    start.set()
    stop, peak_seen = threading.Event(), [0.0]

    def sample() -> None:
        while not stop.wait(0.05):
            peak_seen[0] = max(peak_seen[0], rss_mb()[0])

    sampler = threading.Thread(target=sample)
    sampler.start()
    for t in threads:
        t.join()
    stop.set()
    sampler.join()
    after, peak = rss_mb()
    peak = max(peak, peak_seen[0])
    from fvr_core.settings import page_predictions, photo_cache_mb

    print(f"pages from {repo}; {page_predictions()} predictions at once, photo cache {photo_cache_mb()} MB (if this version has one)")
    print(f"resident memory: {warm:.0f} MB after the warm-up (models loaded), peak {peak:.0f} MB during the "
          f"{args.sessions} sessions, {after:.0f} MB after: photos cost +{peak - warm:.0f} MB at the peak, +{after - warm:.0f} MB kept")
    print(f"sessions took {min(seconds):.0f}-{max(seconds):.0f} s each")
    if errors:
        print("errors:", *errors[:5], sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
