"""Training on several processes with torch.distributed (DDP), as launched by torchrun.

`python -m fvr_core train ...` run under `torchrun --nproc_per_node=N` (one node) or with
`--nnodes/--node_rank/--rdzv_endpoint` (several) trains one run: every process holds the model
(DistributedDataParallel averages the gradients), takes its own share of each epoch's batches,
and evaluates the same validation images. Only the main process (rank 0) writes the run folder; the others write into a private
scratch folder that is removed at the end. Stop requests and divergence are agreed on with one
small all-reduce at the steps where the trainer checks them. Early stopping and the best
checkpoint follow rank 0's validation loss, broadcast to every process: losses computed apart can
differ in their last bits (nondeterministic kernels), and ranks that stopped at different epochs
would leave the others waiting in an all-reduce forever. Each process's random state
(augmentation, CPU and CUDA generators) is gathered into rank 0's `last_state.pt`, so a resumed
process continues its own streams.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def from_environment() -> DistContext:
    """The context torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK; SINGLE otherwise."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise RuntimeError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (torchrun sets them)") from None
    return DistContext(rank, world, local) if world > 1 else SINGLE


def init(context: DistContext) -> None:
    """Join the process group: NCCL for CUDA tensors and gloo for CPU ones (so a CPU-only
    machine trains with gloo). Each process uses the GPU of its LOCAL_RANK."""
    if not context.enabled or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(context.local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


def broadcast_object(value, context: DistContext):
    """The main process's `value` on every process."""
    if not context.enabled:
        return value
    box = [value if context.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(value, context: DistContext) -> list:
    """Every process's `value`, in rank order, on every process ([value] when alone)."""
    if not context.enabled:
        return [value]
    values = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values


def shard(order: torch.Tensor, context: DistContext) -> torch.Tensor:
    """This process's share of an epoch's permutation. The permutation is padded with its own
    first entries to a multiple of the world size (as DistributedSampler does), so every process
    takes the same number of steps and no all-reduce waits for a process that has finished."""
    if not context.enabled:
        return order
    padded = -(-len(order) // context.world_size) * context.world_size
    if padded > len(order):
        order = torch.cat([order, order[: padded - len(order)]])
    return order[context.rank :: context.world_size]


def sum_across(values: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Element-wise sum of a small float tensor over all processes (itself when alone)."""
    if context.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
