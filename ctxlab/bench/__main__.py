"""``python -m ctxlab.bench <name> [options]``: each name is a module of ctxlab.bench with a ``main``."""
from __future__ import annotations

import importlib
import sys

SWEEPS = {
    "attention": "attention memory and latency vs T per backend",
    "causal_skip": "chunked attention with and without skipping future key blocks: FLOPs and time",
    "clipping": "gradient clipping rules compared; a long-context run with and without clipping",
    "stability": "attention-logit growth at a high learning rate: QK-norm, length warmup, clipping",
    "zero": "ZeRO stages 0-3 per rank beside one process, ZeroRedundancyOptimizer and FSDP2",
    "ring": "ring attention over P ranks: exactness, per-rank memory and work, bytes sent",
    "pipeline": "GPipe and 1F1B on p ranks: step time, bubble measured vs (p-1)/(m+p-1)",
    "memory": "largest trainable context under a memory budget per technique",
    "positions": "passkey accuracy and loss by position past the trained length, per RoPE scaling",
    "recurrent": "an LSTM beside the GPT: recall by distance, gradients by distance, time per token",
    "serving": "the decode roofline; quantised, windowed and shared KV caches; chunked prefill",
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SWEEPS:
        print("usage: python -m ctxlab.bench {" + ",".join(SWEEPS) + "} [options]")
        for name, what in SWEEPS.items():
            print(f"  {name:12s} {what}")
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"unknown sweep {argv[0]!r}; choose one of {tuple(SWEEPS)}")
        return
    importlib.import_module(f"ctxlab.bench.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    main()
