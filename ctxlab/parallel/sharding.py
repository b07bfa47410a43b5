"""Splitting a sequence over P ranks for context parallelism: plain (contiguous) or zig-zag.

Plain sharding gives rank r the r-th contiguous block of T/P tokens. Under a causal mask the last
rank then sees every key and the first rank almost none, so the ring waits on the slowest rank.
Zig-zag sharding cuts the sequence into 2P chunks and gives rank r chunks r and 2P-1-r: one early
and one late chunk each, so every rank does the same attention work. RoPE must then rotate each
token by its *global* position, which ``shard_positions`` supplies.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..config import positive_int


def check_world_size(world_size: int) -> None:
    positive_int("world_size", world_size)


def check_rank(rank: int, world_size: int) -> None:
    check_world_size(world_size)
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")


def check_same_everywhere(what: str, q: Tensor, k: Tensor, causal: bool, zigzag: bool,
                          group: dist.ProcessGroup) -> None:
    """One small all_gather before any other collective, so that a rank with other shapes, flags or world
    size fails loudly on every rank (a ValueError naming each rank's view) instead of hanging."""
    mine = torch.tensor([dist.get_world_size(group), *q.shape, *k.shape, int(causal), int(zigzag),
                         q.element_size()], dtype=torch.int64, device=q.device)  # NCCL gathers only GPU tensors
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(everyone, mine, group=group)
    if any(not torch.equal(other, everyone[0]) for other in everyone):
        raise ValueError(f"{what} needs the same world size, q/k/v shapes, dtype, causal and zigzag on every rank;"
                         " got (world size, q shape, k shape, causal, zigzag, bytes per element) = "
                         + ", ".join(f"rank {r}: {t.tolist()}" for r, t in enumerate(everyone)))


def num_chunks(world_size: int, zigzag: bool) -> int:
    """How many equal chunks the sequence is cut into: P for plain, 2P for zig-zag."""
    check_world_size(world_size)
    return 2 * world_size if zigzag else world_size


def check_seq_len(seq_len: int, world_size: int, zigzag: bool) -> None:
    """Raise unless seq_len splits into equal chunks (P of them, or 2P for zig-zag)."""
    n = num_chunks(world_size, zigzag)
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1 or seq_len % n:
        layout = f"2 * world_size = {n} (zig-zag)" if zigzag else f"world_size = {n}"
        raise ValueError(f"sequence length must be a positive multiple of {layout}, got {seq_len!r}")


def chunk_ids(rank: int, world_size: int, zigzag: bool) -> list[int]:
    """The chunks rank ``rank`` holds, in the order it stores them."""
    check_rank(rank, world_size)
    return [rank, 2 * world_size - 1 - rank] if zigzag else [rank]


def shard_positions(seq_len: int, rank: int, world_size: int, zigzag: bool,
                    device: torch.device | str | None = None) -> Tensor:
    """Global positions of the tokens that ``rank`` holds (what RoPE and the causal mask need)."""
    check_seq_len(seq_len, world_size, zigzag)
    size = seq_len // num_chunks(world_size, zigzag)
    return torch.cat([torch.arange(c * size, (c + 1) * size, device=device)
                      for c in chunk_ids(rank, world_size, zigzag)])


def shard(x: Tensor, rank: int, world_size: int, zigzag: bool, dim: int = 1) -> Tensor:
    """The part of ``x`` (sequence along ``dim``) that ``rank`` holds: tokens (B, T) with dim=1,
    q/k/v (B, H, T, D) with dim=2."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must index one of x's {x.dim()} dimensions, got {dim}")
    check_seq_len(x.shape[dim], world_size, zigzag)
    pieces = x.chunk(num_chunks(world_size, zigzag), dim=dim)
    return torch.cat([pieces[c] for c in chunk_ids(rank, world_size, zigzag)], dim=dim).contiguous()


def unshard(parts: list[Tensor], zigzag: bool, dim: int = 1) -> Tensor:
    """Inverse of ``shard``: ``parts[r]`` is what rank r holds; returns the whole sequence."""
    if not isinstance(parts, (list, tuple)) or not parts or not all(isinstance(p, Tensor) for p in parts):
        raise TypeError("parts must be a non-empty list of tensors, one per rank")
    world_size = len(parts)
    if any(p.shape != parts[0].shape for p in parts):
        raise ValueError(f"every rank's part must have the same shape, got {[tuple(p.shape) for p in parts]}")
    per_rank = len(chunk_ids(0, world_size, zigzag))
    chunks: list[Tensor | None] = [None] * num_chunks(world_size, zigzag)
    for rank, part in enumerate(parts):
        if part.shape[dim] % per_rank:
            raise ValueError(f"a zig-zag part must have an even length along dim {dim}, got {part.shape[dim]}")
        for c, piece in zip(chunk_ids(rank, world_size, zigzag), part.chunk(per_rank, dim=dim)):
            chunks[c] = piece
    return torch.cat(chunks, dim=dim)
