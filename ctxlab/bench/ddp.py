"""Data parallelism measured: per-rank memory and step time, alone and with every rank (chapter 4).

Each rank keeps a whole replica, so its memory does not fall with the number of ranks; the step time
grows by the gradient all-reduce. ``ddp_scaling_worker`` is launched with ``ctxlab.parallel.launch``;
``torchrun ... -m ctxlab.bench.ddp`` trains three steps on every rank and prints them from rank 0.
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


if __name__ == "__main__":  # torchrun --standalone --nproc-per-node 2 -m ctxlab.bench.ddp
    import os

    from ..parallel.ddp import ddp_train_worker
    from ..parallel.launch import gather_from_env

    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=2, max_seq_len=64)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (2 * int(os.environ.get("WORLD_SIZE", "1")), 32), generator=gen)
    outs = gather_from_env(ddp_train_worker, cfg, tokens, tokens.roll(-1, 1), 3)
    if outs is not None:  # rank 0 reports for every rank
        same = all(o["losses"] == outs[0]["losses"] for o in outs)
        print(f"{len(outs)} ranks, 3 steps of data parallelism: losses {[round(v, 6) for v in outs[0]['losses']]} "
              f"({'the same on every rank' if same else 'DIFFERENT across ranks'})", flush=True)
