"""Time per Grad-CAM map (fvr_core.inference.saliency) beside one plain prediction, on random weights.

For each model: the median seconds of one saliency_for call (forward + backward to the saliency
layer + upsampling) and of one inference-mode forward pass, on one image, with the model in
channels-last layout as fvr_core.inference.predict.Predictor keeps it, and what copying the module tree
for each call (saliency._private_shell) costs of that.

    PYTHONPATH=. python benchmarks/saliency_speed.py [--models cnn,resnet18] [--size 300] [--threads 1] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from fvr_core.data.augment import normalize
from fvr_core.models.registry import build_model
from fvr_core.inference.saliency import _private_shell, saliency_for


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and captum's import
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,resnet18")
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = np.random.default_rng(0).integers(0, 256, (3, args.size, args.size), dtype=np.uint8)
    x = normalize(torch.from_numpy(image).unsqueeze(0))
    print(f"{args.size} px, {args.threads} thread(s), median of {args.repeats}")
    for name in args.models.split(","):
        model = build_model(name).eval().to(memory_format=torch.channels_last)

        def predict():
            with torch.inference_mode():
                model(x)

        saliency = median_seconds(lambda: saliency_for(model, name, image), args.repeats)
        forward = median_seconds(predict, args.repeats)
        shell = median_seconds(lambda: _private_shell(model), args.repeats)
        print(f"{name:>20}: saliency {saliency * 1000:7.1f} ms   prediction {forward * 1000:7.1f} ms   "
              f"module-tree copy {shell * 1000:5.2f} ms")


if __name__ == "__main__":
    main()
