"""How long a training run will take on this machine, from a short measurement of the model, cached.

measure_speed times a few training steps (the trainer's step: augment, forward, loss, backward,
gradient clipping, optimizer step) and a few inference batches of randomly initialised weights on
random images, and caches the result in cache_root()/speed.json; estimate_run turns it into
seconds for a TrainConfig and its split sizes.

A step's cost is modelled as a fixed part plus a part proportional to the batch. On a CPU the
per-image part is about linear in the batch, but the fixed part is not small: the optimizer update
of a 10M-parameter layer costs the same for 2 images as for 32 (about 80 ms here), so timing only
a 2-image batch and dividing would overestimate a 32-image run of the small CNN several times over.
When the budget allows, a second, larger batch is timed and the two points give both parts.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, fields
import socket
from typing import Callable, Iterable

import torch
from torch import nn

from fvr_core.data.augment import BatchAugmenter
from fvr_core.config import TrainConfig
from fvr_core.durations import format_duration  # noqa: F401  (re-exported: pages and the CLI import it from here)
from fvr_core.inference.evaluation import predict_logits
from fvr_core.models.registry import build_model, get_spec
from fvr_core.runs.store import COMPLETED, Run, RunError
from fvr_core.files import atomic_write_json, read_json
from fvr_core import settings
from fvr_core.settings import cache_root
from fvr_core.training.devices import configure_threads, resolve_device

CACHE_FORMAT = 2  # bump when the measurement changes, so older figures are measured again
# Two images per measured step: one training step of vgg19 at 300 px then takes about 5 s on a
# 2-core CPU (3.7 s forward/backward, 1.4 s Adam update of 139M parameters).
MEASURE_BATCH = 2
MAX_TIMED_STEPS = 20  # enough for a stable median; more only spends the budget of a cheap model
# Decoding costs 1.5 ms per image: load_dataset on a cold cache, as training calls it (content
# hashing, 2 decode threads, resize, writing the cache), over the 800 300x300 JPEGs (quality 90)
# of the shared tpdne-vs-ffhq-300 set on this 2-core machine took 1.17-1.26 s at 64, 128 and
# 300 px (1.47-1.58 ms per image; the resize target hardly matters, the JPEG decode dominates).
# Larger source photos decode slower, roughly in proportion to their pixels.
DECODE_SECONDS_PER_IMAGE = 0.0015
EVAL_BATCH_MIN = 64  # the trainer evaluates in batches of max(64, batch_size)
# A measurement older than this is taken again: the machine, its load or the code may have changed.
STALE_SECONDS = 24 * 3600.0
# A measurement that is off from a finished run's real speed by more than this factor either way
# (measured under load, or by another process) is dropped and measured again.
DISAGREE_FACTOR = 1.5
# Where actual times are likely to fall around the estimate (factors of it), on a machine whose load
# stays steady: judgements, not fitted figures; README "Time estimates" shows how far a shared,
# heavily loaded machine strays from them.
RANGE_FROM_RUN = (0.8, 1.25)
RANGE_FROM_MEASUREMENT = (0.5, 1.3)


@dataclass
class Speed:
    """One measurement of a model at one image size, device and thread count."""

    model: str
    image_size: int
    device: str
    threads: int
    train_seconds_per_image: float  # forward+backward+optimizer step per image, at a batch of batch_size
    eval_seconds_per_image: float  # inference_mode forward per image, at a batch of max(64, batch_size)
    measured_unix: float
    batch_size: int = 32  # the training batch the per-image figures are for
    train_step_seconds: float = 0.0  # the part of a training step that does not grow with the batch
    eval_batch_seconds: float = 0.0  # the part of an inference batch that does not grow with it
    measure_batches: tuple[int, ...] = ()  # the batch sizes actually timed
    source: str = "measured"  # "measured" (a timed benchmark) or "run <id>" (a finished run's real speed)

    def train_seconds(self, images: int, steps: int) -> float:
        """Seconds to train on `images` images in `steps` optimizer steps."""
        per_image = self.train_seconds_per_image - self.train_step_seconds / self.batch_size
        return steps * self.train_step_seconds + images * per_image

    def eval_seconds(self, images: int, batch_size: int) -> float:
        """Seconds of inference over `images` images in batches of `batch_size`."""
        eval_batch = max(EVAL_BATCH_MIN, self.batch_size)
        per_image = self.eval_seconds_per_image - self.eval_batch_seconds / eval_batch
        return math.ceil(images / max(1, batch_size)) * self.eval_batch_seconds + images * per_image

    def to_dict(self) -> dict:
        return {**asdict(self), "measure_batches": list(self.measure_batches)}

    @classmethod
    def from_dict(cls, data: dict) -> Speed:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["measure_batches"] = tuple(values.get("measure_batches", ()))
        return cls(**values)


@dataclass
class TimeEstimate:
    train_seconds: float
    eval_seconds: float
    decode_seconds: float
    total_seconds: float
    speed: Speed
    cached: bool  # the Speed came from the disk cache (False when measured now or passed in)

    @property
    def from_run(self) -> bool:
        return self.speed.source.startswith("run ")

    def range_seconds(self) -> tuple[float, float]:
        """(low, high): where the actual time is likely to fall. Narrower when the speed is a
        finished run's on this machine than when it is a seconds-long benchmark (README: "Time
        estimates" has the figures these bounds come from)."""
        low, high = RANGE_FROM_RUN if self.from_run else RANGE_FROM_MEASUREMENT
        return low * self.total_seconds, high * self.total_seconds

    def describe(self) -> str:
        """One line for a user, e.g. 'about 4 min (3-5 min) on this machine (cpu, 2 threads, ...): 3 min training, ...'."""
        where = f"{self.speed.device}, {self.speed.threads} threads" if self.speed.device == "cpu" else self.speed.device
        basis = f"as fast as {self.speed.source}" if self.from_run else "from a short measurement"
        parts = [f"{format_duration(self.train_seconds)} training", f"{format_duration(self.eval_seconds)} evaluation"]
        if self.decode_seconds > 0:
            parts.append(f"{format_duration(self.decode_seconds)} decoding images")
        return (f"about {format_duration(self.total_seconds)} ({format_range(*self.range_seconds())}) on this machine "
                f"({where}; {basis}): {', '.join(parts)}")


def format_range(low: float, high: float) -> str:
    """'40 s-1 min', '3-5 min': a range in the units format_duration uses."""
    a, b = format_duration(low), format_duration(high)
    if a == b:
        return a
    if a.endswith(" min") and b.endswith(" min") and "h" not in a + b:
        return f"{a[:-4]}-{b}"
    if a.endswith(" s") and b.endswith(" s"):
        return f"{a[:-2]}-{b}"
    return f"{a}-{b}"


# ---- measurement


def _cache_key(model: str, image_size: int, batch_size: int, device: str, threads: int) -> str:
    parts = [
        f"format {CACHE_FORMAT}", model, f"{image_size} px", f"batch {batch_size}", f"measured at {MEASURE_BATCH}",
        device, f"{threads} threads", f"torch {torch.__version__}", f"{os.cpu_count()} cpus",
    ]
    return " | ".join(parts)


def _read_cache(key: str) -> Speed | None:
    entry = (read_json(cache_root() / "speed.json", {}) or {}).get(key)
    try:
        return Speed.from_dict(entry) if isinstance(entry, dict) else None
    except (TypeError, ValueError):  # an entry from an incompatible version: measure again
        return None


def _write_cache(key: str, speed: Speed) -> None:
    # read-modify-write: two processes measuring at once may drop one's entry, which is then
    # simply measured again next time; the atomic rename means a reader never sees a torn file
    path = cache_root() / "speed.json"
    cache = read_json(path, {})
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = speed.to_dict()
    atomic_write_json(path, cache)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_times(step: Callable[[], tuple[float, ...]], budget: float, warm_up: bool = True) -> tuple[float, ...]:
    """Run step() once to warm up (allocations, kernel selection for these shapes), then time it
    until `budget` seconds are spent, at least once; the median of each part it reports."""
    if warm_up:
        step()
    times, start = [], time.perf_counter()
    while not times or (time.perf_counter() - start < budget and len(times) < MAX_TIMED_STEPS):
        times.append(step())
    return tuple(statistics.median(part) for part in zip(*times))


def _larger_batch(seconds_per_image: float, small: int, cap: int, budget: float) -> int:
    """A second batch size to time beside `small`, as large as a step within `budget` allows;
    `small` when no batch at least twice as large fits (the per-image cost is then taken as linear)."""
    fits = int(budget / max(seconds_per_image, 1e-9))
    large = min(cap, fits)
    return large if large >= 2 * small else small


def _fit(small: int, t_small: float, large: int, t_large: float) -> tuple[float, float]:
    """(fixed seconds per batch, seconds per image) through two timed batch sizes."""
    if large == small:
        return 0.0, t_small / small
    per_image = (t_large - t_small) / (large - small)
    per_image = min(max(per_image, 0.0), t_large / large)  # timing noise must not make either part negative
    return t_large - per_image * large, per_image


class _Bench:
    """A randomly initialised model, optimizer and augmenter doing the trainer's steps on random images."""

    def __init__(self, model: str, image_size: int, largest: int, device: torch.device):
        self.device = device
        # the trainer's default layout (channels_last "auto") on the devices it applies to
        self.model = build_model(model, pretrained=False).to(device).to(memory_format=torch.channels_last)
        # Adam: the default optimizer, and the dearest update of the three (SGD keeps one buffer, Adam two)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.augmenter = BatchAugmenter("light", seed=0, device=device)
        self.loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (largest, 3, image_size, image_size), dtype=torch.uint8, generator=generator).to(device)
        self.labels = torch.randint(0, 2, (largest,), generator=generator).to(device)

    def train_step(self, batch: int) -> tuple[float, float]:
        """Seconds of (augment+forward+loss+backward, gradient norm+optimizer update) of one step, as the trainer does them."""
        self.model.train()
        start = time.perf_counter()
        x = self.augmenter(self.images[:batch])
        loss = self.loss_fn(self.model(x).float(), self.labels[:batch])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _sync(self.device)
        middle = time.perf_counter()
        nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        self.optimizer.step()
        _sync(self.device)
        return middle - start, time.perf_counter() - middle

    def eval_batch(self, batch: int) -> tuple[float]:
        start = time.perf_counter()
        predict_logits(self.model, self.images[:batch], batch_size=batch, device=self.device)
        return (time.perf_counter() - start,)


def _measure(bench: _Bench, batch_size: int, budget: float) -> tuple[float, float, float, float, tuple[int, ...]]:
    """(train per image, train fixed per step, eval per image, eval fixed per batch, batches timed)."""
    small = min(batch_size, MEASURE_BATCH)
    compute, update = _median_times(lambda: bench.train_step(small), 0.2 * budget)
    # the update (clip + optimizer step) does not depend on the batch: a per-step cost, left out
    # when choosing how large a batch a step of 0.2 * budget can hold
    large = _larger_batch(compute / small, small, batch_size, 0.2 * budget)
    compute_large = _median_times(lambda: bench.train_step(large), 0.2 * budget)[0] if large > small else compute
    fixed, per_image = _fit(small, compute, large, compute_large)
    # a model whose step outlasts the budget gains little from a second warm-up: its one-off costs are relatively small
    cheap = compute + update < 0.2 * budget
    (t_eval,) = _median_times(lambda: bench.eval_batch(small), 0.1 * budget, warm_up=cheap)
    eval_cap = min(bench.images.shape[0], max(EVAL_BATCH_MIN, batch_size))
    eval_large = _larger_batch(t_eval / small, small, eval_cap, 0.1 * budget)
    t_eval_large = _median_times(lambda: bench.eval_batch(eval_large), 0.1 * budget)[0] if eval_large > small else t_eval
    eval_fixed, eval_per_image = _fit(small, t_eval, eval_large, t_eval_large)
    return per_image, fixed + update, eval_per_image, eval_fixed, (small, large, eval_large)


def measure_speed(
    model: str,
    image_size: int,
    batch_size: int = 32,
    device: str = "cpu",
    threads: int = 0,
    budget_seconds: float = 2.0,
    refresh: bool = False,
) -> Speed:
    """Seconds per image of training and of evaluation for `model` at `image_size` on this machine,
    from the disk cache or measured now in about `budget_seconds` (longer for a model whose single
    step takes longer). `refresh` measures again."""
    return _load_or_measure(model, image_size, batch_size, device, threads, budget_seconds, refresh)[0]


def _load_or_measure(
    model: str, image_size: int, batch_size: int, device: str, threads: int, budget_seconds: float, refresh: bool,
) -> tuple[Speed, bool]:
    """The Speed and whether it came from the cache."""
    torch_device = resolve_device(device)
    previous_threads = torch.get_num_threads()
    try:
        used = configure_threads(threads) if torch_device.type == "cpu" else previous_threads
        key = _cache_key(model, image_size, batch_size, torch_device.type, used)
        cached = None if refresh else _read_cache(key)
        if cached is not None and time.time() - cached.measured_unix < STALE_SECONDS:
            return cached, True
        # the largest batch timed is at most max(batch_size, 64): hold that many random images
        largest = max(batch_size, EVAL_BATCH_MIN)
        # in a prediction slot: a page's measurement takes its turn with the predictions of all sessions
        with settings.prediction_slot(), torch.random.fork_rng(devices=[]):  # building a model draws weights: leave the caller's RNG as it was
            bench = _Bench(model, image_size, largest, torch_device)
            per_image, step, eval_per_image, eval_fixed, batches = _measure(bench, batch_size, budget_seconds)
        eval_batch = max(EVAL_BATCH_MIN, batch_size)
        speed = Speed(
            model=model, image_size=image_size, device=torch_device.type, threads=used,
            train_seconds_per_image=per_image + step / batch_size,
            eval_seconds_per_image=eval_per_image + eval_fixed / eval_batch,
            measured_unix=time.time(), batch_size=batch_size, train_step_seconds=step,
            eval_batch_seconds=eval_fixed, measure_batches=batches,
        )
        _write_cache(key, speed)
        return speed, False
    finally:
        torch.set_num_threads(previous_threads)


# ---- speed from finished runs


def observed_speed(runs: Iterable[Run], model: str, image_size: int, batch_size: int, device: str = "cpu",
                   threads: int | None = None) -> Speed | None:
    """The real speed of the newest completed run of `model` at `image_size` and `batch_size` on
    this host and device (and thread count, when given): the first source of an estimate, since it
    includes everything a benchmark leaves out (data loading, evaluation, checkpoints, the load the
    machine is under). A resumed run is skipped (its clock covers only its last part)."""
    host = socket.gethostname()
    for run in runs:
        try:
            config = run.config
            if (config.model, config.image_size, config.batch_size) != (model, image_size, batch_size):
                continue
            status = run.status()
            if status.get("state") != COMPLETED or run.is_reference or status.get("host") != host:
                continue
            if not str(status.get("device", "")).startswith(device) or (threads and status.get("threads") != threads):
                continue
            speed = _speed_of(run, status, config)
        except (RunError, OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
            continue  # a damaged or unusual run folder: look at the next
        if speed is not None:
            return speed
    return None


def _speed_of(run: Run, status: dict, config: TrainConfig) -> Speed | None:
    timing = run.timing()
    if timing is None:
        return None
    return Speed(
        model=config.model, image_size=config.image_size, device=str(status.get("device", "cpu")).split(":")[0],
        threads=int(status.get("threads") or 0), train_seconds_per_image=timing["train_seconds"] / timing["train_images"],
        # the rest of the run's time (loading, validation, testing, checkpoints) per image evaluated
        eval_seconds_per_image=timing["other_seconds"] / timing["evaluated_images"],
        measured_unix=float(status.get("heartbeat_unix") or time.time()), batch_size=config.batch_size, source=f"run {run.id}",
    )


def speed_for(config: TrainConfig, runs: Iterable[Run] = (), measure: bool = True, budget_seconds: float = 2.0) -> Speed | None:
    """The speed to estimate `config` with: a finished run's on this machine if there is one
    (a cached measurement that disagrees with it by more than DISAGREE_FACTOR is dropped, so it
    is measured again when next needed), else the cached measurement unless it is stale, else a
    new measurement; with measure=False, None instead of measuring."""
    device = resolve_device(config.device).type
    observed = observed_speed(runs, config.model, config.image_size, config.batch_size, device)
    key = _cache_key(config.model, config.image_size, config.batch_size, device, _threads_used(config.threads, device))
    cached = _read_cache(key)
    if observed is not None:
        if cached is not None and not _agrees(cached, observed):
            _drop_cache(key)
        return observed
    if not measure:
        return cached if cached is not None and time.time() - cached.measured_unix < STALE_SECONDS else None
    return _load_or_measure(config.model, config.image_size, config.batch_size, device, config.threads, budget_seconds, False)[0]


def _agrees(measured: Speed, observed: Speed) -> bool:
    ratio = measured.train_seconds_per_image / max(observed.train_seconds_per_image, 1e-12)
    return 1 / DISAGREE_FACTOR <= ratio <= DISAGREE_FACTOR


def _threads_used(threads: int, device: str) -> int:
    if device != "cpu":
        return torch.get_num_threads()
    return threads or max(1, os.cpu_count() or 1)


def _drop_cache(key: str) -> None:
    path = cache_root() / "speed.json"
    cache = read_json(path, {})
    if isinstance(cache, dict) and cache.pop(key, None) is not None:
        atomic_write_json(path, cache)


# ---- estimate


def estimate_run(
    config: TrainConfig, split_sizes: dict[str, int], decoded: bool = True, speed: Speed | None = None,
) -> TimeEstimate:
    """Seconds a run of `config` takes on this machine with `split_sizes` images in its train, val
    and test splits; `decoded` says the images are already in the decoded-image cache. Without
    `speed`, it is measured (or read from the cache) for the config's model, size, device and threads.
    Early stopping (patience) can only make a run shorter than this."""
    cached = False
    if speed is None:
        device = resolve_device(config.device).type
        speed, cached = _load_or_measure(config.model, config.image_size, config.batch_size, device, config.threads, 2.0, False)
    n_train, n_val, n_test = (int(split_sizes.get(name, 0)) for name in ("train", "val", "test"))
    steps_per_epoch = max(1, math.ceil(n_train / config.batch_size))
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    # whole epochs, then the steps of an epoch cut short by max_steps (each full batches, until the split ends)
    full_epochs, steps_left = divmod(total_steps, steps_per_epoch)
    images = full_epochs * n_train + min(steps_left * config.batch_size, n_train)
    epochs_run = math.ceil(total_steps / steps_per_epoch)  # a run cut by max_steps still validates its last epoch
    eval_batch = max(EVAL_BATCH_MIN, config.batch_size)
    train_seconds = speed.train_seconds(images, total_steps)
    eval_seconds = epochs_run * speed.eval_seconds(n_val, eval_batch) + speed.eval_seconds(n_test, eval_batch)
    if get_spec(config.model).fit is not None:
        # a classical detector: one pass of its feature extractor over every image (what its
        # forward pass costs) and a linear fit on them, which is short beside it
        train_seconds = 0.0
        eval_seconds = speed.eval_seconds(n_train + n_val + n_test, eval_batch)
    decode_seconds = 0.0 if decoded else (n_train + n_val + n_test) * DECODE_SECONDS_PER_IMAGE
    return TimeEstimate(
        train_seconds=train_seconds, eval_seconds=eval_seconds, decode_seconds=decode_seconds,
        total_seconds=train_seconds + eval_seconds + decode_seconds, speed=speed, cached=cached,
    )


def estimate_runs(configs: Iterable[TrainConfig], split_sizes: dict[str, int], decoded: bool = True,
                  speeds: Iterable[Speed] | None = None) -> TimeEstimate:
    """The estimate of several runs trained one after the other ("Train all four"): their sums,
    images decoded once (the first run leaves them in the cache). `speeds` in `configs` order."""
    configs = list(configs)
    speeds = list(speeds) if speeds is not None else [None] * len(configs)
    parts = [estimate_run(c, split_sizes, decoded=decoded or i > 0, speed=s) for i, (c, s) in enumerate(zip(configs, speeds))]
    slowest = max(parts, key=lambda p: p.total_seconds)
    # the range of the least certain part: one measured speed among finished-run speeds widens it
    speed = next((p.speed for p in parts if not p.from_run), slowest.speed)
    return TimeEstimate(
        train_seconds=sum(p.train_seconds for p in parts), eval_seconds=sum(p.eval_seconds for p in parts),
        decode_seconds=sum(p.decode_seconds for p in parts), total_seconds=sum(p.total_seconds for p in parts),
        speed=speed, cached=all(p.cached for p in parts),
    )
