"""Training under torchrun: two CPU processes with the gloo backend train one run together, each
on its own share of the batches, and only rank 0 writes the run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from conftest import REPO
from fvr_core.distributed import DistContext, shard


def test_shards_are_disjoint_equal_and_cover_the_epoch():
    order = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    parts = [shard(order, DistContext(rank, 3, rank)) for rank in range(3)]
    assert {len(p) for p in parts} == {4}  # padded to 12: every process takes the same steps
    assert set(torch.cat(parts).tolist()) == set(order.tolist())
    assert len(torch.cat(parts)) - len(set(torch.cat(parts).tolist())) == 1  # one entry repeated as padding
    assert torch.equal(shard(order, DistContext()), order)


def test_two_gloo_processes_train_one_run(demo_data, tmp_path):
    runs, scratch = tmp_path / "runs", tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "fvr_core", "train", "--data", str(demo_data), "--model", "cnn", "--epochs", "2", "--image-size", "48",
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
