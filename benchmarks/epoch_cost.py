"""What one epoch of the Original recipe costs at a given image size: times a few real training
steps (fvr's model, Adam, channels-last, the recipe's batch size) and evaluation batches on random
images, then scales to the shared data set's split (480 train, 160 validation images of 800) and to
the recipe's 30 epochs. Also counts the training FLOPs of a whole run, from which the time on any
other machine can be estimated. Why the shipped VGG reference runs stay at 64 px on a CPU:

    PYTHONPATH=. python benchmarks/epoch_cost.py --models vgg19,vgg19_bn --size 300 --steps 1
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fvr_core.config import PRESETS, preset_settings
from fvr_core.models.registry import build_model

TRAIN_IMAGES, VAL_IMAGES = 480, 160  # the shared set's 60/20/20 split of 800 images


def train_flops_per_image(name: str, size: int) -> float:
    with torch.device("meta"):
        model = build_model(name).train()
        images, labels = torch.randn(2, 3, size, size), torch.zeros(2, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops() / 2


def seconds_per_step(name: str, size: int, batch: int, steps: int) -> tuple[float, float]:
    """(seconds of one training step, seconds to evaluate one image), each after a warm-up."""
    torch.manual_seed(0)
    model = build_model(name).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (batch,))
    times = []
    for _ in range(1 + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    model.eval()
    with torch.no_grad():
        model(images)  # warm-up
        start = time.perf_counter()
        model(images)
        eval_per_image = (time.perf_counter() - start) / batch
    return min(times[1:]), eval_per_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg19,vgg19_bn")
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--steps", type=int, default=1, help="timed training steps per model after one warm-up")
    args = parser.parse_args()
    epochs = PRESETS["Original recipe"]["epochs"]
    print(f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
          f"(other work slows every figure); {args.size} px, fp32")
    print(f"{'model':<10} {'batch':>5} {'s/step':>8} {'ms/img eval':>11} {'min/epoch':>9} {'h/run':>6} {'TFLOP/run':>9}")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        batch = preset_settings("Original recipe", name)["batch_size"]
        step, eval_image = seconds_per_step(name, args.size, batch, args.steps)
        epoch = math.ceil(TRAIN_IMAGES / batch) * step + VAL_IMAGES * eval_image
        run_flops = train_flops_per_image(name, args.size) * TRAIN_IMAGES * epochs + \
            train_flops_per_image(name, args.size) / 3 * VAL_IMAGES * epochs  # evaluation: forward only
        print(f"{name:<10} {batch:>5} {step:>8.1f} {1000 * eval_image:>11.0f} {epoch / 60:>9.1f} "
              f"{epoch * epochs / 3600:>6.1f} {run_flops / 1e12:>9.0f}")


if __name__ == "__main__":
    main()
