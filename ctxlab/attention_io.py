"""How many bytes attention moves between HBM and on-chip SRAM: FlashAttention's IO model.

A GPU computes from a small on-chip memory (SRAM: registers and shared memory, a few hundred KiB
per streaming multiprocessor) and keeps its tensors in large, slower HBM. Dao et al. (2022) count
the traffic between the two for one head of attention forward (sequence length T, head dimension
d, SRAM of M elements):

- the standard kernel writes the T x T scores to HBM, reads them for the softmax, writes the
  probabilities and reads them again for the product with V: Theta(T d + T^2) accesses;
- the tiled kernel keeps a block of B_r query rows and B_c key rows on chip and never writes a
  T x T matrix; each query block streams every key and value block once, so K and V are read
  T / B_r times: Theta(T^2 d^2 / M) accesses with B_r ~ M / (4 d) (their Theorem 2).

The closed forms below are checked against a loop that walks the tiles and adds up each load and
store (``simulate_tiled_io``), and against the asymptotics (tests). The intensity of one query tile,
4 B_r T d FLOPs over the bytes it moves, tends to 2 B_r / e: set by the tile, not by T. Reuse of
K/V tiles in a shared cache (the GPU's L2) raises the effective intensity above that, which is
why measured kernels run faster than an HBM-only count suggests (chapter 7).
"""
from __future__ import annotations

import math

from .config import positive_int


def tile_sizes(sram_elements: int, head_dim: int) -> tuple[int, int]:
    """(B_r, B_c) as FlashAttention chooses them: B_c = ceil(M / 4d), B_r = min(B_c, d), so that a
    query tile, a key tile, a value tile and the output tile fit in SRAM together."""
    positive_int("sram_elements", sram_elements), positive_int("head_dim", head_dim)
    if sram_elements < 4 * head_dim:
        raise ValueError(f"sram_elements must hold at least four rows of head_dim={head_dim} "
                         f"(>= {4 * head_dim}), got {sram_elements}")
    cols = math.ceil(sram_elements / (4 * head_dim))
    return min(cols, head_dim), cols


def naive_attention_io(seq_len: int, head_dim: int, bytes_per_element: int = 2) -> int:
    """HBM bytes of one head's standard attention forward: read Q and K, write S; read S, write P;
    read P and V, write O (Algorithm 0 of Dao et al.): 4 T d + 4 T^2 elements."""
    t, d = positive_int("seq_len", seq_len), positive_int("head_dim", head_dim)
    e = positive_int("bytes_per_element", bytes_per_element)
    return e * (2 * t * d + t * t) + e * 2 * t * t + e * (t * t + 2 * t * d)


def _key_blocks(query_block: int, block_rows: int, block_cols: int, n_cols: int, causal: bool) -> int:
    """Key blocks a query block reads: all of them, or with the causal skip those not wholly in its future."""
    if not causal:
        return n_cols
    last_row = (query_block + 1) * block_rows - 1
    return min(n_cols, last_row // block_cols + 1)


def tiled_attention_io(seq_len: int, head_dim: int, block_rows: int, block_cols: int,
                       bytes_per_element: int = 2, causal: bool = False) -> int:
    """HBM bytes of one head's tiled attention forward with FlashAttention-2's loop order: each query
    block is loaded once, streams the key and value blocks it needs, and writes its output rows and
    their log-sum-exp (kept in fp32, 4 bytes a row) once. With ``causal`` the blocks wholly in the
    future are skipped, as FlashAttention-2 does."""
    t, d = positive_int("seq_len", seq_len), positive_int("head_dim", head_dim)
    br, bc = positive_int("block_rows", block_rows), positive_int("block_cols", block_cols)
    e = positive_int("bytes_per_element", bytes_per_element)
    n_rows, n_cols = math.ceil(t / br), math.ceil(t / bc)
    key_rows = sum(min(_key_blocks(i, br, bc, n_cols, causal) * bc, t) for i in range(n_rows))
    return e * (2 * t * d + 2 * key_rows * d) + 4 * t


def simulate_tiled_io(seq_len: int, head_dim: int, block_rows: int, block_cols: int,
                      bytes_per_element: int = 2, causal: bool = False) -> int:
    """The same count by walking the tiles one load and one store at a time (the test's reference)."""
    t, d, e = seq_len, head_dim, bytes_per_element
    moved = 0
    for r0 in range(0, t, block_rows):
        rows = min(block_rows, t - r0)
        moved += rows * d * e  # load Q_i
        for c0 in range(0, t, block_cols):
            if causal and c0 > r0 + rows - 1:
                break  # this key block and all later ones lie in the future of every row of Q_i
            cols = min(block_cols, t - c0)
            moved += 2 * cols * d * e  # load K_j and V_j
        moved += rows * d * e + 4 * rows  # store O_i and its log-sum-exp
    return moved


def attention_flops(seq_len: int, head_dim: int, causal: bool = False, block_rows: int = 1,
                    block_cols: int = 1) -> int:
    """Matmul FLOPs of one head's forward: 4 T^2 d, or with the causal skip 4 d times the (query,
    key) pairs in the blocks computed (about T^2 / 2 + T B / 2 for square blocks of B)."""
    t, d = positive_int("seq_len", seq_len), positive_int("head_dim", head_dim)
    if not causal:
        return 4 * t * t * d
    br, bc = positive_int("block_rows", block_rows), positive_int("block_cols", block_cols)
    n_cols = math.ceil(t / bc)
    pairs = sum(min(br, t - i * br) * min(_key_blocks(i, br, bc, n_cols, True) * bc, t)
                for i in range(math.ceil(t / br)))
    return 4 * pairs * d


def tile_intensity(seq_len: int, head_dim: int, block_rows: int, bytes_per_element: int = 2) -> float:
    """FLOPs per HBM byte of one query tile (non-causal): 4 B_r T d FLOPs over its Q, O, K and V
    traffic, e (2 B_r d + 2 T d) bytes; tends to 2 B_r / e as T grows, whatever T."""
    t, d = positive_int("seq_len", seq_len), positive_int("head_dim", head_dim)
    br, e = positive_int("block_rows", block_rows), positive_int("bytes_per_element", bytes_per_element)
    return 4 * br * t * d / (e * (2 * br * d + 2 * t * d))
