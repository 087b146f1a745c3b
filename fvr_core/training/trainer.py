"""The training engine: trains one run in this process and writes everything into its folder.

Fixes the original loop's bugs: the loss gets raw logits (no softmax before CrossEntropyLoss), the
heads have 2 classes, the optimizer is created once (its state is kept and resumed), and
evaluation runs in eval mode without autograd.
"""

from __future__ import annotations

import errno
import math
import shutil
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from safetensors import safe_open
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fvr_core.training import distributed
from fvr_core.data.augment import BatchAugmenter, normalize, random_crop
from fvr_core.inference.calibration import calibration_from_logits, save_calibration
from fvr_core.runs.checkpoint import is_reconstructed_cnn, load_checkpoint, load_training_state, save_checkpoint
from fvr_core.config import TrainConfig
from fvr_core.training.devices import autocast_dtype, configure_threads, resolve_device, use_channels_last
from fvr_core.data.dataset import load_dataset, per_source_recall, require_trainable, resolve_sources, split_ids
from fvr_core.inference.evaluation import classification_metrics, predict_logits, prob_fake_from_logits
from fvr_core.training.signals import Terminated
from fvr_core.models.registry import build_model, get_spec
from fvr_core.runs.store import (COMPLETED, DIVERGED, FAILED, HEARTBEAT_SECONDS, PRUNED, RESUMABLE, RUNNING, STOPPED, Run,
                                  RunError, RunStore, own_process_identity)
from fvr_core.files import atomic_file, atomic_write_json, atomic_write_text, crash_point, now_iso
from fvr_core.settings import CLASSES

ProgressFn = Callable[[str, dict], None]

# On a GPU, reading a loss on the host waits for the queued kernels: the loop reads (logs, checks
# stop requests and divergence) at most this often. On a CPU the read is free and every step counts.
GPU_CHECK_SECONDS = 0.1
DIVERGENCE_LOSS = 20.0  # a smoothed 2-class cross-entropy this high (chance is 0.69) means the weights blew up
DIVERGENCE_HINT = (
    "lower the learning rate (try a tenth of it), clip gradients (grad_clip 1.0), "
    "or use a model with batch norm such as vgg19_bn"
)


class _StopTraining(Exception):
    pass


class _Diverged(Exception):
    def __init__(self, step: int, what: str):
        super().__init__(f"training diverged at step {step}: {what}")
        self.step = step


def _lr_factor(config: TrainConfig, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if config.schedule == "onecycle" and warmup == 0:
        warmup = int(0.3 * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / max(1, warmup)
        if config.schedule == "none":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# select_metric -> the epoch row's key; every score is "higher is better"
_SELECT_KEYS = {"val_loss": "val_loss", "val_balanced_accuracy": "val_balanced_acc", "val_roc_auc": "val_roc_auc"}


def selection_score(row: dict[str, Any], metric: str) -> tuple[float, float]:
    """How good an epoch is for choosing the best checkpoint: (the chosen validation metric, higher
    is better; minus the validation loss), compared as a tuple so ties go to the lower loss. A
    metric that could not be computed (None, NaN) ranks below every real value."""
    loss = row["val_loss"]
    neg_loss = -loss if loss is not None and math.isfinite(loss) else -math.inf
    if metric == "val_loss":
        return (neg_loss, neg_loss)
    value = row.get(_SELECT_KEYS[metric])
    return (value if value is not None and math.isfinite(value) else -math.inf, neg_loss)


def class_loss_weights(mode: str, train_labels: np.ndarray) -> torch.Tensor | None:
    """Cross-entropy weight per class: None for 'none'; for 'balanced', n / (classes * n_class)
    over the training split, so each class contributes equally to the loss whatever its share
    (CrossEntropyLoss then averages over the batch's summed weights)."""
    if mode == "none":
        return None
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=len(CLASSES)).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(CLASSES) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _weight_average(model: nn.Module, decay: float) -> nn.Module:
    """torch's exponential moving average of `model`'s weights, batch-norm statistics included
    (use_buffers: the average's own statistics would otherwise need a pass over the data)."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _make_optimizer(config: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if device.type == "cuda" else {}  # one kernel for the whole update
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **fused)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.momentum > 0)


class Trainer:
    """Trains `run` (whose folder holds the config) in this process."""

    def __init__(
        self, run: Run, progress: ProgressFn | None = None, resume: bool = False, cpu_share: int = 1,
        dist: distributed.DistContext = distributed.SINGLE,
    ):
        self.run = run
        self.cpu_share = cpu_share  # trainers running side by side: threads=0 takes 1/cpu_share of the cores
        self.dist = dist  # under torchrun: this process's rank (only rank 0's run folder is kept)
        self.config = run.config.validate()
        self.progress = progress or (lambda event, info: None)
        self.resume = resume
        self._heartbeat_stop = threading.Event()
        self.step = 0
        self.fit_started = time.time()
        self.elapsed_before = 0.0  # training seconds of earlier processes, when resumed

    # ---- the whole run

    def fit(self) -> Run:
        run = self.run
        started = self.fit_started = time.time()
        run.write_status(RUNNING, started=now_iso(), phase="loading data", message="", hint="", **own_process_identity())
        heartbeat = threading.Thread(target=self._beat, daemon=True)
        heartbeat.start()
        try:
            self._setup()
            self._train_epochs()
            self._finish(COMPLETED, "", started)
        except (_StopTraining, KeyboardInterrupt) as exc:
            asked = run.stop_request()  # a search's pruner says "pruned" and at which epoch
            state = asked.get("state") if asked.get("state") in (STOPPED, PRUNED) else STOPPED
            why = "the process was sent SIGTERM" if isinstance(exc, Terminated) else "as asked"
            # on SIGTERM the platform's grace period is short: no test pass, the run is resumed later
            self._finish(state, asked.get("message") or f"stopped at step {self.step}, {why}; resume it to go on", started,
                         test=not isinstance(exc, Terminated))
        except _Diverged as exc:
            run.append_metrics({"kind": "event", "event": "diverged", "step": exc.step, "time": time.time()})
            self._finish(DIVERGED, str(exc), started, hint=DIVERGENCE_HINT)
        except BaseException as exc:
            try:
                atomic_write_text(run.path / "error.txt", traceback.format_exc())
            except OSError:  # e.g. the disk is full: the status below matters more
                pass
            run.write_status(FAILED, **_failure(exc, run), ended=now_iso())
            raise
        finally:
            self._heartbeat_stop.set()
            heartbeat.join()  # a daemon thread left running at exit can abort the interpreter
        return run

    def _beat(self) -> None:
        while not self._heartbeat_stop.wait(HEARTBEAT_SECONDS):
            self.run.heartbeat()

    # ---- setup

    def _setup(self) -> None:
        run, config = self.run, self.config
        self.device = resolve_device(config.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.threads = configure_threads(config.threads, self.cpu_share) if self.device.type == "cpu" else torch.get_num_threads()
        self.autocast_dtype = autocast_dtype(config, self.device)
        torch.manual_seed(config.seed)
        self.progress("phase", {"phase": "loading data"})
        self.data = load_dataset(config.data, config.image_size, progress=lambda d, t: self.progress("decode", {"done": d, "total": t}))
        atomic_write_json(run.path / "data_report.json", self.data.report.to_dict())
        require_trainable(self.data)
        split_path = run.path / "split.json"
        if self.resume and split_path.is_file():
            split = run.split()
        else:
            split = split_ids(self.data, config.split, config.seed)
            atomic_write_json(split_path, {**split, "data": self.data.report.root, "seed": config.seed, "fractions": list(config.split)})
        self.split_idx = {name: self.data.indices_of(split[name]) for name in ("train", "val", "test")}
        train_idx = self.split_idx["train"]
        # the train split lives on the training device as uint8: one upload, augmented there
        self.train_images = torch.from_numpy(np.ascontiguousarray(self.data.images[train_idx])).to(self.device)
        self.train_labels = torch.from_numpy(self.data.labels[train_idx]).to(self.device)

        spec = get_spec(config.model)
        self.model = build_model(config.model, pretrained=config.pretrained).to(self.device)
        if use_channels_last(config, self.device):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = _make_optimizer(config, self.model, self.device)
        # what is validated, selected and saved: the weights' moving average when asked, else the weights
        self.ema_model = _weight_average(self.model, config.ema) if config.ema and spec.fit is None else None
        shard_size = math.ceil(len(train_idx) / self.dist.world_size)
        self.steps_per_epoch = max(1, math.ceil(shard_size / config.batch_size))
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        if spec.fit is not None:  # a classical detector: one fit, reported as one step of one epoch
            self.steps_per_epoch = self.total_steps = 1
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(config, self.steps_per_epoch, self.total_steps))
        # each process augments with its own random stream
        self.augmenter = BatchAugmenter(config.augment, seed=config.seed + 7919 * self.dist.rank, device=self.device)
        self.loss_fn = nn.CrossEntropyLoss(weight=class_loss_weights(config.class_weights, self.data.labels[train_idx]),
                                           label_smoothing=config.label_smoothing).to(self.device)
        self.step, self.start_epoch = 0, 0
        self.best_val_loss, self.epochs_without_better = math.inf, 0
        self.best_score: tuple[float, float] = (-math.inf, -math.inf)  # (select_metric, -val_loss) of the best epoch
        if self.resume:
            self._load_last()
        self.train_model = self._wrap_for_training(self.model)
        run.write_status(
            RUNNING, phase="training", device=str(self.device), threads=self.threads, parameters=spec.parameter_count,
            steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
            train_images=len(train_idx), epoch=self.start_epoch, step=self.step,
        )
        self.progress("start", {"total_steps": self.total_steps, "step": self.step, "device": str(self.device)})

    @property
    def scored_model(self) -> nn.Module:
        """The model validation, checkpoints and the test see: the moving average of the weights
        when config.ema is on, else the trained weights themselves."""
        return self.model if self.ema_model is None else self.ema_model.module

    def _wrap_for_training(self, model: nn.Module) -> nn.Module:
        """The module the training steps call: DDP under torchrun (it averages gradients and starts
        every process from rank 0's weights), compiled if asked. It shares its parameters with
        self.model, which evaluation and checkpoints use as it is (or its average: scored_model)."""
        if self.dist.enabled:
            model = nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.config.compile:
            self.progress("phase", {"phase": "compiling the model"})
            model = torch.compile(model)
        return model

    def _load_last(self) -> None:
        """Continue from last_state.pt, what the last process committed at its last epoch's end. A
        killed process can have left more (temporary files, a half-written metrics row, last.* or
        best.* of an epoch it did not finish): those are cleared or written again by this one."""
        for tmp in self.run.path.glob(".*.tmp"):
            if not tmp.name.startswith(".status.json."):  # a launcher may be writing that one
                tmp.unlink(missing_ok=True)
        self.run.end_partial_metrics_line()
        state_path = self.run.path / "last_state.pt"
        if not state_path.is_file():
            self.run.append_metrics({"kind": "resume", "step": 0, "epoch": 0, "time": time.time()})
            return  # interrupted before the first epoch ended: start again from scratch
        state = load_training_state(state_path, self.device)
        if "model" in state:  # the weights of the same epoch as the optimizer state
            self.model.load_state_dict(state["model"])
        else:  # written before the weights were kept in it
            model, _ = load_checkpoint(self.run.path / "last.safetensors", device=self.device)
            self.model.load_state_dict(model.state_dict())
        if self.ema_model is not None and "ema_model" in state:
            self.ema_model.load_state_dict(state["ema_model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._restore_random_state(state)
        self.step, self.start_epoch = int(state["step"]), int(state["epoch"])
        self.best_val_loss = float(state["best_val_loss"])
        # states written before select_metric chose by validation loss alone
        self.best_score = tuple(state.get("best_score", (-self.best_val_loss, -self.best_val_loss)))
        self.epochs_without_better = int(state["epochs_without_better"])
        self.elapsed_before = float(state.get("elapsed", 0.0))
        row = state.get("epoch_row")
        if row and not any(r["epoch"] == row["epoch"] and r["step"] == row["step"] for r in self.run.epoch_rows()):
            self.run.append_metrics(row)  # the last process died after its checkpoint, before this row
            if self.config.patience and self.epochs_without_better >= self.config.patience:
                self.run.append_metrics({"kind": "event", "event": "early_stop", "step": self.step, "epoch": self.start_epoch, "time": time.time()})
        self.run.append_metrics({"kind": "resume", "step": self.step, "epoch": self.start_epoch, "time": time.time()})

    def _random_state(self) -> dict[str, Any]:
        """This process's random streams: augmentation, torch's CPU generator and, on a GPU, its CUDA one."""
        own = {"augment_rng": self.augmenter.state_dict()["generator"], "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            own["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return own

    def _restore_random_state(self, state: dict[str, Any]) -> None:
        """Each process takes back its own streams (rank_rng, written since runs kept every rank's);
        a state from fewer processes, or an older one, gives what it has: rank 0's, or a fresh seed."""
        by_rank = state.get("rank_rng") or [{k: state[k] for k in ("augment_rng", "torch_rng") if k in state}]
        if self.dist.rank >= len(by_rank):
            return  # resumed on more processes than trained: this one keeps its seeded streams
        own = by_rank[self.dist.rank]
        self.augmenter.load_state_dict({"generator": own["augment_rng"].cpu()})
        torch.set_rng_state(own["torch_rng"].cpu())
        if own.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda_rng"].cpu(), self.device)

    # ---- the loop

    def _train_epochs(self) -> None:
        config = self.config
        self._smoothed_loss = None
        self._last_check = 0.0
        if get_spec(config.model).fit is not None:
            self._fit_closed_form()
            return
        for epoch in range(self.start_epoch, config.epochs):
            if self.step >= self.total_steps or (config.patience and self.epochs_without_better >= config.patience):
                break  # (resumed after the last step or an early stop: only the test is left)
            self.train_model.train()
            epoch_start, seen = time.time(), 0
            # sums stay on the device: reading them each step would wait for the GPU every step
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), dtype=torch.long, device=self.device)
            order = self._epoch_order(epoch)
            for start in range(0, len(order), config.batch_size):
                if not self.dist.enabled and self.run.stop_requested():
                    raise _StopTraining()
                idx = order[start : start + config.batch_size]
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                labels = self.train_labels[idx]
                loss, logits, grad_norm = self._train_step(self.train_images[idx], labels)
                self.step += 1
                seen += len(idx)
                loss_sum += loss * len(idx)
                correct += (logits.argmax(1) == labels).sum()
                self._smoothed_loss = loss if self._smoothed_loss is None else 0.9 * self._smoothed_loss + 0.1 * loss
                last = self.step >= self.total_steps or start + config.batch_size >= len(order)
                if self._check_due(last):
                    self._check(epoch + start / len(order), loss, grad_norm, lr)
                crash_point("step")
                if self.step >= self.total_steps:
                    break
            train_seconds = time.time() - epoch_start
            seen_all, loss_all, correct_all = self._epoch_totals(seen, loss_sum, correct)
            if not math.isfinite(loss_all):  # caught here at the latest, before a checkpoint is written
                raise _Diverged(self.step, f"training loss {loss_all} (not finite)")
            self._end_epoch(epoch, seen_all, loss_all, correct_all, train_seconds)
            if config.patience and self.epochs_without_better >= config.patience:
                self.run.append_metrics({"kind": "event", "event": "early_stop", "step": self.step, "epoch": epoch + 1, "time": time.time()})
                break

    def _fit_closed_form(self) -> None:
        """A classical detector (the registry's `fit`): one pass computes its features on the
        training and validation splits and fits its classifier, then the pass ends as an epoch does
        (validation row, checkpoints, state), so testing, calibration and every reader of a run work
        unchanged. Epochs, lr and batch settings do not apply; a resumed run that got past the fit
        has only its test left."""
        if self.start_epoch >= 1:
            return
        started = time.time()
        spec = get_spec(self.config.model)
        summary = spec.fit(
            self.model, self._normalised_batches("train"), self.data.labels[self.split_idx["train"]],
            self._normalised_batches("val"), self.data.labels[self.split_idx["val"]],
            progress=lambda message: self.progress("phase", {"phase": message}),
        )
        # its features are what takes time: the logits it computed on them stand in for another pass
        # (the weights do not change after the fit, and the best checkpoint is this model)
        self._fitted_logits = {"train": summary.pop("train_logits"), "val": summary.pop("val_logits")}
        self.step = 1
        logits = self._logits("train")
        labels = torch.from_numpy(self.data.labels[self.split_idx["train"]])
        loss = float(nn.functional.cross_entropy(logits, labels))
        correct = int((logits.argmax(1) == labels).sum())
        self.run.append_metrics({"kind": "event", "event": "fitted", "step": 1, "time": time.time(), **summary})
        seen = len(labels)
        self._end_epoch(0, seen, loss * seen, correct, time.time() - started)

    def _normalised_batches(self, split: str, batch_size: int = 32) -> Iterator[torch.Tensor]:
        """A split's images as normalised float batches on the training device, one at a time (the
        whole split as floats at 300 px would take gigabytes)."""
        idx = self.split_idx[split]
        for start in range(0, len(idx), batch_size):
            chunk = np.ascontiguousarray(self.data.images[idx[start : start + batch_size]])
            yield normalize(torch.from_numpy(chunk).to(self.device))

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """This process's batches of the epoch, as indices on the device: a fresh permutation per
        epoch from (seed, epoch), the same after a resume and on every process before sharding."""
        order = torch.randperm(len(self.train_labels), generator=torch.Generator().manual_seed(self.config.seed * 1000 + epoch))
        return distributed.shard(order, self.dist).to(self.device, non_blocking=True)

    def _check_due(self, last_of_epoch: bool) -> bool:
        """Whether this step reads the loss on the host: every log_every steps and at an epoch's
        end; on a GPU (alone) also no more often than GPU_CHECK_SECONDS. Under torchrun the rule
        depends on the step only, since every process must take part in the same checks."""
        if self.step % self.config.log_every and not last_of_epoch:
            return False
        if self.device.type == "cpu" or self.dist.enabled or last_of_epoch:
            return True
        now = time.monotonic()
        if now - self._last_check < GPU_CHECK_SECONDS:
            return False
        self._last_check = now
        return True

    def _check(self, epoch: float, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> None:
        """Stop requests, divergence and a step row, at the steps _check_due picks."""
        stop = float(self.dist.is_main and self.run.stop_requested())
        values = torch.stack([loss.float(), self._smoothed_loss.float(), grad_norm.float().to(loss.device),
                              torch.tensor(stop, device=loss.device)])
        if self.dist.enabled:  # the loss averaged over processes; a stop asked of rank 0 stops all
            values = distributed.sum_across(values, self.dist) / torch.tensor([self.dist.world_size] * 3 + [1], device=values.device)
        loss_value, smoothed, norm, stop = (float(v) for v in values.cpu())
        if stop:
            raise _StopTraining()
        if not math.isfinite(loss_value) or not math.isfinite(norm):
            raise _Diverged(self.step, f"loss {loss_value}, gradient norm {norm} (not finite)")
        if smoothed > DIVERGENCE_LOSS:
            raise _Diverged(self.step, f"smoothed loss {smoothed:.3g} (chance level is 0.69)")
        row = {"kind": "step", "step": self.step, "epoch": epoch, "loss": loss_value, "lr": lr, "grad_norm": norm, "time": time.time()}
        self.run.append_metrics(row)
        self.progress("step", {**row, "total_steps": self.total_steps})

    def _epoch_totals(self, seen: int, loss_sum: torch.Tensor, correct: torch.Tensor) -> tuple[int, float, int]:
        """Images, summed loss and correct answers of the epoch over all processes."""
        totals = torch.stack([torch.tensor(float(seen), device=loss_sum.device), loss_sum.float(), correct.float()])
        seen_all, loss_all, correct_all = (float(v) for v in distributed.sum_across(totals, self.dist).cpu())
        return int(seen_all), loss_all, int(correct_all)

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.config.train_crop:  # before the augmenter: its JPEG, blur and crops act on what the model sees
            images = random_crop(images, self.config.train_crop, self.augmenter.generator)
        x = self.augmenter(images)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            logits = self.train_model(x)
            loss = self.loss_fn(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # a non-finite norm is seen at the next check and ends the run as diverged; checking it
        # here would make every step wait for the GPU
        if self.config.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        else:  # the norm for the curves, without clipping's pass over every gradient
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        self.optimizer.step()
        self.scheduler.step()
        if self.ema_model is not None:
            self.ema_model.update_parameters(self.model)
        return loss.detach(), logits.detach(), grad_norm.detach()

    def _logits(self, split: str) -> torch.Tensor:
        if split in getattr(self, "_fitted_logits", {}):
            return self._fitted_logits[split]
        return predict_logits(self.scored_model, self.data.images, self.split_idx[split], batch_size=max(64, self.config.batch_size),
                              device=self.device, autocast_dtype=self.autocast_dtype)

    def _evaluate(self, split: str, logits: torch.Tensor | None = None) -> tuple[dict[str, Any], np.ndarray, float]:
        idx = self.split_idx[split]
        logits = self._logits(split) if logits is None else logits
        labels = self.data.labels[idx]
        loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(labels))) if len(idx) else math.nan
        probs = prob_fake_from_logits(logits)
        return classification_metrics(labels, probs), probs, loss

    def _end_epoch(self, epoch: int, seen: int, loss_sum: float, correct: int, train_seconds: float) -> None:
        val, _, val_loss = self._evaluate("val")
        # every process stops and keeps its best epoch by rank 0's loss: a decision taken on a rank's
        # own loss, a bit off from the others', would leave the rest waiting in an all-reduce
        val_loss = distributed.broadcast_object(val_loss, self.dist)
        row = {
            "kind": "epoch", "epoch": epoch + 1, "step": self.step,
            "train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
            "val_loss": val_loss, "val_acc": val["accuracy"], "val_balanced_acc": val["balanced_accuracy"],
            "val_roc_auc": val["roc_auc"], "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": seen / max(train_seconds, 1e-9), "epoch_seconds": train_seconds,
            "elapsed": self.elapsed_before + time.time() - self.fit_started, "time": time.time(),
        }
        score = selection_score(row, self.config.select_metric)
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_val_loss, self.epochs_without_better = score, val_loss, 0
        else:
            self.epochs_without_better += 1
        meta = self._checkpoint_meta(epoch + 1, row)
        random_state = distributed.all_gather_object(self._random_state(), self.dist)  # every process's streams, in rank order
        save_checkpoint(self.run.path / "last", self.scored_model, meta)
        crash_point("checkpoint")
        if improved:
            save_checkpoint(self.run.path / "best", self.scored_model, meta)
        # last_state.pt commits the epoch: a resume starts from it alone (it holds the weights too, so
        # a process killed between the files above and it never mixes two epochs), and redoes an epoch
        # whose last.* or best.* was written but not committed
        self._save_state({
            "model": self.model.state_dict(),
            **({"ema_model": self.ema_model.state_dict()} if self.ema_model is not None else {}),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            **random_state[0], "rank_rng": random_state,
            "step": self.step, "epoch": epoch + 1, "best_val_loss": self.best_val_loss, "best_score": list(self.best_score),
            "epochs_without_better": self.epochs_without_better, "elapsed": row["elapsed"], "epoch_row": row,
        })
        # the epoch row goes last: a reader that sees it can rely on its checkpoint being on disk
        self.run.append_metrics(row)
        self.run.write_status(RUNNING, epoch=epoch + 1, step=self.step)
        self.progress("epoch", row)

    def _save_state(self, state: dict[str, Any]) -> None:
        with atomic_file(self.run.path / "last_state.pt", crash_before_rename="state") as tmp:
            torch.save(state, tmp)

    def _checkpoint_meta(self, epoch: int, metrics: dict) -> dict[str, Any]:
        return {
            "model": self.config.model, "image_size": self.config.image_size, "epoch": epoch, "step": self.step,
            "run": self.run.id, "config": self.config.to_dict(),
            "metrics": {k: v for k, v in metrics.items() if k.startswith("val_") or k.startswith("train_")},
        }

    # ---- the end

    def _finish(self, state: str, message: str, started: float, hint: str = "", test: bool = True) -> None:
        run = self.run
        tested = test
        test = None
        if tested and (run.path / "best.safetensors").is_file() and hasattr(self, "split_idx"):
            self.progress("phase", {"phase": "testing best checkpoint"})
            run.write_status(RUNNING, phase="testing best checkpoint")
            test = self._test_best()
        fields = {"phase": "", "message": message, "hint": hint, "ended": now_iso(), "train_seconds": round(time.time() - started, 2)}
        if test:
            fields["test_accuracy"] = test["accuracy"]
        run.write_status(state, **fields)
        self.progress("done", {"state": state, "message": message, "test": test})

    def _test_best(self) -> dict[str, Any]:
        model, meta = load_checkpoint(self.run.path / "best.safetensors", device=self.device)
        self.model, self.ema_model = model, None  # best holds the averaged weights already, when averaging
        test_logits = self._logits("test")
        metrics, probs, loss = self._evaluate("test", test_logits)
        metrics.update(loss=loss, best_epoch=meta.get("epoch"), checkpoint="best", selected_by=self.config.select_metric)
        metrics["per_source"] = per_source_recall(self.data, self.split_idx["test"], probs)
        self.run.write_test_predictions([self.data.ids[i] for i in self.split_idx["test"]],
                                        self.data.labels[self.split_idx["test"]], probs)
        crash_point("test")
        atomic_write_json(self.run.path / "test_metrics.json", metrics)
        self._calibrate(test_logits)
        return metrics

    def _calibrate(self, test_logits: torch.Tensor) -> None:
        """Fit the best checkpoint's temperature on the validation split (and measure it on the
        test split), so predictions report calibrated probabilities."""
        val, test = self.split_idx["val"], self.split_idx["test"]
        calibration = calibration_from_logits(self._logits("val").numpy(), self.data.labels[val],
                                              test_logits.numpy(), self.data.labels[test])
        save_calibration(self.run, calibration)


def _failure(exc: BaseException, run: Run) -> dict[str, str]:
    """The message and hint of a failed run's status."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return {
            "message": f"the disk is full (no space left to write in {run.path}): the run stopped, "
                       "its last complete checkpoint is kept",
            "hint": f"free space on the disk of {run.path.parent} (delete runs you no longer need, or the image "
                    "cache), then resume the run: it goes on from its last complete epoch",
        }
    return {"message": f"{type(exc).__name__}: {exc}", "hint": ""}


def train(config: TrainConfig, runs_dir: str | Path | None = None, progress: ProgressFn | None = None,
          on_created: Callable[[Run], None] | None = None) -> Run:
    """Create a run for `config` under `runs_dir` and train it here; returns the finished run
    (its status says completed, stopped, diverged or failed). `on_created` is called with the new
    run before training starts (on rank 0 only). Under torchrun, every process calls this with the
    same arguments and they train one run together (see distributed.py)."""
    config = config.replace(data=resolve_sources(config.data)) if config.data else config
    context = distributed.from_environment()
    if not context.enabled:
        run = RunStore(runs_dir).create(config)
        if on_created:
            on_created(run)
        return Trainer(run, progress).fit()
    distributed.init(context)
    try:
        run = RunStore(runs_dir).create(config) if context.is_main else None
        if run is not None and on_created:
            on_created(run)
        run_path = distributed.broadcast_object(str(run.path) if run else None, context)
        config = TrainConfig.from_dict(distributed.broadcast_object(config.to_dict(), context))
        with _scratch_run_unless_main(context, run_path, config=config) as own:
            Trainer(own, progress if context.is_main else None, dist=context).fit()
        return Run(Path(run_path))  # rank 0's folder (other nodes may not see it)
    finally:
        distributed.shutdown()


@contextmanager
def _scratch_run_unless_main(context: distributed.DistContext, run_path: str, config: TrainConfig | None = None,
                             copy_from: Path | None = None) -> Iterator[Run]:
    """The run this process writes: the real one on rank 0, else a private scratch folder (a new
    run of `config`, or a copy of `copy_from` to resume), removed at the end."""
    if context.is_main:
        yield Run(Path(run_path))
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"fvr-rank{context.rank}-"))
    try:
        if copy_from is not None:
            shutil.copytree(copy_from, scratch / copy_from.name, ignore=shutil.ignore_patterns("claimed", "*.tmp"))
            yield Run(scratch / copy_from.name)
        else:
            yield RunStore(scratch).create(config)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _trained_as_reconstructed_cnn(folder: Path) -> bool:
    for name in ("last.safetensors", "best.safetensors"):
        if (folder / name).is_file():
            with safe_open(str(folder / name), framework="pt") as weights:
                if "features.0.weight" in weights.keys():
                    first = weights.get_slice("features.0.weight").get_shape()
                    return is_reconstructed_cnn({"features.0.weight": torch.empty(first, device="meta")})
    return False


def resume(run: Run, progress: ProgressFn | None = None) -> Run:
    """Continue an interrupted, stopped or failed run from its last checkpoint. Under torchrun
    every process needs to read the run folder (one node, or a shared filesystem). A reference
    run, or in demo mode any run (a visitor resumes their own through the dashboard), is refused."""
    run.check_may_change("resume")
    state = run.state
    if state not in RESUMABLE:
        raise RunError(f"run {run.id} is {state}; only {', '.join(RESUMABLE)} runs can be resumed")
    if run.config.model == "cnn" and _trained_as_reconstructed_cnn(run.path):
        raise RunError(
            f"run {run.id} was trained with fvr's earlier CNN (now `cnn_v0`), and `cnn` is now the write-up's model, so "
            "it cannot be resumed. Its checkpoints still load and predict (as cnn_v0); train a new run to go on")
    context = distributed.from_environment()
    if not context.enabled:
        (run.path / "stop").unlink(missing_ok=True)
        return Trainer(run, progress, resume=True).fit()
    distributed.init(context)
    try:
        if context.is_main:
            (run.path / "stop").unlink(missing_ok=True)
        distributed.barrier(context)  # every process copies the folder before rank 0 writes to it
        with _scratch_run_unless_main(context, str(run.path), copy_from=run.path) as own:
            distributed.barrier(context)
            Trainer(own, progress if context.is_main else None, resume=True, dist=context).fit()
        return run
    finally:
        distributed.shutdown()
