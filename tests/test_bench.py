import os
import subprocess
import sys

import pytest

from ctxlab.attention import BACKENDS
from ctxlab.bench import format_table
from ctxlab.measure import median_ms, run_point
from ctxlab.bench.attention import attention_point, peak_ratio, sweep


def test_sweep_rows_and_ratio():
    rows = sweep([64, 128], backward=True, repeats=1)
    assert {r["backend"] for r in rows} == set(BACKENDS)
    assert all(not r["oom"] and r["peak_mib"] > 0 and r["ms"] > 0 for r in rows)
    assert peak_ratio(rows, "sdpa", "naive", 128) < 1
    assert "OOM" not in format_table(rows, ["backend", "T", "peak_mib"])


def test_out_of_memory_point_is_recorded_and_sweep_goes_on():
    def boom():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
    row = run_point(boom, T=1)
    assert row == {"T": 1, "oom": True}
    assert "OOM" in format_table([row], ["T", "peak_mib"])
    with pytest.raises(RuntimeError, match="other"):
        run_point(lambda: (_ for _ in ()).throw(RuntimeError("other")), T=2)


def test_bad_inputs():
    with pytest.raises(ValueError, match="backend"):
        attention_point("flash9", 64)
    with pytest.raises(ValueError, match="seq_len"):
        attention_point("sdpa", 0)
    with pytest.raises(ValueError, match="repeats"):
        median_ms(lambda: None, repeats=0)


def test_cli_prints_the_ratio_last():
    out = subprocess.run([sys.executable, "-m", "ctxlab.bench", "attention", "--max-len", "512", "--repeats", "1",
                          "--ratio-at", "512", "--time-at", "1024"], capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()
    fields = dict(field.split("=") for field in out[-1].split())
    assert list(fields) == ["sdpa_vs_naive_peak_memory_ratio_T512", "causal_skip_flops_ratio",
                            "chunked_vs_sdpa_time_T1024"]
    assert 0 < float(fields["sdpa_vs_naive_peak_memory_ratio_T512"]) < 0.5  # a T the sweep holds
    assert float(fields["causal_skip_flops_ratio"]) == 5 / 8  # 4 blocks a side: (n + 1) / 2n
    assert float(fields["chunked_vs_sdpa_time_T1024"]) > 0
    unknown = subprocess.run([sys.executable, "-m", "ctxlab.bench", "nope"], capture_output=True, text=True)
    assert unknown.returncode != 0 and "unknown sweep" in unknown.stderr


def test_a_tracked_budget_on_cpu_turns_big_points_into_oom_rows():
    rows = sweep([64, 512], backends=["naive", "sdpa"], backward=True, repeats=1, budget_bytes=8 * 2**20)
    by = {(r["backend"], r["T"]): r for r in rows}
    assert by[("naive", 512)]["oom"] and not by[("naive", 64)]["oom"]  # scores, probabilities and grads > 8 MiB
    assert not by[("sdpa", 512)]["oom"] and by[("sdpa", 512)]["peak_mib"] < 8


def test_with_other_load_counts_what_other_processes_took():
    import time

    from ctxlab.measure import with_other_load

    result, idle = with_other_load(lambda: time.sleep(0.3) or 7)
    assert result == 7
    if idle is None:  # no /proc/stat on this system
        return
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 2.5: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        _, other = with_other_load(lambda: time.sleep(1.0))
    finally:
        busy.wait()
    # about one core more spinning elsewhere, unless the machine was already busy on every core
    assert other >= min(idle + 0.5, os.cpu_count() - 0.5), (idle, other)


def test_heads_leave_the_attention_work_unchanged_and_kv_sharing_shrinks_the_cache():
    from ctxlab.bench.attention import heads_comparison

    rows = heads_comparison(64, 32, [(1, 1), (4, 4), (4, 1)])
    assert len({r["flops"] for r in rows}) == 1 and rows[1]["naive_mib"] > rows[0]["naive_mib"]
    assert [r["kv_bytes"] for r in rows] == [2 * 32 * 4, 2 * 32 * 4, 2 * 8 * 4]

