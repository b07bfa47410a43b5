"""GPipe and 1F1B over real send/recv equal one process and torch.distributed.pipelining; the bubble."""
import pathlib
import re
import subprocess
import sys

import pytest
import torch

from ctxlab import ModelConfig
from ctxlab.bench.pipeline import main, run
from ctxlab.parallel import launch
from ctxlab.parallel.bubble import bubble_measured, bubble_theory, replay, simulate
from ctxlab.parallel.events import peak_held
from ctxlab.bench.pipeline_torch import merge_grads, schedules_worker, single_process_step
from ctxlab.parallel.bubble import SCHEDULES, schedule_order
from ctxlab.parallel.pipeline import check_step, stage_bounds

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=2, max_seq_len=32)


def batch(n=6, t=16):
    gen = torch.Generator().manual_seed(2)
    return torch.randint(0, 64, (n, t), generator=gen), torch.randint(0, 64, (n, t), generator=gen)


def assert_matches_single_process(per_rank, ref, key):
    runs = [r[key] for r in per_rank]
    assert abs(runs[-1]["loss"] - ref["loss"]) < 1e-5, key
    grads = merge_grads(runs)
    assert set(grads) == set(ref["grads"]), key
    for name, g in ref["grads"].items():
        torch.testing.assert_close(grads[name], g, atol=1e-5, rtol=0, msg=f"{key} {name}")


@pytest.mark.parametrize("stages, impls", [(2, ("ours", "torch")), (3, ("ours", "torch"))])
def test_schedules_equal_single_process_and_torch_pipelining(stages, impls):
    x, y = batch()
    ref = single_process_step(CFG, x, y)
    per_rank = launch(schedules_worker, stages, CFG, x, y, 3, impls, timeout=180)
    for impl in impls:
        for name in SCHEDULES:
            assert_matches_single_process(per_rank, ref, f"{name}/{impl}")
    assert [r["gpipe/ours"]["peak_held"] for r in per_rank] == [3] * stages
    assert [r["1f1b/ours"]["peak_held"] for r in per_rank] == [min(stages - s, 3) for s in range(stages)]
    for name in SCHEDULES:
        assert_events_are_causal([r[f"{name}/ours"]["runs"][0] for r in per_rank])


def assert_events_are_causal(events_by_stage):
    """On one clock, an op starts after the op whose output it needs has ended on the neighbouring stage,
    and replaying the recorded durations with nothing between ops can only end sooner."""
    end = {(kind, s, i): e for s, ev in enumerate(events_by_stage) for kind, i, _, e in ev}
    for s, ev in enumerate(events_by_stage):
        for kind, i, start, _ in ev:
            needed = ("F", s - 1, i) if kind == "F" else ("B", s + 1, i)
            assert needed not in end or start >= end[needed], (kind, s, i, start, end[needed])
    n_micro = sum(kind == "F" for kind, *_ in events_by_stage[0])
    for name in SCHEDULES:
        if [[e[:2] for e in ev] for ev in events_by_stage] == [schedule_order(name, s, len(events_by_stage), n_micro)
                                                               for s in range(len(events_by_stage))]:
            assert bubble_measured(replay(name, events_by_stage)) <= bubble_measured(events_by_stage) + 1e-12


def test_ignored_targets_and_unsplittable_configs():
    """Micro-batches that score different numbers of targets still add up to the batch mean."""
    x, y = batch()
    y = y.clone()
    y[:2, 3:] = -100  # the first micro-batch scores far fewer targets than the others
    ref = single_process_step(CFG, x, y)
    per_rank = launch(schedules_worker, 2, CFG, x, y, 3, ("ours",), timeout=180)
    for name in SCHEDULES:
        assert_matches_single_process(per_rank, ref, f"{name}/ours")
    for change in (dict(share_layers=True), dict(position_encoding="alibi"), dict(checkpoint_every=1)):
        with pytest.raises(ValueError, match=f"cfg.{next(iter(change))}"):
            check_step(CFG.replace(**change), x, y, 2, 3)


def test_paired_exchanges_the_nccl_path_are_exact_too():
    """gloo prefetches receives; NCCL pairs each send with the next receive. Both must give the same step."""
    x, y = batch()
    ref = single_process_step(CFG, x, y)
    per_rank = launch(schedules_worker, 3, CFG, x, y, 3, ("ours",), False, timeout=180)
    for name in SCHEDULES:
        assert_matches_single_process(per_rank, ref, f"{name}/ours")


def test_the_ideal_timeline_has_the_textbook_bubble_and_memory():
    for schedule in SCHEDULES:
        for p, m in [(2, 8), (4, 4), (4, 16), (8, 3)]:
            events = simulate(schedule, p, m)
            assert bubble_measured(events) == pytest.approx(bubble_theory(p, m))
            held = [peak_held(e) for e in events]
            assert held == ([m] * p if schedule == "gpipe" else [min(p - s, m) for s in range(p)])
    assert schedule_order("1f1b", 0, 2, 3) == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("B", 2)]


def test_replaying_recorded_durations():
    """An ideal timeline replays to itself; a run with a gap between two ops replays without it."""
    ideal = simulate("1f1b", 3, 5, [1.0, 1.5, 1.0], [2.0, 2.5, 2.0])
    assert replay("1f1b", ideal) == ideal
    late = lambda s, k, i: 0.0 if (s, k, i) == (0, "F", 0) else 0.5  # noqa: E731  (a slow first transfer)
    delayed = [[(k, i, a + late(s, k, i), b + late(s, k, i)) for k, i, a, b in ev] for s, ev in enumerate(ideal)]
    assert bubble_measured(replay("1f1b", delayed)) == pytest.approx(bubble_measured(ideal))
    assert bubble_measured(delayed) > bubble_measured(ideal)
    with pytest.raises(ValueError, match="one F and one B"):
        replay("1f1b", [ev[:-1] for ev in ideal])


def test_a_slower_last_stage_lengthens_the_step_and_the_bubble():
    """1F1B, p = 2, m = 2, worked by hand: with stage 1 slower (f1, b1) the step is f0 + b0 + 2 (f1 + b1)."""
    f0, b0, f1, b1 = 1.0, 2.0, 1.5, 3.0
    events = simulate("1f1b", 2, 2, [f0, f1], [b0, b1])
    end = max(e[3] for ev in events for e in ev)
    assert end == pytest.approx(f0 + b0 + 2 * (f1 + b1))
    assert bubble_measured(events) > bubble_theory(2, 2)
    assert simulate("gpipe", 3, 4, [1.0] * 3, [2.0] * 3) == simulate("gpipe", 3, 4, 1.0, 2.0)
    with pytest.raises(ValueError, match="one per stage"):
        simulate("gpipe", 3, 4, [1.0, 1.0], 2.0)


def test_bench_measures_memory_and_its_cli_prints_the_bubble_last(capsys):
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=2, max_seq_len=32)
    rows = run(2, (4,), steps=2, cfg=cfg, micro_batch=2, seq_len=32, measure_memory=True)
    by = {r["schedule"]: r for r in rows}
    assert by["gpipe"]["held"] == [4, 4] and by["1f1b"]["held"] == [2, 1]
    assert by["1f1b"]["peak_mib"][0] < by["gpipe"]["peak_mib"][0]  # 2 micro-batches held instead of 4
    assert all(0 <= r["bubble"] < 1 and r["theory"] == pytest.approx(1 / 5) for r in rows)
    assert all(0 <= r["bubble_stages"] < 1 and r["formula_ms"] > 0 for r in rows)
    assert all(r["bubble_q1"] <= r["bubble"] <= r["bubble_q3"] and r["bubble_ops"] <= r["bubble"] + 1e-12
               for r in rows)
    main(["--stages", "2", "--microbatches", "2", "--steps", "2", "--seq-len", "16", "--micro-batch", "1"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("bubble_measured=") and last.endswith("bubble_theory=0.3333"), last


def test_pipeline_runs_under_torchrun():
    root = pathlib.Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "ctxlab.bench.pipeline_torch", "--microbatches", "4"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()  # rank 0 reports once for both stages
    assert len(lines) == 2 and all(ln.split(":")[0] in ("gpipe/ours", "1f1b/ours") for ln in lines), out.stdout
    diffs = [float(m) for m in re.findall(r" diff (\d\.\de[+-]\d+)", out.stdout)]
    assert len(diffs) == 2 and max(diffs) < 1e-5, out.stdout
    assert "peak micro-batches held per stage [4, 4]" in lines[0] and "per stage [2, 1]" in lines[1], out.stdout


def test_bad_inputs():
    x, y = batch()
    with pytest.raises(ValueError, match="n_stages"):
        stage_bounds(3, 4)
    with pytest.raises(ValueError, match="n_micro"):
        check_step(CFG, x, y, 2, 4)
    with pytest.raises(ValueError, match="n_micro"):
        check_step(CFG, x, y, 2, 0)
    with pytest.raises(ValueError, match="schedule"):
        schedule_order("zb-h1", 0, 2, 4)
    with pytest.raises(ValueError, match="n_stages"):
        check_step(CFG, x, y, 4, 3)
    with pytest.raises(ValueError, match="n_micro"):  # checked in the caller, before any rank starts
        launch(schedules_worker, 2, CFG, x, y, 4)
    with pytest.raises(ValueError, match="n_stages"):
        launch(schedules_worker, 4, CFG, x, y, 3)
    with pytest.raises(ValueError, match="micro_counts"):
        run(2, (0,))
