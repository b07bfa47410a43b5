import pytest

from ctxlab.attention_io import (attention_flops, naive_attention_io, simulate_tiled_io, tile_intensity,
                                 tile_sizes, tiled_attention_io)


@pytest.mark.parametrize("seq_len, block_rows, block_cols", [(1024, 64, 64), (1000, 64, 128), (777, 128, 32),
                                                             (64, 128, 128)])
@pytest.mark.parametrize("causal", [False, True])
def test_closed_form_equals_the_tile_walk(seq_len, block_rows, block_cols, causal):
    args = (seq_len, 64, block_rows, block_cols, 2, causal)
    assert tiled_attention_io(*args) == simulate_tiled_io(*args)


def test_naive_is_theta_td_plus_t_squared():
    for t in (256, 4096, 65536):
        assert naive_attention_io(t, 128, 2) == 4 * 2 * (t * 128 + t * t)


@pytest.mark.parametrize("sram", [4096, 16384, 65536])
def test_tiled_is_theta_t2_d2_over_m(sram):
    """Theorem 2 of Dao et al.: with B_r = B_c = M / 4d (<= d), K and V are read T / B_r times, so the
    traffic tends to 8 e T^2 d^2 / M: it falls in proportion to the SRAM size."""
    d, e, t = 128, 2, 2**16
    rows, cols = tile_sizes(sram, d)
    assert rows == cols == sram // (4 * d)
    io = tiled_attention_io(t, d, rows, cols, e)
    assert io / (8 * e * t * t * d * d / sram) == pytest.approx(1, rel=0.01)
    # against the standard kernel's 4 e T^2: d / (2 B_r), a saving only once a tile holds more rows than d / 2
    assert io / naive_attention_io(t, d, e) == pytest.approx(d / (2 * rows), rel=0.02)


def test_tile_sizes_cap_the_query_block_at_the_head_dim():
    assert tile_sizes(2**20, 64) == (64, 4096)
    with pytest.raises(ValueError, match="sram_elements"):
        tile_sizes(100, 64)


def test_tile_intensity_is_set_by_the_tile_not_by_t():
    for rows in (64, 128):
        values = [tile_intensity(t, 128, rows, 2) for t in (2**14, 2**16, 2**18)]
        assert all(v == pytest.approx(rows, rel=0.01) for v in values)  # 2 B_r / e with e = 2
    assert tile_intensity(2**16, 128, 128, 2) < 2 * 128 / 2


def test_causal_skip_reads_and_computes_about_half():
    t, b, d = 8192, 128, 64
    assert attention_flops(t, d, causal=True, block_rows=b, block_cols=b) == 4 * d * (t * t // 2 + t * b // 2)
    full = tiled_attention_io(t, d, b, b) - tiled_attention_io(t, d, t, t)  # the repeated K/V reads
    skip = tiled_attention_io(t, d, b, b, causal=True) - tiled_attention_io(t, d, t, t)
    assert skip / full == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("call, name", [(lambda: naive_attention_io(0, 64), "seq_len"),
                                        (lambda: tiled_attention_io(64, 64, 0, 8), "block_rows"),
                                        (lambda: tile_intensity(64, 64, 8, 1.5), "bytes_per_element"),
                                        (lambda: attention_flops(64, -1), "head_dim")])
def test_bad_inputs_are_named(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()
