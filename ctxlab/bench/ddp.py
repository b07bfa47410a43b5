"""Data parallelism measured: per-rank memory and step time, alone and with every rank (chapter 4), and
the all-reduce itself: its bytes, its time against the latency-bandwidth line, and how much of it the
backward hooks hide.

Each rank keeps a whole replica, so its memory does not fall with the number of ranks; the step time
grows by the gradient all-reduce. ``ddp_scaling_worker`` is launched with ``ctxlab.parallel.launch``;
``torchrun ... -m ctxlab.bench.ddp`` trains three steps on every rank and prints them from rank 0.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist
from torch import Tensor

from ..config import ModelConfig
from ..measure import measure_peak, median_ms
from ..model import GPT
from .decode import fit_line, per_round
from ..parallel.ddp import DataParallel, all_reduce_bytes, ring_all_reduce
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


def allreduce_worker(rank: int, world_size: int, cfg: ModelConfig, micro_batch: int, seq_len: int,
                     sizes: tuple[int, ...] = (2**12, 2**16, 2**20, 2**22), rounds: int = 7,
                     bucket_cap_mb: float = 1.0) -> dict:
    """The all-reduce measured two ways, in interleaved rounds, one thread per rank.

    Per buffer of n fp32 values: ``ring_all_reduce`` (bytes counted) beside ``dist.all_reduce``, their
    largest difference and seconds. Then a data-parallel training step of ``cfg`` with the all-reduce
    started from the backward hooks and with the control that starts it after backward
    (``overlap=False``): seconds of the backward pass and of ``finish_gradient_sync`` in each round, and
    the largest difference between the two runs' averaged gradients.
    """
    torch.set_num_threads(1)
    device = rank_device()
    gen = torch.Generator().manual_seed(rank)
    buffers = {n: torch.randn(n, generator=gen).to(device) for n in sizes}
    out: dict = {"sizes": {}, "steps": {"overlap": [], "control": []}}
    for n, x in buffers.items():
        ref, mine = x.clone(), x.clone()
        dist.all_reduce(ref)
        sent = ring_all_reduce(mine)
        out["sizes"][n] = {"bytes_sent": sent, "max_diff": (mine - ref).abs().max().item(), "ring_s": [],
                           "all_reduce_s": []}
    def replica(overlap: bool) -> DataParallel:
        torch.manual_seed(0)  # the same weights for both
        return DataParallel(GPT(cfg).to(device), bucket_cap_mb=bucket_cap_mb, overlap=overlap)

    models = {"overlap": replica(True), "control": replica(False)}
    x = torch.randint(0, cfg.vocab_size, (micro_batch, seq_len), generator=gen).to(device)
    for _ in range(rounds):
        for n, buf in buffers.items():
            for key, fn in (("ring_s", ring_all_reduce), ("all_reduce_s", dist.all_reduce)):
                y = buf.clone()
                dist.barrier()
                began = time.perf_counter()
                fn(y)
                out["sizes"][n][key].append(time.perf_counter() - began)
        for name, model in models.items():
            _, loss = model(x, x)
            dist.barrier()
            began = time.perf_counter()
            loss.backward()
            backward_end = time.perf_counter()
            model.finish_gradient_sync()
            out["steps"][name].append({"backward_s": backward_end - began,
                                       "sync_s": time.perf_counter() - backward_end})
        grads = [[p.grad for p in m.module.parameters()] for m in models.values()]
        out["grad_diff"] = max((a - b).abs().max().item() for a, b in zip(*grads))  # the same sums either way
        for model in models.values():
            model.module.zero_grad(set_to_none=True)
    out["gradient_bytes"] = sum(p.numel() * p.element_size() for p in models["overlap"].module.parameters())
    out["buckets"] = len(models["overlap"].buckets)
    return out


def summarize_allreduce(results: list[dict]) -> dict:
    """``allreduce_worker``'s ranks in one table: per buffer the bytes (counted and by formula), the largest
    difference from ``dist.all_reduce`` and both medians (each round's slowest rank); a line
    t = latency + bytes / bandwidth through ``dist.all_reduce``'s times; for the training step the medians
    of backward (slowest rank) and of the wait after it (see below), with the hooks and with the control,
    and the share hidden."""
    world = len(results)

    def slowest(rows: list[list[float]], pick=max) -> float:
        return statistics.median(per_round(rows, pick))

    sizes = {}
    for n, first in results[0]["sizes"].items():
        rows = [r["sizes"][n] for r in results]
        sizes[int(n)] = {"bytes_sent": first["bytes_sent"], "formula": all_reduce_bytes(int(n), 4, world),
                         "max_diff": max(r["max_diff"] for r in rows),
                         "ring_s": slowest([r["ring_s"] for r in rows]),
                         "all_reduce_s": slowest([r["all_reduce_s"] for r in rows])}
    latency, per_byte = fit_line([v["formula"] for v in sizes.values()], [v["all_reduce_s"] for v in sizes.values()])
    # the wait after backward of the rank that finished it last is the all-reduce left over; an earlier
    # rank also waits for that one (skew, not communication): so the wait is the least over ranks
    steps = {name: {key: slowest([[s[key] for s in r["steps"][name]] for r in results], pick)
                    for key, pick in (("backward_s", max), ("sync_s", min))} for name in ("overlap", "control")}
    grads = results[0]["gradient_bytes"]
    predicted = results[0]["buckets"] * latency + all_reduce_bytes(grads // 4, 4, world) * per_byte
    return {"sizes": sizes, "latency_s": latency, "bandwidth": 1 / per_byte, "steps": steps,
            "gradient_bytes": grads, "buckets": results[0]["buckets"], "predicted_sync_s": predicted,
            "grad_diff": max(r["grad_diff"] for r in results),
            "hidden_share": 1 - steps["overlap"]["sync_s"] / steps["control"]["sync_s"]}


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
