"""Gradient clipping: what bounds an update, and the article's formula that does not.

Clipping by global norm rescales *all* gradients together by ``min(1, max_norm / ||g||)``: the
update keeps its direction and only its length is bounded (Pascanu et al. 2013). Value clipping
clamps each entry, which bends the direction; adaptive clipping (AGC, Brock et al. 2021) bounds each
unit's gradient relative to its weights. ``article_clip`` is the source article's ``max(0, g - theta)``,
kept only to measure what it does: it is not a clipping at all.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Union

import torch
from torch import Tensor, nn

Params = Union[Tensor, Iterable[Tensor]]
STRATEGIES = ("none", "norm", "value", "agc", "article")


def _param_list(params: Params) -> list[Tensor]:
    """Accept a tensor or an iterable of tensors (as torch's clip functions do) and check the types."""
    if isinstance(params, Tensor):
        return [params]
    if isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
        raise TypeError(f"params must be a Tensor or an iterable of Tensors, got {type(params).__name__}")
    params = list(params)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{i}] must be a Tensor, got {type(p).__name__}")
    return params


def _positive_finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _norm_type(norm_type: object) -> float:
    if isinstance(norm_type, str) and norm_type.lower() == "inf":
        return math.inf
    if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float)) or not norm_type > 0:
        raise ValueError(f"norm_type must be a number > 0 or inf (1, 2, 'inf', ...), got {norm_type!r}")
    return float(norm_type)


def grads_of(params: Params) -> list[Tensor]:
    """The gradients that exist; parameters without a gradient are skipped, as in torch."""
    return [p.grad for p in _param_list(params) if p.grad is not None]


def total_norm(grads: list[Tensor], norm_type: float | str = 2.0) -> Tensor:
    """The norm of all gradients seen as one vector: the norm of the per-tensor norms (0 for none)."""
    norm_type = _norm_type(norm_type)
    if not grads:
        return torch.tensor(0.0)
    if math.isinf(norm_type):
        norms = [g.detach().abs().max() for g in grads]
        return norms[0] if len(norms) == 1 else torch.max(torch.stack([n.to(grads[0].device) for n in norms]))
    norms = [torch.linalg.vector_norm(g.detach(), norm_type) for g in grads]
    return torch.linalg.vector_norm(torch.stack([n.to(grads[0].device) for n in norms]), norm_type)


@torch.no_grad()
def clip_by_global_norm(params: Params, max_norm: float, norm_type: float | str = 2.0,
                        error_if_nonfinite: bool = False) -> Tensor:
    """Scale every gradient by ``min(1, max_norm / (total + 1e-6))``; return the total norm before.

    Same result as ``torch.nn.utils.clip_grad_norm_``, stricter on input: ``max_norm`` must be > 0.
    """
    max_norm = _positive_finite("max_norm", max_norm)
    norm_type = _norm_type(norm_type)
    grads = grads_of(params)
    norm = total_norm(grads, norm_type)
    if error_if_nonfinite and (torch.isnan(norm) or torch.isinf(norm)):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it cannot be "
            "clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
            "`error_if_nonfinite=False`")
    if grads:
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef.to(g.device, g.dtype))
    return norm


@torch.no_grad()
def clip_by_value(params: Params, clip_value: float) -> None:
    """Clamp every gradient entry to [-clip_value, clip_value] (``torch.nn.utils.clip_grad_value_``)."""
    clip_value = _positive_finite("clip_value", clip_value)
    for g in grads_of(params):
        g.clamp_(min=-clip_value, max=clip_value)


def unitwise_norm(x: Tensor) -> Tensor:
    """Norm per output unit (row of a weight matrix, slice of a conv kernel); whole norm for vectors."""
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), keepdim=True)


@torch.no_grad()
def adaptive_clip(params: Params, clip_ratio: float = 0.01, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping (Brock et al. 2021): per unit, ||G_i|| <= clip_ratio * max(||W_i||, eps).

    The bound scales with the weights, so small layers are not starved and large ones not overrun.
    The paper leaves the final classifier unclipped: pass the parameters to clip.
    """
    clip_ratio = _positive_finite("clip_ratio", clip_ratio)
    eps = _positive_finite("eps", eps)
    for p in _param_list(params):
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p.detach()).clamp_min(eps) * clip_ratio
        grad_norm = unitwise_norm(p.grad)
        clipped = p.grad * (max_norm / grad_norm.clamp_min(1e-6))
        p.grad.copy_(torch.where(grad_norm > max_norm, clipped, p.grad))


@torch.no_grad()
def article_clip(params: Params, theta: float) -> None:
    """The article's ``g <- max(0, g - theta)``, entry by entry. Wrong on purpose, to be measured:
    it shifts every entry, zeroes all negative and small ones, and never bounds a large one."""
    theta = _positive_finite("theta", theta)
    for g in grads_of(params):
        g.copy_(torch.clamp_min(g - theta, 0.0))


def make_clipper(strategy: str, threshold: float = 1.0) -> Callable[[list[Tensor]], None]:
    """A clipping function of the parameter list by name: none, norm, value, agc or article."""
    if strategy not in STRATEGIES:
        raise ValueError(f"clip strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "none":
        return lambda ps: None
    _positive_finite("threshold", threshold)
    rule = RULES[strategy]
    return lambda ps: rule(ps, threshold)


# The one table of clipping rules by name: the training loop's ``clip=`` and the bench's comparisons read it.
RULES: dict[str, Callable[..., object]] = {"norm": clip_by_global_norm, "value": clip_by_value,
                                           "agc": adaptive_clip, "article": article_clip}


def layer_of(name: str) -> str:
    """Group a parameter name by layer: 'blocks.2.attn.q_proj.weight' -> 'blocks.2', 'embed.weight' -> 'embed'."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]


def by_layer(named_grads: Iterable[tuple[str, Tensor]]) -> dict[str, list[Tensor]]:
    """(parameter name, gradient) pairs grouped by layer (see ``layer_of``), in order of appearance."""
    groups: dict[str, list[Tensor]] = {}
    for name, g in named_grads:
        groups.setdefault(layer_of(name), []).append(g)
    return groups


def layer_norms(named_grads: Iterable[tuple[str, Tensor]], norm_type: float | str = 2.0) -> dict[str, float]:
    """Gradient norm per layer (see ``layer_of``) from (parameter name, gradient) pairs."""
    return {layer: float(total_norm(grads, norm_type)) for layer, grads in by_layer(named_grads).items()}


class GradNormMonitor:
    """Per-step total gradient norm (before and after clipping), optional per-layer norms, clip rate."""

    def __init__(self, per_layer: bool = False, norm_type: float | str = 2.0):
        self.per_layer, self.norm_type = per_layer, _norm_type(norm_type)
        self.total_norms: list[float] = []
        self.clipped_norms: list[float] = []
        self.clipped: list[bool] = []
        self.layer_norms: dict[str, list[float]] = {}

    @torch.no_grad()
    def observe(self, model: nn.Module, clip: Callable[[list[Tensor]], object] | None = None) -> float:
        """Measure the gradients of ``model``, apply ``clip`` to its parameters, measure again.

        Returns the total norm before clipping (the number to watch for spikes)."""
        named = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
        norms = [total_norm([p.grad for _, p in named], self.norm_type)]
        groups = by_layer((n, p.grad) for n, p in named) if self.per_layer else {}
        norms += [total_norm(grads, self.norm_type) for grads in groups.values()]  # before clipping, like the total
        if clip is not None:
            clip([p for _, p in model.named_parameters()])
            norms.append(total_norm([p.grad for _, p in named], self.norm_type))
        values = torch.stack([n.float().to(norms[0].device) for n in norms]).tolist()  # one device sync a step
        before, after = values[0], (values[-1] if clip is not None else values[0])
        for layer, norm in zip(groups, values[1:]):
            self.layer_norms.setdefault(layer, []).append(norm)
        self.total_norms.append(before)
        self.clipped_norms.append(after)
        self.clipped.append(clip is not None and math.isfinite(before) and abs(after - before) > 1e-6 * before)
        return before

    @property
    def clipped_fraction(self) -> float:
        """Share of steps where clipping changed the gradient norm (by more than 1e-6 relative)."""
        return sum(self.clipped) / len(self.clipped) if self.clipped else 0.0

    def state_dict(self) -> dict:
        return {"total_norms": list(self.total_norms), "clipped_norms": list(self.clipped_norms),
                "clipped": list(self.clipped), "layer_norms": {k: list(v) for k, v in self.layer_norms.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.total_norms = list(state["total_norms"])
        self.clipped_norms = list(state["clipped_norms"])
        self.clipped = list(state["clipped"])
        self.layer_norms = {k: list(v) for k, v in state["layer_norms"].items()}
