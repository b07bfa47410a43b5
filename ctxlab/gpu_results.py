"""What ``python -m ctxlab.gpucheck`` measured on a GPU, read back for the chapters.

The GPU run writes one JSON file, committed as ``book/data/gpucheck.json``. Each chapter asks for the
sections it discusses; when the file or a section is absent (no GPU run yet, or the section failed)
it says so in one line, so every notebook runs unchanged with or without the file. A ``--dry-run``
file (tiny sizes on a CPU) is not a GPU measurement and is ignored unless asked for, as the tests do.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .bench import format_table
from .bench.causal_skip import fitted_exponent

FILE_NAME = "gpucheck.json"
PACKAGE_DATA = Path(__file__).resolve().parents[1] / "book" / "data" / FILE_NAME
REQUIRED_KEYS = ("schema_version", "device", "torch", "cuda", "date", "dry_run", "sections")


def find(path: str | Path | None = None) -> Path | None:
    """The results file: ``path``, else ``data/gpucheck.json`` beside the notebook, else the repository's."""
    candidates = [Path(path)] if path is not None else [Path("data") / FILE_NAME, PACKAGE_DATA]
    return next((p for p in candidates if p.is_file()), None)


def load(path: str | Path | None = None, allow_dry_run: bool = False) -> dict | None:
    """The stored run, or None when there is none (or only a dry run and ``allow_dry_run`` is False)."""
    found = find(path)
    if found is None:
        return None
    data = json.loads(found.read_text())
    try:
        validate(data)
    except ValueError as err:
        raise ValueError(f"{found} is not a gpucheck result: {err}") from None
    return data if allow_dry_run or not data["dry_run"] else None


def validate(data: dict) -> None:
    """Raise ValueError when a result lacks the fields the chapters read."""
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"gpucheck JSON is missing {missing}")
    for name, sec in data["sections"].items():
        if set(sec) != {"value", "error", "seconds"}:
            raise ValueError(f"section {name!r} must have value, error, seconds; got {sorted(sec)}")


def section(data: dict | None, name: str) -> object | None:
    """The value of section ``name`` when it ran without error, else None."""
    if data is None:
        return None
    sec = data["sections"].get(name)
    return None if sec is None or sec.get("error") is not None else sec.get("value")


def _matmul(v: dict) -> str:
    return f"dense matmul, n={v['n']}, {v['dtype']}: {v['tflops']:.1f} TFLOP/s"


def _attention(rows: list[dict]) -> str:
    shown = [{**r, "peak_mib": "OOM" if r.get("oom") else r.get("peak_mib"), "ms": "OOM" if r.get("oom") else r.get("ms")}
             for r in rows]
    return format_table(shown, ["backend", "T", "peak_mib", "ms"])


def _speed(rows: list[dict]) -> str:
    names = list(dict.fromkeys(r["backend"] for r in rows))
    fits = ", ".join(f"{n} {fitted_exponent(rows, n):.2f}" for n in names)
    return format_table(rows, ["backend", "T", "ms", "q1_ms", "q3_ms"]) + f"\ntime ~ T^k, k fitted: {fits}"


def _max_context(v: dict) -> str:
    return (f"largest trainable context: {v['largest_fitting_T']:,} tokens (search stopped by {v['stopped_by']}; "
            f"{len(v['probes'])} probes)")


def _throughput(v: dict) -> str:
    mfu = "n/a" if v.get("mfu") is None else f"{100 * v['mfu']:.1f}%"
    return (f"T={v['T']:,}: {v['ms_per_step']:.0f} ms per step, {v['tokens_per_s']:,.0f} tokens/s, "
            f"{v['flops_per_token']:.3g} FLOPs/token ({v['flops_formula']}), MFU {mfu}")


def _parallel(v: dict) -> str:
    lines = [f"GPUs visible: {v.get('gpus')}"]
    lines += [f"{k}: {json.dumps(val)}" for k, val in v.items() if k != "gpus"]
    return "\n".join(lines)


def _latency(rows: list[dict]) -> str:
    return format_table(rows, ["context", "prefill_ms", "decode_ms_per_token", "kv_cache_bytes"])


def _decode(v: dict) -> str:
    return (format_table(v["rows"], ["context", "ms", "ms_q1", "ms_q3", "predicted_ms"])
            + f"\nT_x predicted {v['crossover_predicted']:,.0f}, measured {v['crossover_measured']:,.0f}; "
            f"read bandwidth {v['bandwidth']['bytes_per_s'] / 1e9:,.0f} GB/s")


def _zero(v: dict) -> str:
    return format_table(v["rows"], ["impl", "stage", "offload", "loss_err", "states_bytes", "step_ms",
                                    "host_traffic_bytes"])


def _fused(v: dict) -> str:
    return (f"{v['dtype']} {v['shape']}: largest error over the largest value: out {v['out']:.1e}, "
            f"dQ {v['dq']:.1e}, dK {v['dk_late']:.1e}, dV {v['dv_late']:.1e}")


FORMATS: dict[str, Callable] = {"matmul_peak": _matmul, "attention": _attention, "attention_speed": _speed,
                                "max_context_reference": _max_context,
                                "max_context_110m": _max_context, "throughput_110m": _throughput,
                                "parallel": _parallel, "casestudy_latency": _latency,
                                "decode_roofline": _decode, "zero_offload": _zero, "ring_fused_block": _fused}


def report(names: list[str], path: str | Path | None = None, allow_dry_run: bool = False) -> str:
    """A short text of the stored sections ``names``, headed by the GPU, date and versions; or why none."""
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise ValueError(f"names must be among {tuple(FORMATS)}, got {unknown}")
    data = load(path, allow_dry_run)
    if data is None:
        return f"no GPU measurements stored (book/data/{FILE_NAME} is absent): the numbers above are the CPU's"
    kind = "dry run on a CPU, tiny sizes" if data["dry_run"] else "GPU run"
    out = [f"{kind}: {data['device']}, {data['date']}, torch {data['torch']}, CUDA {data['cuda']}"]
    for name in names:
        value = section(data, name)
        sec = data["sections"].get(name)
        if value is None:
            why = "not measured" if sec is None else f"failed: {sec.get('error')}"
            out.append(f"[{name}] {why}")
        else:
            out.append(f"[{name}]\n{FORMATS[name](value)}")
    return "\n".join(out)
