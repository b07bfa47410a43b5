"""KV caches for decoding: keep every layer's keys and values so a new token costs O(T), not O(T^2).

Bytes per token = 2 (k and v) x layers x kv_heads x head_dim x bytes per element: grouped-query
attention (fewer kv_heads) shrinks it, the context length multiplies it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .config import ModelConfig, positive_int


def kv_cache_bytes_per_token(cfg: ModelConfig, bytes_per_element: int = 4) -> int:
    """2 x layers x kv_heads x head_dim x bytes: what one more token of context costs at inference."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * bytes_per_element


class LayerView:
    """One layer's part of a cache, as its attention sees it: append this step's k/v, get every k/v so far.
    Taken as the layer runs (``cache.view(layer)``), before the step's ``advance``: every layer of one
    step writes at the same start."""

    def __init__(self, cache: "_KVCache", layer: int):
        self.cache, self.layer, self.start = cache, layer, cache.seq_len
        self.rotates_keys = cache.rotates_keys  # the cache applies RoPE to k itself (a sliding window)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.cache.write(self.layer, self.start, k, v)


class _KVCache:
    """What every cache offers the model: ``make_room`` before a step, a view per layer, and ``advance``
    once the step's layers have run."""

    seq_len: int
    rotates_keys = False  # True: the layer hands over k before RoPE and the cache rotates it on read

    def make_room(self, t: int) -> None:
        """Called before a step of ``t`` tokens; a cache that evicts (``kvcache_window``) does it here."""

    def write(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def view(self, layer: int) -> LayerView:
        return LayerView(self, layer)

    def advance(self, t: int) -> None:
        self.seq_len += t


class ContiguousKVCache(_KVCache):
    """One preallocated (batch, kv_heads, max_len, head_dim) buffer per layer for k and for v."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        positive_int("batch_size", batch_size), positive_int("max_len", max_len)
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.seq_len = 0

    def write(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k/v for positions [start, start + t) of one layer; return that layer's k/v so far."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: writing up to position {end} but max_len={self.max_len}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def nbytes(self) -> int:
        """Bytes reserved by the cache (what it costs whether or not the positions are used)."""
        return self.k.nbytes + self.v.nbytes


class BlockAllocator:
    """Hands out fixed-size blocks of a shared pool and takes them back (a free list). A block can be
    shared by several sequences (a common prompt); it returns to the pool when its last holder lets go."""

    def __init__(self, num_blocks: int):
        positive_int("num_blocks", num_blocks)
        self.num_blocks = num_blocks
        self.free_blocks = list(range(num_blocks - 1, -1, -1))
        self.refs = [0] * num_blocks

    @property
    def in_use(self) -> int:
        return self.num_blocks - len(self.free_blocks)

    def allocate(self) -> int:
        if not self.free_blocks:
            raise RuntimeError(f"paged KV cache exhausted: all {self.num_blocks} blocks are in use; "
                               "free finished sequences or create the cache with more num_blocks")
        block = self.free_blocks.pop()
        self.refs[block] = 1
        return block

    def share(self, blocks: list[int]) -> None:
        for block in blocks:
            self.refs[block] += 1

    def release(self, blocks: list[int]) -> None:
        for block in reversed(blocks):
            self.refs[block] -= 1
            if self.refs[block] == 0:
                self.free_blocks.append(block)


class PagedKVCache(_KVCache):
    """KV cache in fixed-size blocks from one pool, with a block table per sequence (as in vLLM).

    A sequence holds ceil(len / block_size) blocks instead of a max_len reservation, so the waste is
    under one block per sequence. Same ``write`` / ``advance`` / ``seq_len`` interface as
    :class:`ContiguousKVCache`, so the model's decode path takes either. ``fork`` starts sessions that
    share this one's blocks (a system prompt computed once); a shared block is copied the first time a
    session writes into it (copy-on-write), so sessions never see each other's tokens.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, num_blocks: int, block_size: int = 16,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        positive_int("batch_size", batch_size), positive_int("block_size", block_size)
        self.allocator = BlockAllocator(num_blocks)
        shape = (cfg.n_layers, num_blocks, cfg.n_kv_heads, block_size, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.block_size = block_size
        self.block_tables: list[list[int]] = [[] for _ in range(batch_size)]
        self.lengths = [0] * batch_size
        self.seq_len = 0
        self.copied_blocks = 0  # copy-on-write copies made so far

    def fork(self, n_sessions: int) -> "PagedKVCache":
        """A cache of ``n_sessions`` sequences that continue this one-sequence cache's tokens, in the same
        pool: every block is shared (its count of holders raised), none copied until a session writes."""
        positive_int("n_sessions", n_sessions)
        if len(self.block_tables) != 1:
            raise ValueError(f"fork needs a cache of one sequence (the shared prompt), this one holds "
                             f"{len(self.block_tables)}")
        sessions = object.__new__(PagedKVCache)
        sessions.k, sessions.v = self.k, self.v  # the same pool, and the same free list
        sessions.block_size, sessions.allocator = self.block_size, self.allocator
        sessions.block_tables = [list(self.block_tables[0]) for _ in range(n_sessions)]
        for table in sessions.block_tables:
            self.allocator.share(table)
        sessions.lengths, sessions.seq_len = [self.lengths[0]] * n_sessions, self.seq_len
        sessions.copied_blocks = 0
        return sessions

    def reserve(self, seq: int, n_tokens: int) -> None:
        """Make sure sequence ``seq`` has blocks for its first ``n_tokens`` positions."""
        if not 0 <= seq < len(self.block_tables):
            raise ValueError(f"seq must be in [0, {len(self.block_tables)}), got {seq}")
        table = self.block_tables[seq]
        while len(table) * self.block_size < n_tokens:
            table.append(self.allocator.allocate())
        self.lengths[seq] = max(self.lengths[seq], n_tokens)

    def _own(self, seq: int, start: int, end: int) -> None:
        """Copy-on-write: give ``seq`` a block of its own wherever [start, end) falls in a shared one."""
        table = self.block_tables[seq]
        for i in range(start // self.block_size, (end - 1) // self.block_size + 1):
            if self.allocator.refs[table[i]] > 1:
                mine = self.allocator.allocate()
                self.k[:, mine], self.v[:, mine] = self.k[:, table[i]], self.v[:, table[i]]  # every layer
                self.allocator.release([table[i]])
                table[i] = mine
                self.copied_blocks += 1

    def free(self, seq: int) -> None:
        """Return a finished sequence's blocks to the pool."""
        self.allocator.release(self.block_tables[seq])
        self.block_tables[seq], self.lengths[seq] = [], 0

    def _slots(self, start: int, end: int) -> tuple[Tensor, Tensor]:
        """Physical block (B, t) and offset (t,) of every sequence's positions [start, end)."""
        pos = torch.arange(start, end)
        tables = torch.tensor(self.block_tables, dtype=torch.long)
        return tables[:, pos // self.block_size].to(self.k.device), (pos % self.block_size).to(self.k.device)

    def write(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k/v (B, Hkv, t, D) for positions [start, start + t); return (B, Hkv, start + t, D) so far."""
        if k.shape[0] != len(self.block_tables):
            raise ValueError(f"batch of {k.shape[0]} but the cache holds {len(self.block_tables)} sequences")
        end = start + k.shape[2]
        for seq in range(len(self.block_tables)):
            self.reserve(seq, end)
            self._own(seq, start, end)
        blocks, offsets = self._slots(start, end)
        self.k[layer, blocks, :, offsets] = k.permute(0, 2, 1, 3)
        self.v[layer, blocks, :, offsets] = v.permute(0, 2, 1, 3)
        blocks, offsets = self._slots(0, end)
        return (self.k[layer, blocks, :, offsets].permute(0, 2, 1, 3),
                self.v[layer, blocks, :, offsets].permute(0, 2, 1, 3))

    def block_bytes(self) -> int:
        return 2 * self.k[:, 0].nbytes

    def nbytes(self) -> int:
        """Bytes of the pool's blocks in use (by any cache sharing it); the pool is ``k.nbytes + v.nbytes``."""
        return self.allocator.in_use * self.block_bytes()


def fragmentation_report(cfg: ModelConfig, lengths: list[int], max_len: int, block_size: int = 16,
                         bytes_per_element: int = 4) -> dict:
    """Bytes reserved vs bytes holding real tokens for a batch of conversations, contiguous vs paged.

    Both caches are built on the meta device (shapes only), so a large batch costs no memory here.
    """
    if not lengths or any(not isinstance(n, int) or n <= 0 or n > max_len for n in lengths):
        raise ValueError(f"lengths must be a non-empty list of ints in [1, max_len={max_len}], got {lengths!r}")
    dtype = {4: torch.float32, 2: torch.float16, 1: torch.int8}[bytes_per_element]
    contiguous = ContiguousKVCache(cfg, len(lengths), max_len, device="meta", dtype=dtype)
    n_blocks = sum(-(-n // block_size) for n in lengths)
    paged = PagedKVCache(cfg, len(lengths), n_blocks, block_size, device="meta", dtype=dtype)
    for seq, n in enumerate(lengths):
        paged.reserve(seq, n)
    used = sum(lengths) * kv_cache_bytes_per_token(cfg, bytes_per_element)
    report = {"tokens": sum(lengths), "used_bytes": used, "contiguous_bytes": contiguous.nbytes(),
              "paged_bytes": paged.nbytes()}
    report["contiguous_waste"] = 1 - used / report["contiguous_bytes"]
    report["paged_waste"] = 1 - used / report["paged_bytes"]
    return report
