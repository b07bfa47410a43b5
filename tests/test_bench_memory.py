import pytest

from ctxlab.bench.memory import ROWS, attention_peak_ratio, context_rows, main


def test_context_rows_grow_with_each_technique(small_config):
    rows = context_rows(small_config(max_seq_len=4096), 16 * 2**20, measure=False)
    assert [r["technique"] for r in rows] == [name for name, _ in ROWS]
    ts = [r["predicted_T"] for r in rows]
    assert ts[0] < ts[1] and ts[-1] >= ts[3] >= ts[2] and ts[-1] > 4 * ts[0]


def test_attention_ratio_is_small():
    r = attention_peak_ratio(1024)
    assert r["ratio"] < 0.35 and r["naive"] > 0


@pytest.mark.slow
def test_cli_last_lines(capsys):
    main(["--predict-only", "--quick"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2].startswith("chunked_vs_naive_peak_memory_ratio_T2048=")
    fields = dict(field.split("=") for field in out[-1].split())
    assert list(fields) == ["max_context_ratio_all_vs_naive", "korthikanti_rel_error",
                            "selective_recompute_memory_ratio"]
    assert float(fields["max_context_ratio_all_vs_naive"]) > 4
    assert abs(float(fields["korthikanti_rel_error"])) < 0.01
    assert 0 < float(fields["selective_recompute_memory_ratio"]) < 0.7
    with pytest.raises(SystemExit) as exit_:
        main(["--budget-mib", "-1"])
    assert exit_.value.code == 2 and "--budget-mib" in capsys.readouterr().err
