"""Training speed of fvr's trainer beside the original write-up's loop, on the same images.

For each model and image size it trains, in this one process and on the same subset of the data
set, (a) the ORIGINAL loop re-implemented faithfully, bugs included: ImageFolder + DataLoader
(no workers; batch 32, vgg19 8, as the write-up notes) that decodes every JPEG again each epoch and
stretches it to the size, Adam re-created every epoch, the write-up's CNN copied verbatim
(benchmarks/writeup_cnn.py, its Softmax before CrossEntropyLoss included), torchvision heads left
at 1000 classes;
and (b) fvr_core.training.trainer.train. It prints per (model, size): training images/s of both (median
of the measured epochs after one warm-up epoch), training FLOPs per image, fvr's achieved GFLOP/s
and model FLOP utilisation against a matmul peak measured here, the data pipelines alone, the
peak memory of each measurement, and single-image prediction latency from JPEG bytes.

Everything (copied subset, decoded-image cache, runs) goes into a temporary folder. The default
run (cnn and resnet18 at 300 px) should take about 3-4 minutes on a quiet 2-core CPU (far longer
if other work runs: it prints a warning then); vgg19/vgg19_bn are for a GPU or a tiny --images
(about 0.3 images/s on a 2-core CPU).

    PYTHONPATH=. python benchmarks/train_speed.py [--models cnn,resnet18] [--sizes 300] [--images N] [--epochs 3] [--batch-size 32] [--device auto] [--repeats 50] [--fvr-option key=value ...] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

SHARED_FACES = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "tpdne-vs-ffhq-300"
# images in the subset per model (split 60/20/20 by fvr: the train part is what both loops train on),
# sized so that a model at 300 px takes a minute or two on a 2-core CPU; on CUDA all 800 are used
CPU_DEFAULT_IMAGES = {"cnn": 160, "resnet18": 96, "vgg19": 12, "vgg19_bn": 12}
CPU_OTHER_IMAGES = 96
CUDA_DEFAULT_IMAGES = 800
PIPELINE_IMAGES = 256  # images each data pipeline produces when measured alone
PREDICT_WARMUP = 3
FLOP_BATCH = 2
SCRIPT_CONTROLLED = ("data", "model", "image_size", "epochs", "batch_size", "device")  # set by the script's own options


# ---------------------------------------------------------------------------------------------
# options


def parse_args() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,resnet18", help="comma-separated fvr model names")
    parser.add_argument("--sizes", default="300", help="comma-separated image sizes in pixels")
    parser.add_argument("--images", type=int, default=0,
                        help="images in the subset per model, before fvr's 60/20/20 split "
                             f"(default: {CPU_DEFAULT_IMAGES}, others {CPU_OTHER_IMAGES} on CPU; {CUDA_DEFAULT_IMAGES} on CUDA)")
    parser.add_argument("--epochs", type=int, default=3, help="measured epochs after the warm-up epoch (3 or more for real figures)")
    parser.add_argument("--batch-size", type=int, default=32, help="fvr's batch size")
    parser.add_argument("--original-batch", type=int, default=0,
                        help="the original loop's batch size (default: the write-up's, 32 and vgg19 8; its loaders "
                             "as printed used 4)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=50, help="timed single-image predictions per side (30 or more for real figures)")
    parser.add_argument("--fvr-option", action="append", default=[], metavar="KEY=VALUE",
                        help="extra TrainConfig setting for fvr's runs (repeatable), e.g. augment=standard")
    parser.add_argument("--data", default=str(SHARED_FACES), help="data set with fake/ and real/ folders of 300x300 JPEGs")
    parser.add_argument("--json", default="", help="also write the machine, peaks and rows to this JSON file")
    args = parser.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.epochs < 1 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--epochs, --batch-size and --repeats must be 1 or more")
    if args.images and args.images < 6:
        parser.error("--images: 6 or more (fvr's split needs 3 images of each class)")
    return parser, args


def check_models(models: list[str]) -> None:
    """Only the write-up's four models have an original side to compare with."""
    from fvr_core.config import ORIGINAL_MODELS

    others = [m for m in models if m not in ORIGINAL_MODELS]
    if others:
        raise ValueError(f"--models {','.join(others)}: the original write-up had only {', '.join(ORIGINAL_MODELS)}")


def parse_fvr_options(pairs: list[str], models: list[str], sizes: list[int]) -> dict[str, str]:
    """KEY=VALUE pairs -> a dict, checked now with the models and sizes by TrainConfig (unknown keys,
    bad values) so a typo fails before minutes of measuring rather than at the first fvr run."""
    from fvr_core.config import TrainConfig

    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--fvr-option {pair!r}: write it as key=value")
        if key.strip() in SCRIPT_CONTROLLED:
            raise ValueError(f"--fvr-option {key}: set by this script ({', '.join(SCRIPT_CONTROLLED)}); use its own options")
        options[key.strip()] = value
    for model in models:
        for size in sizes:  # ConfigError is a ValueError: it names the field and the allowed values
            TrainConfig.from_dict({"model": model, "image_size": size, **options}).validate()
    return options


# ---------------------------------------------------------------------------------------------
# machine, clocks, memory


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available")
    return torch.device(name)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    import torchvision

    info = {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "threads": torch.get_num_threads(), "device": str(device),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype) -> float:
    """Best GFLOP/s of a square torch.mm with torch's default threads: the roof MFU is taken against."""
    n = 4096 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    warmups, repeats = (10, 20) if device.type == "cuda" else (2, 10)
    for _ in range(warmups):
        torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def measure_peaks(device: torch.device, fvr_options: dict[str, str]) -> dict[str, float]:
    """fp32 always; bf16 where fvr trains in bf16 (CUDA, or mixed_precision=on)."""
    peaks = {"fp32": matmul_peak_gflops(device, torch.float32)}
    if device.type == "cuda" or fvr_options.get("mixed_precision") == "on":
        peaks["bf16"] = matmul_peak_gflops(device, torch.bfloat16)
    return peaks


def rss_field_mb(name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024  # kB
    return math.nan


def can_reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Peak:
    cpu_mb: float = math.nan  # process peak RSS (VmHWM) during the measurement
    cpu_start_mb: float = math.nan  # RSS when it started: the peak includes this baseline
    gpu_mb: float = math.nan  # torch.cuda.max_memory_allocated during the measurement

    def shown(self, device: torch.device) -> float:
        return self.gpu_mb if device.type == "cuda" else self.cpu_mb


@contextmanager
def peak_memory(device: torch.device) -> Iterator[Peak]:
    """Peak memory of the block: VmHWM, reset first through /proc/self/clear_refs (Linux); on CUDA
    also the allocator's peak. Without clear_refs VmHWM is the peak since the process started."""
    peak = Peak()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    can_reset_peak_rss()
    peak.cpu_start_mb = rss_field_mb("VmRSS")
    yield peak
    sync(device)
    peak.cpu_mb = rss_field_mb("VmHWM")
    if device.type == "cuda":
        peak.gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20


# ---------------------------------------------------------------------------------------------
# the images


def choose_subset(data: Path, count: int) -> list[str]:
    """`count` image ids (fake/..., real/...) drawn with a fixed seed, half of each class as far as
    the data set has them."""
    from fvr_core.data.dataset import scan_dataset
    from fvr_core.settings import CLASSES

    _, records, _ = scan_dataset(data)
    by_class = {label: sorted(r.id for r in records if r.label == label) for label in range(len(CLASSES))}
    fakes = min(len(by_class[0]), count // 2)
    reals = min(len(by_class[1]), count - fakes)
    rng = random.Random(0)
    return sorted(rng.sample(by_class[0], fakes) + rng.sample(by_class[1], reals))


def make_data_folder(source: Path, ids: list[str], folder: Path) -> Path:
    """A class-folder data set holding only `ids`, so ImageFolder and fvr read the same files.
    Copies, not symlinks: fvr skips links that point outside the data folder."""
    for image_id in ids:
        target = folder / image_id
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / image_id, target)
    return folder.resolve()


def default_images(model: str, device: torch.device) -> int:
    if device.type == "cuda":
        return CUDA_DEFAULT_IMAGES
    return CPU_DEFAULT_IMAGES.get(model, CPU_OTHER_IMAGES)


# ---------------------------------------------------------------------------------------------
# fvr's side


def fvr_config(data: Path, model: str, size: int, args: argparse.Namespace, device: torch.device):
    from fvr_core.config import TrainConfig

    base = {"data": str(data), "model": model, "image_size": size, "epochs": 1 + args.epochs,
            "batch_size": args.batch_size, "augment": "light", "device": device.type}
    return TrainConfig.from_dict({**base, **args.fvr_options})


def fvr_training(config, runs: Path, device: torch.device) -> tuple[dict, object]:
    """Train with fvr_core.training.trainer.train; throughput from its epoch rows, the first dropped as warm-up."""
    from fvr_core.training.trainer import train

    with peak_memory(device) as peak:
        run = train(config, runs_dir=runs)
    if run.state != "completed":
        raise RuntimeError(f"fvr run {run.id} ended {run.state}: {run.status().get('message')}")
    rows = run.epoch_rows()
    rates = [row["images_per_s"] for row in rows[1:]]
    result = {"images_per_s": statistics.median(rates), "epoch_seconds": [row["epoch_seconds"] for row in rows], "memory": peak}
    return result, run


def fvr_pipeline(config, train_ids: list[str], n_images: int, device: torch.device) -> tuple[float, Peak]:
    """fvr's input side alone, as the trainer runs it: a random batch indexed out of the uint8 train
    images held on the device, then BatchAugmenter (which also normalises)."""
    from fvr_core.data.augment import BatchAugmenter
    from fvr_core.data.dataset import load_dataset

    data = load_dataset(config.data, config.image_size)  # the run decoded these: a cache hit
    images = torch.from_numpy(np.ascontiguousarray(data.images[data.indices_of(train_ids)])).to(device)
    augmenter = BatchAugmenter(config.augment, seed=config.seed, device=device)

    def batch() -> torch.Tensor:
        return augmenter(images[torch.randint(len(images), (config.batch_size,), device=device)])

    batch()  # warm-up
    with peak_memory(device) as peak:
        sync(device)
        start, done = time.perf_counter(), 0
        while done < n_images:
            batch()
            done += config.batch_size
        sync(device)
        seconds = time.perf_counter() - start
    return done / seconds, peak


def flops_per_image(model_name: str, size: int) -> float:
    """Training FLOPs (forward + backward, matmuls and convolutions) of fvr's model per image,
    counted on the meta device: from shapes alone, no compute and no memory."""
    from torch.utils.flop_counter import FlopCounterMode

    from fvr_core.models.registry import build_model

    with torch.device("meta"):
        model = build_model(model_name).train()
        images = torch.randn(FLOP_BATCH, 3, size, size)
        labels = torch.zeros(FLOP_BATCH, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops() / FLOP_BATCH


# ---------------------------------------------------------------------------------------------
# the original's side, bugs included


def original_model(name: str) -> nn.Module:
    """The write-up's models: its CNN copied verbatim (Softmax output included), torchvision's
    with their 1000-class heads never replaced."""
    import torchvision

    from benchmarks.writeup_cnn import fake_vs_real_Model

    if name == "cnn":
        return fake_vs_real_Model()
    return getattr(torchvision.models, name)(weights=None)


def original_batch(name: str, args: argparse.Namespace) -> int:
    from fvr_core.config import ORIGINAL_BATCH_SIZES, PRESETS

    return args.original_batch or ORIGINAL_BATCH_SIZES.get(name, PRESETS["Original recipe"]["batch_size"])


def original_transform(size: int):
    from torchvision import transforms

    from fvr_core.settings import IMAGENET_MEAN, IMAGENET_STD

    # Resize((s, s)) stretches; the data set is square, so it matches fvr's centre crop here
    return transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                               transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def original_loader(data: Path, train_ids: list[str], size: int, batch_size: int) -> torch.utils.data.DataLoader:
    """ImageFolder over the subset folder, restricted to fvr's train split; decodes every epoch."""
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(data), transform=original_transform(size))  # classes sorted: fake=0, real=1
    position = {Path(path).relative_to(data).as_posix(): i for i, (path, _) in enumerate(folder.samples)}
    subset = torch.utils.data.Subset(folder, [position[image_id] for image_id in train_ids])
    return torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=True, num_workers=0)


def original_epoch(model: nn.Module, loader, device: torch.device) -> tuple[float, int]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # bug kept: a fresh Adam (no state) every epoch
    criterion = nn.CrossEntropyLoss()
    model.train()
    running_loss, correct = 0.0, 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, labels)  # bug kept: the CNN's outputs are already softmaxed
        loss.backward()
        optimizer.step()
        # the notebook's running statistics: .item() per batch, as it printed them
        running_loss += loss.item() * inputs.size(0)
        correct += int((outputs.argmax(1) == labels).sum().item())
    return running_loss, correct


def original_training(model_name: str, loader, epochs: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = original_model(model_name).to(device)
    seconds = []
    with peak_memory(device) as peak:
        for _ in range(1 + epochs):
            sync(device)
            start = time.perf_counter()
            original_epoch(model, loader, device)
            sync(device)
            seconds.append(time.perf_counter() - start)
    count = len(loader.dataset)
    return {"images_per_s": statistics.median(count / s for s in seconds[1:]), "epoch_seconds": seconds, "memory": peak}


def original_pipeline(loader, n_images: int, device: torch.device) -> tuple[float, Peak]:
    """The DataLoader alone (decode, stretch, ToTensor, Normalize, to the device), no model."""
    next(iter(loader))  # warm-up
    with peak_memory(device) as peak:
        sync(device)
        start, done = time.perf_counter(), 0
        while done < n_images:
            for inputs, _labels in loader:
                inputs.to(device)
                done += len(inputs)
                if done >= n_images:
                    break
        sync(device)
        seconds = time.perf_counter() - start
    return done / seconds, peak


def original_predict(model: nn.Module, transform, jpeg: bytes, device: torch.device) -> list[float]:
    from PIL import Image

    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    outputs = model(transform(image).unsqueeze(0).to(device))  # as written: autograd on, no torch.no_grad()
    return outputs[0].tolist()


# ---------------------------------------------------------------------------------------------
# prediction latency


def prediction_latency(model_name: str, size: int, jpeg: bytes, repeats: int, device: torch.device) -> dict:
    """p50/p95 ms of one prediction from JPEG bytes (decode, preprocess, forward) for both sides,
    taking turns so background load hits both alike; memory measured over each side's warm-up."""
    from fvr_core.models.registry import build_model
    from fvr_core.inference.predict import Predictor

    predictor = Predictor(build_model(model_name), {"image_size": size, "model": model_name}, device=str(device))
    model, transform = original_model(model_name).to(device).eval(), original_transform(size)

    def fvr_call(face_crop: bool) -> None:
        prediction = predictor.predict_one(io.BytesIO(jpeg), face_crop=face_crop)
        if prediction.error:  # a failed decode would time an error path, not a prediction
            raise RuntimeError(f"fvr could not predict the benchmark JPEG: {prediction.error}")

    # "fvr": the model alone (decode, preprocess, forward); "fvr_face": the whole Predict path with the face crop
    calls: dict[str, Callable[[], object]] = {"original": lambda: original_predict(model, transform, jpeg, device),
                                              "fvr": lambda: fvr_call(False), "fvr_face": lambda: fvr_call(True)}
    result = {name: {} for name in calls}
    for name, call in calls.items():
        with peak_memory(device) as peak:
            for _ in range(PREDICT_WARMUP):
                call()
        result[name]["memory"] = peak
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            sync(device)
            start = time.perf_counter()
            call()
            sync(device)
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        result[name]["p50_ms"], result[name]["p95_ms"] = (float(v) * 1000 for v in np.percentile(values, [50, 95]))
    return result


# ---------------------------------------------------------------------------------------------
# one row


@dataclass
class Case:
    model: str
    size: int
    data: Path  # the subset folder
    jpeg: bytes  # one 300x300 JPEG of the data set, for the latency


def measure_case(case: Case, args: argparse.Namespace, device: torch.device, peaks: dict[str, float], scratch: Path) -> dict:
    from fvr_core.training.devices import autocast_dtype

    threads = torch.get_num_threads()
    config = fvr_config(case.data, case.model, case.size, args, device)
    fvr, run = fvr_training(config, scratch / "runs", device)
    torch.set_num_threads(threads)  # fvr sets its own (config.threads): the rest runs with torch's default
    train_ids = run.split()["train"]
    loader = original_loader(case.data, train_ids, case.size, original_batch(case.model, args))
    original = original_training(case.model, loader, args.epochs, device)
    n_pipeline = args.batch_size * math.ceil(PIPELINE_IMAGES / args.batch_size)
    pipe_fvr, pipe_fvr_mem = fvr_pipeline(config, train_ids, n_pipeline, device)
    pipe_orig, pipe_orig_mem = original_pipeline(loader, n_pipeline, device)
    latency = prediction_latency(case.model, case.size, case.jpeg, args.repeats, device)
    flops = flops_per_image(case.model, case.size)
    precision = "bf16" if autocast_dtype(config, device) == torch.bfloat16 else "fp32"
    fvr_gflops = flops * fvr["images_per_s"] / 1e9
    return {
        "model": case.model, "size": case.size, "train_images": len(train_ids), "precision": precision,
        "orig_images_per_s": original["images_per_s"], "fvr_images_per_s": fvr["images_per_s"],
        "ratio": fvr["images_per_s"] / original["images_per_s"],
        "orig_epoch_seconds": original["epoch_seconds"], "fvr_epoch_seconds": fvr["epoch_seconds"],
        "train_gflop_per_image": flops / 1e9, "fvr_gflop_per_s": fvr_gflops,
        "mfu": fvr_gflops / peaks[precision],
        "pipeline_images": n_pipeline, "orig_pipeline_images_per_s": pipe_orig, "fvr_pipeline_images_per_s": pipe_fvr,
        "memory": {
            "orig_train": original["memory"], "fvr_train": fvr["memory"],
            "orig_pipeline": pipe_orig_mem, "fvr_pipeline": pipe_fvr_mem,
            "orig_predict": latency["original"]["memory"], "fvr_predict": latency["fvr"]["memory"],
        },
        "orig_predict_p50_ms": latency["original"]["p50_ms"], "orig_predict_p95_ms": latency["original"]["p95_ms"],
        "fvr_predict_p50_ms": latency["fvr"]["p50_ms"], "fvr_predict_p95_ms": latency["fvr"]["p95_ms"],
        "fvr_face_predict_p50_ms": latency["fvr_face"]["p50_ms"], "fvr_face_predict_p95_ms": latency["fvr_face"]["p95_ms"],
        "fvr_options": dict(args.fvr_options),
    }


# ---------------------------------------------------------------------------------------------
# printing


def pair(a: float, b: float, digits: int = 0) -> str:
    return f"{a:.{digits}f}/{b:.{digits}f}"


def mem_pair(row: dict, what: str, device: torch.device) -> str:
    memory = row["memory"]
    return pair(memory[f"orig_{what}"].shown(device), memory[f"fvr_{what}"].shown(device))


COLUMNS: list[tuple[str, int, Callable[[dict, torch.device], str]]] = [
    ("model", -9, lambda r, d: r["model"]),
    ("px", 4, lambda r, d: str(r["size"])),
    ("train", 5, lambda r, d: str(r["train_images"])),
    ("orig/s", 7, lambda r, d: f"{r['orig_images_per_s']:.1f}"),
    ("fvr/s", 7, lambda r, d: f"{r['fvr_images_per_s']:.1f}"),
    ("fvr/orig", 8, lambda r, d: f"{r['ratio']:.2f}x"),
    ("GF/img", 7, lambda r, d: f"{r['train_gflop_per_image']:.2f}"),
    ("fvr GF/s", 8, lambda r, d: f"{r['fvr_gflop_per_s']:.1f}"),
    ("MFU", 6, lambda r, d: f"{100 * r['mfu']:.1f}%"),
    ("pipe orig/s", 11, lambda r, d: f"{r['orig_pipeline_images_per_s']:.0f}"),
    ("pipe fvr/s", 10, lambda r, d: f"{r['fvr_pipeline_images_per_s']:.0f}"),
    ("MB train o/f", 12, lambda r, d: mem_pair(r, "train", d)),
    ("MB pipe o/f", 11, lambda r, d: mem_pair(r, "pipeline", d)),
    ("MB pred o/f", 11, lambda r, d: mem_pair(r, "predict", d)),
    ("p50 ms o/f", 11, lambda r, d: pair(r["orig_predict_p50_ms"], r["fvr_predict_p50_ms"], 1)),
    ("p95 ms o/f", 11, lambda r, d: pair(r["orig_predict_p95_ms"], r["fvr_predict_p95_ms"], 1)),
    ("face p50/p95", 12, lambda r, d: pair(r["fvr_face_predict_p50_ms"], r["fvr_face_predict_p95_ms"], 1)),
]


def format_line(cells: list[str]) -> str:
    return " ".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, (_, w, _) in zip(cells, COLUMNS))


def print_header(device: torch.device, info: dict, peaks: dict[str, float], args: argparse.Namespace, rss_resets: bool) -> None:
    name = f" ({info['device_name']})" if "device_name" in info else ""
    print(f"machine: {info['cpu']}, {info['cpu_count']} CPUs; torch {info['torch']}, torchvision {info['torchvision']}; "
          f"device {info['device']}{name}; {info['threads']} torch threads (torch's default, for both sides; "
          "fvr's page thread setting is not used)")
    for precision, gflops in peaks.items():
        n = 4096 if device.type == "cuda" else 2048
        print(f"matmul peak {precision}: {gflops:.1f} GFLOP/s (torch.mm {n}x{n}, best of several)")
    options = ", ".join(f"{k}={v}" for k, v in args.fvr_options.items()) or "none"
    print(f"fvr: batch {args.batch_size}, augment {args.fvr_options.get('augment', 'light')}, extra options: {options}; original: batch "
          f"{', '.join(f'{m} {original_batch(m, args)}' for m in args.models)}, "
          f"no workers; {args.epochs} measured epochs after 1 warm-up; {args.repeats} timed predictions each")
    load = os.getloadavg()[0]
    if load > 0.5:  # with torch's threads on every core, any other work slows small ops many times over
        print(f"WARNING: load average {load:.1f} on {info['cpu_count']} CPUs before starting: other work is running, "
              "timings are unreliable")
    if not rss_resets:
        print("NOTE: /proc/self/clear_refs is not writable here: peak RSS cannot be reset, so every CPU memory figure "
              "is the process's peak since it started")


def print_table(rows: list[dict], device: torch.device) -> None:
    header = format_line([title for title, _, _ in COLUMNS])
    print(header)
    print("-" * len(header))
    for row in rows:
        print(format_line([cell(row, device) for _, _, cell in COLUMNS]))


def print_legend(device: torch.device) -> None:
    memory = ("GPU peak allocated by torch (max_memory_allocated)" if device.type == "cuda"
              else "process peak RSS (VmHWM, reset before each one;\n               it includes the RSS already held: see cpu_start_mb in --json)")
    print(f"""
legend:
  train        images in fvr's train split of the subset: both loops train on exactly these
  orig/s fvr/s training images/s, median over the measured epochs (first epoch dropped as warm-up);
               fvr's from its run's epoch rows (training steps only), the original's from the wall time of its epochs
  fvr/orig     fvr's training images/s over the original's
  GF/img       training GFLOP per image (forward + backward of fvr's model; matmul/conv FLOPs counted by FlopCounterMode)
  fvr GF/s MFU GF/img x fvr's images/s, and that over the matmul peak of fvr's precision
  pipe ...     data pipeline alone, images/s over {PIPELINE_IMAGES}+ images: the original's DataLoader (decode, stretch,
               ToTensor, Normalize) vs fvr's (random batch from the decoded uint8 tensor on the device + augment + normalise)
  MB ... o/f   original/fvr peak memory of training (fvr: the whole train() call, with decoding and evaluation),
               the pipelines and the prediction warm-up: {memory}
  p50/p95 ms   one prediction from the JPEG bytes of a 300x300 image: decode + preprocess + forward, original/fvr
               (original: stretch transform, eval() but autograd on; fvr: Predictor.predict_one without the
               face crop: the model alone), taking turns
  face p50/p95 fvr's whole Predict path: the same with the face found and cropped first (MTCNN)""")


def to_json(value):
    if isinstance(value, Peak):
        return {k: (None if math.isnan(v) else round(v, 1)) for k, v in vars(value).items()}
    raise TypeError(type(value).__name__)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser, args = parse_args()
    source = Path(args.data)
    if not source.is_dir():
        raise SystemExit(f"data set {source} not found: pass --data with fake/ and real/ folders of JPEGs")
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="fvr-train-speed-") as tmp:
        scratch = Path(tmp)
        os.environ["FVR_CACHE_DIR"] = str(scratch / "cache")  # before fvr_core reads it: a cold cache
        try:
            check_models(args.models)
            args.fvr_options = parse_fvr_options(args.fvr_option, args.models, args.sizes)
        except ValueError as exc:  # ConfigError included
            parser.error(str(exc))
        info = machine_info(device)
        peaks = measure_peaks(device, args.fvr_options)
        rss_resets = can_reset_peak_rss()
        print_header(device, info, peaks, args, rss_resets)
        rows = []
        for model in args.models:
            ids = choose_subset(source, args.images or default_images(model, device))
            data = make_data_folder(source, ids, scratch / "data" / model)
            jpeg = (data / next(i for i in ids if i.lower().endswith((".jpg", ".jpeg")))).read_bytes()
            for size in args.sizes:
                rows.append(measure_case(Case(model, size, data, jpeg), args, device, peaks, scratch))
                print(f"  measured {model} at {size} px", flush=True)
        print()
        print_table(rows, device)
        print_legend(device)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "matmul_peak_gflops": peaks, "rows": rows}, indent=2, default=to_json))
            print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
