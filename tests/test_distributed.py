"""Training under torchrun: two CPU processes with the gloo backend train one run together, each
on its own share of the batches, and only rank 0 writes the run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from fvr_core.training.distributed import DistContext, shard


def test_shards_are_disjoint_equal_and_cover_the_epoch():
    order = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    parts = [shard(order, DistContext(rank, 3, rank)) for rank in range(3)]
    assert {len(p) for p in parts} == {4}  # padded to 12: every process takes the same steps
    assert set(torch.cat(parts).tolist()) == set(order.tolist())
    assert len(torch.cat(parts)) - len(set(torch.cat(parts).tolist())) == 1  # one entry repeated as padding
    assert torch.equal(shard(order, DistContext()), order)


@pytest.mark.slow
def test_two_gloo_processes_train_one_run(demo_data, tmp_path):
    runs, scratch = tmp_path / "runs", tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "fvr_core", "train", "--data", str(demo_data), "--model", "tiny_cnn", "--epochs", "2", "--image-size", "48",
        "--batch-size", "8", "--threads", "1", "--device", "cpu", "--runs-dir", str(runs),
    ]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]  # one run, written by rank 0 only
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed"
    # 48 training images split over 2 processes: 24 each, 3 batches of 8 per epoch
    assert status["train_images"] == 48 and status["steps_per_epoch"] == 3 and status["total_steps"] == 6
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2]
    assert (run_dir / "best.safetensors").is_file() and (run_dir / "test_metrics.json").is_file()
    assert not list(scratch.glob("fvr-rank*"))  # rank 1's scratch run folder is gone
    assert result.stdout.count("completed") == 1  # rank 0 reports, rank 1 stays quiet


def torchrun(args: list[str], tmp_path, script: str | None = None, timeout: float = 300, **env_changes) -> subprocess.CompletedProcess:
    """`python -m fvr_core ARGS` (or `script` ARGS) in 2 gloo processes on the CPU."""
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1", **env_changes}
    target = [script] if script else ["-m", "fvr_core"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *target, *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def train_args(data, runs, *more: str) -> list[str]:
    return ["train", "--data", str(data), "--model", "tiny_cnn", "--image-size", "48", "--threads", "1", "--device", "cpu",
            "--runs-dir", str(runs), *more]


def only_run(runs):
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    return run_dir


@pytest.mark.slow
def test_gradients_are_averaged_across_processes(demo_data, tmp_path):
    """One SGD step on 2 processes with 8 images each leaves the weights a single process gets from
    one step on the 16 images together: DDP averages the gradients (a rank stepping on its own
    would give a step on 8 images)."""
    from fvr_core.config import TrainConfig
    from fvr_core.training.trainer import train

    one_step = ["--max-steps", "1", "--optimizer", "sgd", "--momentum", "0", "--weight-decay", "0", "--lr", "0.5",
                "--augment", "none", "--epochs", "1"]
    result = torchrun(train_args(demo_data, tmp_path / "ddp", "--batch-size", "8", *one_step), tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ddp = load_file(only_run(tmp_path / "ddp") / "last.safetensors")

    config = dict(data=str(demo_data), model="tiny_cnn", image_size=48, threads=1, device="cpu", max_steps=1,
                  optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=0.5, augment="none", epochs=1)
    whole = load_file(train(TrainConfig(**config, batch_size=16), runs_dir=tmp_path / "one").path / "last.safetensors")
    half = load_file(train(TrainConfig(**config, batch_size=8), runs_dir=tmp_path / "half").path / "last.safetensors")
    assert ddp.keys() == whole.keys()
    for name in ddp:
        torch.testing.assert_close(ddp[name], whole[name], atol=1e-6, rtol=1e-5, msg=f"{name} differs from one process on 16 images")
    # the check can tell: a step on rank 0's 8 images alone moves the weights elsewhere
    assert max(float((half[k] - whole[k]).abs().max()) for k in whole) > 1e-4


DISAGREEING_RANKS = """
import sys

import fvr_core.training.trainer as training

evaluate = training.Trainer._evaluate


def disagreeing(self, split, logits=None):
    metrics, probs, loss = evaluate(self, split, logits)
    if split == "val":  # ranks whose validation losses differ (as nondeterministic kernels can make them):
        loss = float(self.step) if self.dist.rank == 0 else -float(self.step)  # rank 0 never improves again, rank 1 always does
    return metrics, probs, loss


training.Trainer._evaluate = disagreeing
from fvr_core.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_early_stopping_follows_rank_0_when_ranks_validation_losses_differ(demo_data, tmp_path):
    """Ranks deciding on their own losses left at different epochs, and the one still training
    waited in an all-reduce forever. Rank 0 decides for all: both stop after epoch 2 (patience 1)."""
    script = tmp_path / "disagreeing_ranks.py"
    script.write_text(DISAGREEING_RANKS)
    args = train_args(demo_data, tmp_path / "runs", "--epochs", "6", "--patience", "1", "--batch-size", "8")
    try:
        result = torchrun(args, tmp_path, script=str(script), timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the ranks hung: they left training at different epochs")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = only_run(tmp_path / "runs")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2]
    assert [r["epoch"] for r in rows if r.get("event") == "early_stop"] == [2]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_each_ranks_own_augmentation(demo_data, tmp_path):
    """Both processes die (SIGKILL) in epoch 2 and the run is resumed under torchrun: it ends with
    the weights of an uninterrupted 2-process run, which needs each rank to continue its own
    augmentation stream (taking rank 0's on every rank gives other flips and crops)."""
    args = ["--epochs", "2", "--batch-size", "8", "--augment", "light", "--seed", "3"]
    whole = torchrun(train_args(demo_data, tmp_path / "whole", *args), tmp_path)
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]

    killed = torchrun(train_args(demo_data, tmp_path / "killed", *args), tmp_path, FVR_TEST_KILL_AT="step:4")
    assert killed.returncode != 0  # 3 steps an epoch: both ranks died in the second epoch
    run_dir = only_run(tmp_path / "killed")
    state = torch.load(run_dir / "last_state.pt", weights_only=True)
    ranks = state["rank_rng"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["augment_rng"], ranks[1]["augment_rng"])
    resumed = torchrun(["resume", str(run_dir)], tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"

    expected = load_file(only_run(tmp_path / "whole") / "last.safetensors")
    got = load_file(run_dir / "last.safetensors")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0, msg=f"{name} differs after the resume")
