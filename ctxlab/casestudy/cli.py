"""The command line of ``python -m ctxlab.casestudy``: the whole case study in one command (``--quick``: tiny sizes, for tests)."""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import fields, replace
from pathlib import Path

import torch

from ..command import check_output, command_errors
from .settings import QUICK, Settings, check_device, check_settings
from .study import OUT_DIR, _log, check_data_parallel, run, summary_line


def default_data_parallel(device: str, s: Settings | None = None) -> int:
    """As many of the visible GPUs as split every global batch evenly (device 'cuda'); one process otherwise."""
    s = s or Settings()
    gpus = torch.cuda.device_count() if device == "cuda" else 1
    return max(n for n in range(1, max(gpus, 1) + 1) if s.batch % n == 0 and s.finetune_batch % n == 0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m ctxlab.casestudy", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="a smoke test of every stage at tiny sizes, under a minute: its accuracies are not results")
    p.add_argument("--out", type=Path, default=None, help="output folder (default book/data/casestudy; --quick: a new temp dir)")
    p.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--data-parallel", type=int, default=None,
                   help="ranks for training (default: every GPU with --device cuda, else 1; >1 on cpu: gloo processes)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--train-len", type=int, default=None)
    p.add_argument("--base-steps", type=int, default=None)
    p.add_argument("--finetune-steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--finetune-batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--eval-samples", type=int, default=None, help="dialogues per distance bin")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (1 is fastest on a busy machine)")
    p.add_argument("--fresh", action="store_true", help="delete this study's files in --out and start over")
    args = p.parse_args(argv)
    s = QUICK if args.quick else Settings()
    changes = {f.name: getattr(args, f.name) for f in fields(Settings)
               if getattr(args, f.name, None) is not None}
    try:
        s = replace(s, **changes)
        if args.train_len is not None and not args.quick:
            s = replace(s, latency_lens=tuple(args.train_len * k for k in (1, 2, 4, 8, 16)))
        check_settings(s)
        check_device(args.device)
        ranks = default_data_parallel(args.device, s) if args.data_parallel is None else args.data_parallel
        check_data_parallel(ranks, s, args.device)
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {args.threads}")
    except ValueError as err:
        p.error(str(err))
    check_output(p, args.out, folder=True)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = args.out or (Path(tempfile.mkdtemp(prefix="ctxlab-casestudy-")) if args.quick else OUT_DIR)
    if args.fresh and out.exists():
        for f in out.glob("*"):
            if f.suffix in (".pt", ".json"):
                f.unlink()
    command = " ".join(["python -m ctxlab.casestudy", *(sys.argv[1:] if argv is None else argv)])
    with command_errors(p):
        results = run(s, out, args.device, command, ranks)
    _log(f"results in {out / 'results.json'}; {results['seconds_this_run']} s")
    if args.quick:
        _log("--quick is a smoke test of every stage at tiny sizes (a few steps, a tiny model): its accuracies "
             "are not results; the stored run of chapter 8 is `python -m ctxlab.casestudy`")
    _log(summary_line(results))
    return results

