"""The model states per rank under ZeRO (Rajbhandari et al. 2020): weights, gradients, optimizer.

Mixed-precision AdamW keeps, per parameter, 2 bytes of bf16 weights, 2 of bf16 gradients and
K = 12 of fp32 optimizer state (a master copy of the weights and two moments): 16 bytes, the same on
every one of N data-parallel ranks. ZeRO shards them over the N ranks, one part more per stage:

    stage 0: (2 + 2 + K) psi          stage 2: 2 psi + (2 + K) psi / N
    stage 1: (2 + 2) psi + K psi / N  stage 3: (2 + 2 + K) psi / N

which for the paper's 7.5B-parameter model on 64 GPUs is 120, 31.4, 16.6 and 1.9 GB. Offloading
(ZeRO-Offload, ZeRO-Infinity) moves the optimizer's part (with the gradient slices it consumes)
and, at stage 3, the weights' slices to host memory; the device keeps what it computes with.
"""
from __future__ import annotations

ZERO_STAGES = (0, 1, 2, 3)
OFFLOADS = ("optimizer", "params")
# bytes per parameter of each state: fp32 training, and bf16 mixed precision with fp32 master weights
STATE_BYTES: dict[str, dict[str, int]] = {
    "fp32": {"weights": 4, "master weights": 0, "gradients": 4, "optimizer": 8},
    "bf16": {"weights": 2, "master weights": 4, "gradients": 2, "optimizer": 8},
}


def check_zero(stage: int, offload: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """Refuse a stage outside 0-3 and an offload the stage cannot do; return the offload as a tuple."""
    if isinstance(stage, bool) or stage not in ZERO_STAGES:
        raise ValueError(f"zero_stage must be one of {ZERO_STAGES}, got {stage!r}")
    if isinstance(offload, str):
        offload = tuple(o for o in offload.split(",") if o)
    offload = tuple(offload)
    if any(o not in OFFLOADS for o in offload):
        raise ValueError(f"offload must name parts from {OFFLOADS}, got {list(offload)}")
    if offload and stage == 0:
        raise ValueError("offload needs zero_stage >= 1: replicated data parallelism has no slice to offload")
    if "params" in offload and stage < 3:
        raise ValueError(f"offloading params needs zero_stage 3 (only then are the weights sliced), got {stage}")
    return offload


def offloaded_parts(zero_stage: int, offload: tuple[str, ...], precision: str = "bf16") -> set[str]:
    """Which states live on the host: with the optimizer offloaded its step runs there (master weights,
    moments, and from stage 2 the gradient slices it consumes); with params, the weights' slices."""
    offload = check_zero(zero_stage, offload)
    parts: set[str] = set()
    if "optimizer" in offload:
        parts |= {"master weights", "optimizer"} | ({"gradients"} if zero_stage >= 2 else set())
        if precision == "fp32" and zero_stage == 3:
            parts.add("weights")  # in fp32 the master copy is the weights' slice
    if "params" in offload:
        parts.add("weights")
    return parts


def model_state_bytes(params: int, zero_stage: int = 0, ranks: int = 1, precision: str = "bf16",
                      offload: tuple[str, ...] = ()) -> dict[str, float]:
    """Bytes of each model state on one of ``ranks`` data-parallel ranks, and how many sit on the host.

    Returns the parts of ``STATE_BYTES[precision]`` (each sharded or not, by stage), ``"device"``
    (their sum less what is offloaded) and ``"host"``. A stage-3 rank also holds, while a block runs,
    that block's whole weights and gradients: the planner adds that working set, this does not."""
    offload = check_zero(zero_stage, offload)
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise ValueError(f"ranks must be a positive int, got {ranks!r}")
    if precision not in STATE_BYTES:
        raise ValueError(f"precision must be one of {tuple(STATE_BYTES)}, got {precision!r}")
    per = STATE_BYTES[precision]
    sharded_from = {"weights": 3, "master weights": 1, "gradients": 2, "optimizer": 1}
    parts = {part: params * per[part] / (ranks if zero_stage >= sharded_from[part] else 1) for part in per}
    if precision == "fp32" and "optimizer" in offload and zero_stage in (1, 2):
        parts["master weights"] = params * 4 / ranks  # the host steps its own fp32 copy of the slice
    host = sum(parts[p] for p in offloaded_parts(zero_stage, offload, precision))
    return {**parts, "device": sum(parts.values()) - host, "host": host}
