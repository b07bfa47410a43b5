"""Data parallelism measured: per-rank memory and step time, alone and with every rank (chapter 4).

Each rank keeps a whole replica, so its memory does not fall with the number of ranks; the step time
grows by the gradient all-reduce. ``ddp_scaling_worker`` is launched with ``ctxlab.parallel.launch``.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..config import ModelConfig
from ..measure import measure_peak, median_ms
from ..model import GPT
from ..parallel.ddp import DataParallel
from ..parallel.launch import rank_device


def ddp_scaling_worker(rank: int, world_size: int, cfg: ModelConfig, micro_batch: int, seq_len: int,
                       steps: int = 3) -> dict:
    """Per-rank peak memory and step time at a fixed micro-batch, alone (a group of one) and with all ranks.

    One thread per rank, as if each rank were a device of its own. Alone, rank 0 also runs the whole
    global batch (``world_size x micro_batch`` sequences) to time what one device would take.
    """
    torch.set_num_threads(1)
    device = rank_device()
    alone = [dist.new_group([r]) for r in range(world_size)][rank]  # every rank must create every group
    gen = torch.Generator().manual_seed(rank)
    x = torch.randint(0, cfg.vocab_size, (micro_batch, seq_len), generator=gen).to(device)
    big = torch.randint(0, cfg.vocab_size, (micro_batch * world_size, seq_len), generator=gen).to(device)
    out = {}
    for name, group in (("alone", alone), ("all", None)):
        torch.manual_seed(0)
        model = DataParallel(GPT(cfg).to(device), group=group)

        def step(batch: Tensor = x) -> None:
            _, loss = model(batch, batch)
            loss.backward()
            model.finish_gradient_sync()
            model.module.zero_grad(set_to_none=True)

        out[f"peak_{name}"] = measure_peak(step, device)
        dist.barrier()
        out[f"ms_{name}"] = median_ms(step, repeats=steps, device=device)
        if name == "alone":
            dist.barrier()
            out["ms_global_batch_alone"] = median_ms(lambda: step(big), repeats=steps, device=device) \
                if rank == 0 else None
            dist.barrier()
    return out
