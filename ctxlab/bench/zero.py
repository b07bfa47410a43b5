"""ZeRO stages 0-3 on W ranks beside one process, torch's ZeroRedundancyOptimizer and FSDP2.

Every stage trains the same GPT on the same global batch for a few AdamW steps; each is compared
with one process on the whole batch (losses and final weights) and its per-rank model-state bytes,
counted from the tensors it holds after backward, with the formula of ``ctxlab.model_states``.
Torch's own implementations run in the same process group: ``ZeroRedundancyOptimizer`` beside
stage 1 and ``fully_shard`` (FSDP2, per block and at the root) beside stage 3, with their step times.

``python -m ctxlab.bench zero --world-size 4`` prints, last, ``max_err=... zero1_states_ratio=...
zero2_states_ratio=... zero3_states_ratio=...``: the largest difference from one process, and each
stage's measured per-rank model-state bytes over replicated data parallelism's.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..command import command_errors
from ..config import ModelConfig, check_token_batch, positive_int
from ..memory_model import count_params
from ..model import GPT
from ..model_states import check_zero, model_state_bytes
from ..parallel.ddp import mean_over_ranks, split_batch
from ..parallel.launch import launch, rank_device
from ..parallel.zero import ZeroDataParallel
from ..train import train_single
from . import format_table

# (implementation, stage, what is offloaded): ours at every stage, torch's beside stages 1 and 3
RUNS = (("ours", 0, ()), ("ours", 1, ()), ("ours", 2, ()), ("ours", 3, ()), ("torch", 1, ()), ("torch", 3, ()))
BENCH_CONFIG = ModelConfig(vocab_size=256, d_model=64, n_layers=4, n_heads=4, max_seq_len=64)


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _torch_states(model: nn.Module, opt) -> dict[str, int]:
    """Bytes a torch-native run holds on this rank: its local slices of weights, gradients, moments."""
    seen: set[int] = set()

    def size(tensors) -> int:  # each storage once: FSDP2 keeps several slices in one buffer
        total = 0
        for t in map(_local, tensors):
            s = t.untyped_storage()
            if s.data_ptr() not in seen and s.nbytes():
                seen.add(s.data_ptr())
                total += s.nbytes()
        return total
    params = list(model.parameters())
    weights = size(params)
    grads = size(p.grad for p in params if p.grad is not None)
    states = opt.optim.state if hasattr(opt, "optim") else opt.state
    moments = size(v for s in states.values() for v in s.values() if isinstance(v, Tensor) and v.dim() > 0)
    return {"weights": weights, "gradients": grads, "optimizer": moments, "total": weights + grads + moments}


def _torch_model(impl_stage: int, cfg: ModelConfig, device: torch.device, lr: float):
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    if impl_stage == 1:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        ddp = nn.parallel.DistributedDataParallel(model)
        return ddp, ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, lr=lr)
    from torch.distributed.fsdp import fully_shard
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model, torch.optim.AdamW(model.parameters(), lr=lr)


def zero_worker(rank: int, world_size: int, cfg: ModelConfig, tokens: Tensor, targets: Tensor, steps: int = 5,
                runs: tuple = RUNS, lr: float = 1e-3, micro_batches: int = 1) -> list[dict]:
    """Each (impl, stage, offload) of ``runs`` trained for ``steps`` on this rank's slice of the batch, in
    ``micro_batches`` backward passes per step (gradient accumulation); per run the global losses, the
    final whole weights (on every rank), the model states after the last backward, the step times and,
    for ours, the host traffic of its offload."""
    device = rank_device()
    x, y = split_batch(tokens, rank, world_size).to(device), split_batch(targets, rank, world_size).to(device)
    out = []
    for impl, stage, offload in runs:
        if impl == "ours":
            torch.manual_seed(0)
            model = ZeroDataParallel(GPT(cfg).to(device), stage, lr=lr, offload=offload)
            opt = None
        else:
            model, opt = _torch_model(stage, cfg, device, lr)
        losses, times = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = 0.0
            for xs, ys in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
                part = model(xs, ys)[1] / micro_batches
                part.backward()
                loss = loss + part.detach()
            states = model.model_state_bytes() if impl == "ours" else _torch_states(model, opt)
            if impl == "ours":
                model.step()
            else:
                opt.step()
                opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
            losses.append(mean_over_ranks(loss))
        traffic = getattr(model, "host_traffic_bytes", 0)  # the steps' own, before the gather below
        if impl == "ours" and stage == 3:  # gather every block once more to read the final weights
            for i in range(len(model.units)):
                model._gather(i)
        module = getattr(model, "module", model)
        final = {n: _local(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone()
                 for n, p in module.named_parameters()}
        out.append({"impl": impl, "stage": stage, "offload": list(offload), "losses": losses, "final": final, "states": states,
                    "step_s": times, "host_traffic_bytes": traffic})
        dist.barrier()
    return out


def _check(world_size: int, cfg: ModelConfig, tokens: Tensor, targets: Tensor, steps: int = 5,
           runs: tuple = RUNS, lr: float = 1e-3, micro_batches: int = 1) -> None:
    check_token_batch(tokens, targets)
    positive_int("micro_batches", micro_batches)
    if tokens.shape[0] % (world_size * micro_batches):
        raise ValueError(f"the global batch ({tokens.shape[0]}) must be divisible by world_size={world_size} "
                         f"x micro_batches={micro_batches}")
    positive_int("steps", steps)
    for impl, stage, offload in runs:
        if impl not in ("ours", "torch") or (impl == "torch" and (stage not in (1, 3) or offload)):
            raise ValueError(f"runs must pair 'ours' with a stage 0-3 or 'torch' with 1 or 3 (no offload), got "
                             f"{(impl, stage, offload)}")
        check_zero(stage, offload)


zero_worker.check_args = _check


def zero_sweep(world_size: int = 4, cfg: ModelConfig = BENCH_CONFIG, steps: int = 5, batch: int = 8,
               seq_len: int = 64, runs: tuple = RUNS, micro_batches: int = 1) -> dict:
    """Launch the runs on ``world_size`` gloo (or NCCL) ranks; compare each with one process and the formula."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(cfg.vocab_size, (batch, seq_len), generator=g)
    targets = torch.randint(cfg.vocab_size, (batch, seq_len), generator=g)
    per_rank = launch(zero_worker, world_size, cfg, tokens, targets, steps, runs, 1e-3, micro_batches, timeout=600)
    ref = train_single(cfg, tokens, targets, steps=steps)
    psi = count_params(cfg)
    rows = []
    for i, (impl, stage, offload) in enumerate(runs):
        r0 = per_rank[0][i]
        loss_err = max(abs(a - b) for a, b in zip(r0["losses"], ref["losses"]))
        weight_err = max((r0["final"][n] - w).abs().max().item() for n, w in ref["final"].items())
        formula = model_state_bytes(psi, stage, world_size, "fp32", offload)
        measured = max(r[i]["states"]["total"] for r in per_rank)  # the fullest rank
        rows.append({"impl": impl, "stage": stage, "offload": ",".join(offload) or "-", "loss_err": loss_err, "weight_err": weight_err,
                     "states_bytes": measured, "formula_bytes": formula["device"] + formula["host"], "step_ms": 1e3 * statistics.median(r0["step_s"][1:] or r0["step_s"]),
                     "host_traffic_bytes": r0["host_traffic_bytes"],
                     "on_host_bytes": max(r[i]["states"].get("on_host", 0) for r in per_rank),
                     "formula_host_bytes": formula["host"]})
    base = next(r["states_bytes"] for r in rows if r["impl"] == "ours" and r["stage"] == 0)
    for r in rows:
        r["states_ratio"] = r["states_bytes"] / base
        r["formula_ratio"] = r["formula_bytes"] / (16 * psi)
    return {"world_size": world_size, "params": psi, "steps": steps, "rows": rows, "losses": ref["losses"]}


def last_line(result: dict) -> str:
    rows = {(r["impl"], r["stage"]): r for r in result["rows"] if r["offload"] == "-"}
    err = max(max(r["loss_err"], r["weight_err"]) for r in result["rows"])
    return f"max_err={err:.1e} " + " ".join(f"zero{s}_states_ratio={rows[('ours', s)]['states_ratio']:.3f}"
                                           for s in (1, 2, 3))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxlab.bench zero", description=__doc__.split("\n")[0])
    parser.add_argument("--world-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--offload", default="", help="comma-separated, from optimizer,params (stages >= 1)")
    args = parser.parse_args(argv)
    with command_errors(parser):
        positive_int("world_size", args.world_size)
        offload = check_zero(3, args.offload)  # names checked here; each stage below takes what it can
        extra = tuple(("ours", s, offload) for s in (1, 2, 3) if offload and (s == 3 or "params" not in offload))
        result = zero_sweep(args.world_size, steps=args.steps, runs=RUNS + extra)
        print(f"{result['params']:,} parameters, {args.world_size} ranks, {args.steps} AdamW steps, fp32")
        print(format_table(result["rows"], ["impl", "stage", "offload", "loss_err", "weight_err", "states_bytes",
                                            "formula_bytes", "states_ratio", "step_ms", "host_traffic_bytes"]))
        print(last_line(result))
