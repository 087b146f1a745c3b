"""The training engine: trains one run in this process and writes everything into its folder.

Fixes the original loop's bugs: the loss gets raw logits (no softmax before CrossEntropyLoss), the
heads have 2 classes, the optimizer is created once (its state is kept and resumed), and
evaluation runs in eval mode without autograd.
"""

from __future__ import annotations

import csv
import io
import math
import os
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .augment import BatchAugmenter
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .dataset import load_dataset, require_trainable, split_ids
from .evaluation import classification_metrics, predict_logits, prob_fake_from_logits
from .models import build_model, get_spec
from .runs import (
    COMPLETED, DIVERGED, FAILED, HEARTBEAT_SECONDS, INTERRUPTED, RUNNING, STOPPED,
    Run, RunError, RunStore, atomic_write_json, atomic_write_text, now_iso, own_process_identity,
)
from .settings import CLASSES

ProgressFn = Callable[[str, dict], None]

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


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that is missing is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but no CUDA GPU is available: use device=auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device=mps was asked for but Apple's MPS is not available: use device=auto or cpu")
    return torch.device(name)


def configure_threads(threads: int, share: int = 1) -> int:
    """Use `threads` CPU threads for torch (0 = this process's share of the cores, when `share`
    trainers run side by side); returns the number set."""
    n = threads or max(1, (os.cpu_count() or 1) // max(1, share))
    torch.set_num_threads(n)
    return n


def _autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    on = config.mixed_precision == "on" or (config.mixed_precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if on else None


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


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.momentum > 0)


class Trainer:
    """Trains `run` (whose folder holds the config) in this process."""

    def __init__(self, run: Run, progress: ProgressFn | None = None, resume: bool = False, cpu_share: int = 1):
        self.run = run
        self.cpu_share = cpu_share  # trainers running side by side: threads=0 takes 1/cpu_share of the cores
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
        except (_StopTraining, KeyboardInterrupt):
            self._finish(STOPPED, f"stopped at step {self.step} as asked", started)
        except _Diverged as exc:
            run.append_metrics({"kind": "event", "event": "diverged", "step": exc.step, "time": time.time()})
            self._finish(DIVERGED, str(exc), started, hint=DIVERGENCE_HINT)
        except BaseException as exc:
            atomic_write_text(run.path / "error.txt", traceback.format_exc())
            run.write_status(FAILED, message=f"{type(exc).__name__}: {exc}", ended=now_iso())
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
        self.threads = configure_threads(config.threads, self.cpu_share) if self.device.type == "cpu" else torch.get_num_threads()
        self.autocast_dtype = _autocast_dtype(config, self.device)
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
            atomic_write_json(split_path, {**split, "data": str(self.data.root), "seed": config.seed, "fractions": list(config.split)})
        self.split_idx = {name: self.data.indices_of(split[name]) for name in ("train", "val", "test")}
        train_idx = self.split_idx["train"]
        # the train split lives on the training device as uint8: one upload, augmented there
        self.train_images = torch.from_numpy(np.ascontiguousarray(self.data.images[train_idx])).to(self.device)
        self.train_labels = torch.from_numpy(self.data.labels[train_idx]).to(self.device)

        spec = get_spec(config.model)
        self.model = build_model(config.model, pretrained=config.pretrained).to(self.device)
        self.optimizer = _make_optimizer(config, self.model)
        self.steps_per_epoch = max(1, math.ceil(len(train_idx) / config.batch_size))
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(config, self.steps_per_epoch, self.total_steps))
        self.augmenter = BatchAugmenter(config.augment, seed=config.seed, device=self.device)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.step, self.start_epoch = 0, 0
        self.best_val_loss, self.epochs_without_better = math.inf, 0
        if self.resume:
            self._load_last()
        run.write_status(
            RUNNING, phase="training", device=str(self.device), threads=self.threads, parameters=spec.parameter_count,
            steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
            train_images=len(train_idx), epoch=self.start_epoch, step=self.step,
        )
        self.progress("start", {"total_steps": self.total_steps, "step": self.step, "device": str(self.device)})

    def _load_last(self) -> None:
        state_path = self.run.path / "last_state.pt"
        if not state_path.is_file():
            self.run.append_metrics({"kind": "resume", "step": 0, "epoch": 0, "time": time.time()})
            return  # interrupted before the first epoch ended: start again from scratch
        model, _ = load_checkpoint(self.run.path / "last.safetensors", device=self.device)
        self.model.load_state_dict(model.state_dict())
        state = torch.load(state_path, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.augmenter.load_state_dict({"generator": state["augment_rng"].cpu()})
        torch.set_rng_state(state["torch_rng"].cpu())
        self.step, self.start_epoch = int(state["step"]), int(state["epoch"])
        self.best_val_loss = float(state["best_val_loss"])
        self.epochs_without_better = int(state["epochs_without_better"])
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.run.append_metrics({"kind": "resume", "step": self.step, "epoch": self.start_epoch, "time": time.time()})

    # ---- the loop

    def _train_epochs(self) -> None:
        config = self.config
        smoothed = None
        for epoch in range(self.start_epoch, config.epochs):
            if self.step >= self.total_steps:
                break
            self.model.train()
            epoch_start, seen, loss_sum, correct = time.time(), 0, 0.0, 0
            # a fresh permutation per epoch from (seed, epoch): the same order after a resume
            order = torch.randperm(len(self.train_labels), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
            for start in range(0, len(order), config.batch_size):
                if self.run.stop_requested():
                    raise _StopTraining()
                idx = order[start : start + config.batch_size].to(self.device)
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                loss, logits, grad_norm = self._train_step(self.train_images[idx], self.train_labels[idx])
                self.step += 1
                loss_value = float(loss)
                if not math.isfinite(loss_value) or not math.isfinite(grad_norm):
                    raise _Diverged(self.step, f"loss {loss_value}, gradient norm {grad_norm} (not finite)")
                smoothed = loss_value if smoothed is None else 0.9 * smoothed + 0.1 * loss_value
                if smoothed > DIVERGENCE_LOSS:
                    raise _Diverged(self.step, f"smoothed loss {smoothed:.3g} (chance level is 0.69)")
                seen += len(idx)
                loss_sum += loss_value * len(idx)
                correct += int((logits.argmax(1) == self.train_labels[idx]).sum())
                if self.step % config.log_every == 0 or self.step == self.total_steps:
                    row = {
                        "kind": "step", "step": self.step, "epoch": epoch + start / len(order),
                        "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                        "time": time.time(),
                    }
                    self.run.append_metrics(row)
                    self.progress("step", {**row, "total_steps": self.total_steps})
                if self.step >= self.total_steps:
                    break
            train_seconds = time.time() - epoch_start
            self._end_epoch(epoch, seen, loss_sum, correct, train_seconds)
            if config.patience and self.epochs_without_better >= config.patience:
                self.run.append_metrics({"kind": "event", "event": "early_stop", "step": self.step, "epoch": epoch + 1, "time": time.time()})
                break

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        x = self.augmenter(images)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            logits = self.model(x)
            loss = self.loss_fn(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if math.isfinite(grad_norm):
            self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), logits.detach(), grad_norm

    def _evaluate(self, split: str) -> tuple[dict[str, Any], np.ndarray, float]:
        idx = self.split_idx[split]
        logits = predict_logits(self.model, self.data.images, idx, batch_size=max(64, self.config.batch_size),
                                device=self.device, autocast_dtype=self.autocast_dtype)
        labels = self.data.labels[idx]
        loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(labels))) if len(idx) else math.nan
        probs = prob_fake_from_logits(logits)
        return classification_metrics(labels, probs), probs, loss

    def _end_epoch(self, epoch: int, seen: int, loss_sum: float, correct: int, train_seconds: float) -> None:
        val, _, val_loss = self._evaluate("val")
        row = {
            "kind": "epoch", "epoch": epoch + 1, "step": self.step,
            "train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
            "val_loss": val_loss, "val_acc": val["accuracy"], "val_balanced_acc": val["balanced_accuracy"],
            "val_roc_auc": val["roc_auc"], "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": seen / max(train_seconds, 1e-9), "epoch_seconds": train_seconds,
            "elapsed": self.elapsed_before + time.time() - self.fit_started, "time": time.time(),
        }
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.epochs_without_better = val_loss, 0
        else:
            self.epochs_without_better += 1
        meta = self._checkpoint_meta(epoch + 1, row)
        save_checkpoint(self.run.path / "last", self.model, meta)
        if improved:
            save_checkpoint(self.run.path / "best", self.model, meta)
        torch.save({
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "augment_rng": self.augmenter.state_dict()["generator"], "torch_rng": torch.get_rng_state(),
            "step": self.step, "epoch": epoch + 1, "best_val_loss": self.best_val_loss,
            "epochs_without_better": self.epochs_without_better, "elapsed": row["elapsed"],
        }, self.run.path / ".last_state.pt.tmp")
        os.replace(self.run.path / ".last_state.pt.tmp", self.run.path / "last_state.pt")
        # the epoch row goes last: a reader that sees it can rely on its checkpoint being on disk
        self.run.append_metrics(row)
        self.run.write_status(RUNNING, epoch=epoch + 1, step=self.step)
        self.progress("epoch", row)

    def _checkpoint_meta(self, epoch: int, metrics: dict) -> dict[str, Any]:
        return {
            "model": self.config.model, "image_size": self.config.image_size, "epoch": epoch, "step": self.step,
            "run": self.run.id, "config": self.config.to_dict(),
            "metrics": {k: v for k, v in metrics.items() if k.startswith("val_") or k.startswith("train_")},
        }

    # ---- the end

    def _finish(self, state: str, message: str, started: float, hint: str = "") -> None:
        run = self.run
        test = None
        if (run.path / "best.safetensors").is_file() and hasattr(self, "split_idx"):
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
        self.model = model
        metrics, probs, loss = self._evaluate("test")
        metrics.update(loss=loss, best_epoch=meta.get("epoch"), checkpoint="best")
        ids = [self.data.ids[i] for i in self.split_idx["test"]]
        labels = self.data.labels[self.split_idx["test"]]
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["id", "label", "prob_fake", "predicted"])
        for image_id, label, p in zip(ids, labels, probs):
            writer.writerow([image_id, CLASSES[int(label)], f"{p:.6f}", CLASSES[0] if p >= 0.5 else CLASSES[1]])
        atomic_write_text(self.run.path / "test_predictions.csv", buffer.getvalue())
        atomic_write_json(self.run.path / "test_metrics.json", metrics)
        return metrics


def train(config: TrainConfig, runs_dir: str | Path | None = None, progress: ProgressFn | None = None) -> Run:
    """Create a run for `config` under `runs_dir` and train it here; returns the finished run
    (its status says completed, stopped, diverged or failed)."""
    config = config.replace(data=str(Path(config.data).expanduser().resolve())) if config.data else config
    run = RunStore(runs_dir).create(config)
    return Trainer(run, progress).fit()


RESUMABLE = (INTERRUPTED, STOPPED, FAILED)


def resume(run: Run, progress: ProgressFn | None = None) -> Run:
    """Continue an interrupted, stopped or failed run from its last checkpoint."""
    state = run.state
    if state not in RESUMABLE:
        raise RunError(f"run {run.id} is {state}; only {', '.join(RESUMABLE)} runs can be resumed")
    (run.path / "stop").unlink(missing_ok=True)
    return Trainer(run, progress, resume=True).fit()


def stop_on_sigterm() -> None:
    """Turn SIGTERM into a KeyboardInterrupt, so a terminated trainer ends its run as stopped."""

    def handler(signum, frame):
        raise KeyboardInterrupt()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
