"""ZeRO from scratch (Rajbhandari et al. 2020): data parallelism that shards the model states.

Replicated data parallelism keeps every model state on every rank: with AdamW in fp32 that is 16
bytes per parameter (weights 4, gradients 4, two moments 8), whatever the number of ranks. ZeRO
gives each rank a 1/W slice of every parameter and keeps on it only what that slice needs:

- stage 1: the optimizer's moments of its slice. After backward each whole gradient is
  reduce-scattered (every rank gets the sum of its slice), each rank steps its slice of the weights,
  and an all-gather brings every rank the updated whole;
- stage 2: + gradients: each gradient is reduce-scattered as backward produces it, each rank keeps
  the sum of its slice only;
- stage 3: + parameters: each block's weights exist whole only while that block runs, forward or
  backward (all-gathered just before, freed just after); between steps a rank holds its slices only.

The numbers are those of one process on the whole batch (AdamW acts element by element, so stepping
slices is stepping the whole); the communication per step is that of an all-reduce for stages 1-2
(reduce-scatter + all-gather) and 1.5x it for stage 3 (parameters gathered twice). ``offload`` keeps
the optimizer's slice (``"optimizer"``) and, at stage 3, the parameters' slices (``"params"``) in host
memory, and counts the bytes that cross to the device and back (``host_traffic_bytes``). In fp32 the
optimizer's slice of the weights *is* the weights' slice, so at stage 3 either offload puts both there.
On a CPU host and device are one memory: the mechanism runs and its traffic is counted all the same.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..model_states import check_zero

_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def check_devices(module: nn.Module) -> torch.device:
    """The one device every parameter is on; mixed devices are refused."""
    devices = {p.device for p in module.parameters()}
    if len(devices) != 1:
        raise ValueError(f"parameters must all be on one device, got {sorted(map(str, devices))}")
    return devices.pop()


def shard_size(numel: int, world_size: int) -> int:
    """Elements of one rank's slice: ceil(numel / W); the last slices are padded with zeros."""
    return -(-numel // world_size)


def offload_traffic_bytes(module: nn.Module, world_size: int, stage: int, micro_batches: int = 1) -> int:
    """Bytes one rank moves between host and device per step with everything it can offload at ``stage``,
    from the slices' sizes (fp32): per backward pass the gradient slices go to the host; at stages 1-2 the
    updated weight slices come back once per step; at stage 3 every block's slices come in for forward and
    again for backward, the rest (embedding, head, final norm) once, in every pass."""
    check_zero(stage, ("optimizer", "params") if stage == 3 else ("optimizer",))
    slices = sum(4 * shard_size(p.numel(), world_size) for p in module.parameters())
    if stage < 3:
        return micro_batches * slices + slices
    blocks = sum(4 * shard_size(p.numel(), world_size) for p in module.blocks.parameters())
    return micro_batches * (2 * blocks + (slices - blocks) + slices)


class ZeroDataParallel(nn.Module):
    """Wraps a GPT; train with ``loss.backward()`` then ``step()`` (which replaces ``optimizer.step()``)."""

    def __init__(self, module: nn.Module, stage: int, lr: float = 1e-3, offload: tuple[str, ...] = (),
                 group: dist.ProcessGroup | None = None, **adamw):
        super().__init__()
        if not dist.is_initialized():
            raise RuntimeError("ZeroDataParallel needs an initialised process group (use ctxlab.parallel.launch)")
        self.offload = check_zero(stage, offload)
        self.module, self.stage, self.group = module, stage, group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.device = check_devices(module)
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.host = torch.device("cpu")
        self.shards_on_host = bool(self.offload)  # the optimizer's slices (and at stage 3 the weights')
        self.host_traffic_bytes = 0
        for t in list(module.parameters()) + list(module.buffers()):  # every rank starts from rank 0's weights
            dist.broadcast(t.data, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
        self.shards = [self._make_shard(p) for p in self.params]
        self.grad_shards: dict[Tensor, Tensor] = {}
        self.optimizer = torch.optim.AdamW(self.shards, lr=lr, **adamw)
        if stage >= 2:
            for p in self.params:
                p.register_post_accumulate_grad_hook(self._reduce_scatter_grad)
        if stage == 3:
            self._shard_parameters_per_block()

    # ---- slices ------------------------------------------------------------------------------------------
    def _padded(self, t: Tensor) -> Tensor:
        flat = t.reshape(-1)
        pad = shard_size(flat.numel(), self.world_size) * self.world_size - flat.numel()
        return torch.cat([flat, flat.new_zeros(pad)]) if pad else flat

    def _bounds(self, p: Tensor) -> tuple[int, int]:
        """This rank's elements [lo, hi) of p, flattened; the last ranks' may be shorter, or empty."""
        n = shard_size(p.numel(), self.world_size)
        lo = min(self.rank * n, p.numel())
        return lo, min(lo + n, p.numel())

    def _pad(self, piece: Tensor, p: Tensor) -> Tensor:
        """A slice padded with zeros to the common slice size, as the collectives want them."""
        missing = shard_size(p.numel(), self.world_size) - piece.numel()
        return torch.cat([piece, piece.new_zeros(missing)]) if missing else piece

    def _make_shard(self, p: Tensor) -> Tensor:
        """This rank's slice, as the optimizer's parameter: a view into the whole weight for stages 0-2
        (stepping it updates the weight in place), a tensor of its own for stage 3 or offload."""
        if self.stage == 0:
            return p
        lo, hi = self._bounds(p)
        piece = p.data.view(-1)[lo:hi]
        if self.stage == 3 or self.shards_on_host:
            piece = piece.detach().to(self.host if self.shards_on_host else self.device, copy=True)
        return nn.Parameter(piece, requires_grad=True)

    def _to_device(self, t: Tensor) -> Tensor:
        if self.shards_on_host:  # host to device: counted even where they are one memory
            self.host_traffic_bytes += t.nbytes
        return t.to(self.device)

    def _grad_slice(self, p: Tensor) -> Tensor:
        """The sum over ranks of this rank's slice of p's gradient, divided by the ranks."""
        grad = self._padded(p.grad.detach()) / self.world_size
        mine = grad.new_empty(shard_size(p.numel(), self.world_size))
        _reduce_scatter(mine, grad, group=self.group)
        lo, hi = self._bounds(p)
        mine = mine[:hi - lo]
        if self.shards_on_host:  # the optimizer runs on the host: the slice goes there at once
            self.host_traffic_bytes += mine.nbytes
            mine = mine.to(self.host)
        return mine

    def _reduce_scatter_grad(self, p: Tensor) -> None:
        """Stages 2-3: sum this gradient over ranks, keep this rank's slice (added to what earlier
        backward passes of the same step left: gradient accumulation), free the whole."""
        mine = self._grad_slice(p)
        self.grad_shards[p] = self.grad_shards[p] + mine if p in self.grad_shards else mine
        p.grad = None
        if self.stage == 3:
            self._unit_grads_done(p)

    # ---- stage 3: whole parameters only while their block runs -------------------------------------------
    def _shard_parameters_per_block(self) -> None:
        blocks = list(getattr(self.module, "blocks", []))
        if getattr(getattr(self.module, "cfg", None), "share_layers", False):
            raise ValueError("zero_stage 3 shards per block; a model with share_layers=True has one block for all")
        in_blocks = {p for b in blocks for p in b.parameters()}
        self.units = [[p for p in b.parameters()] for b in blocks] + [[p for p in self.params if p not in in_blocks]]
        self._unit_of = {p: i for i, unit in enumerate(self.units) for p in unit}
        self._shard_of = dict(zip(self.params, self.shards))
        self._pending = [len(u) for u in self.units]
        for p in self.params:
            self._free(p)
        for i, block in enumerate(blocks):
            block.register_forward_pre_hook(lambda m, args, i=i: self._gather(i))
            block.register_forward_hook(lambda m, args, out, i=i: self._after_forward(i, out))
        self.module.register_forward_pre_hook(lambda m, args: self._gather(len(self.units) - 1))

    def _free(self, p: Tensor) -> None:
        p.data.untyped_storage().resize_(0)

    def _gather(self, i: int) -> None:
        for p in self.units[i]:
            if p.data.untyped_storage().nbytes() == p.numel() * p.element_size():
                continue  # already whole
            shard = self._pad(self._to_device(self._shard_of[p].detach()), p)
            whole = shard.new_empty(shard.numel() * self.world_size)
            _all_gather(whole, shard, group=self.group)
            p.data.untyped_storage().resize_(p.numel() * p.element_size())
            p.data.view(-1).copy_(whole[:p.numel()])

    def _after_forward(self, i: int, out: Tensor) -> Tensor:
        if torch._C._current_graph_task_id() != -1:
            return out  # a recomputation inside backward: the weights are needed right after
        for p in self.units[i]:
            self._free(p)
        if out.requires_grad:  # gather again just before this block's backward
            out.register_hook(lambda grad, i=i: self._gather(i) or grad)
        return out

    def _unit_grads_done(self, p: Tensor) -> None:
        i = self._unit_of[p]
        self._pending[i] -= 1
        if self._pending[i] == 0:
            for q in self.units[i]:
                self._free(q)
            self._pending[i] = len(self.units[i])

    # ---- the step ----------------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def step(self) -> None:
        """Average the gradients (stages 0-1), step this rank's slices, share the updated weights."""
        for p, shard in zip(self.params, self.shards):
            if self.stage == 0:
                dist.all_reduce(p.grad, group=self.group)
                grad = p.grad.div_(self.world_size)
            elif self.stage == 1:
                grad = self._grad_slice(p)
            else:
                grad = self.grad_shards.pop(p)
            shard.grad = grad.to(shard.device)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for p, shard in zip(self.params, self.shards):
            if self.stage <= 1:
                p.grad = None
            if self.stage in (1, 2):  # every rank gets every updated slice
                piece = self._pad(self._to_device(shard.detach()), p)
                whole = piece.new_empty(piece.numel() * self.world_size)
                _all_gather(whole, piece.contiguous(), group=self.group)
                p.data.view(-1).copy_(whole[:p.numel()])

    def model_state_bytes(self) -> dict[str, int]:
        """Bytes this rank holds now, counted from the tensors themselves (each storage once), by part and
        by place: weights (whole or slices), gradients (whole or slices), the optimizer's moments."""
        seen: set[int] = set()

        def size(tensors) -> int:
            total = 0
            for t in tensors:
                s = t.untyped_storage()
                if s.data_ptr() not in seen and s.nbytes():
                    seen.add(s.data_ptr())
                    total += s.nbytes()
            return total
        weights = size(self.params)  # whole weights (stages 0-2) or whole blocks gathered right now
        shards = size(self.shards)  # the optimizer's slices of the weights, where they are not views
        grads = size([p.grad for p in self.params if p.grad is not None] + list(self.grad_shards.values()))
        moments = size([v for state in self.optimizer.state.values() for v in state.values()
                        if isinstance(v, Tensor) and v.dim() > 0])
        host = (shards + moments + (grads if self.stage >= 2 else 0)) if self.shards_on_host else 0
        return {"weights": weights + shards, "gradients": grads, "optimizer": moments,
                "total": weights + shards + grads + moments, "on_device": weights + shards + grads + moments - host,
                "on_host": host}
