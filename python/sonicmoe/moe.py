"""The MoE layer as an nn.Module, with upstream SonicMoE's constructor and
forward signature."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from . import functional as Fm
from .enums import (ActivationType, KernelBackendMoE, RouterOrder, TokenRounding,
                    as_activation, as_backend, as_router_order, as_token_rounding, is_glu)


class Experts(nn.Module):
    """E stacked linear maps: weight [E, out_features, in_features], bias
    [E, out_features] (optional), initialised N(0, std) and zeros."""

    def __init__(self, num_experts: int, in_features: int, out_features: int,
                 add_bias: bool = True, std: float | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_experts, out_features)) if add_bias else None
        self.std = std
        self.num_experts = num_experts
        self.in_features = in_features
        self.out_features = out_features
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=0.02 if self.std is None else self.std)
        if self.bias is not None:
            self.bias.zero_()

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, in_features={self.in_features}, "
                f"out_features={self.out_features}")


class MoE(nn.Module):
    """Token-choice Mixture-of-Experts layer.

    router = nn.Linear(hidden_size, num_experts, bias=False), computed in
    PyTorch; top-K, softmax, routing and the experts run in the backend that
    forward() names (default: the sonicmoe library).

    Parameters: ``router.weight`` [E, H]; ``c_fc.weight`` [E, R, H] (R = 2I,
    gate/up rows interleaved, for gated activations; I otherwise),
    ``c_fc.bias`` [E, R]; ``c_proj.weight`` [E, H, I], ``c_proj.bias`` [E, H].
    The library backend needs bf16 parameters and input
    (``moe.to(torch.bfloat16)``); the torch backend takes any float dtype.

    Keyword-only extras beyond upstream: ``router_order`` and
    ``renormalize`` (softmax-then-top-K routers, as in Qwen3 / DeepSeek);
    ``token_rounding`` ('nearest', 'up', 'down'; None: plain top-K) and
    ``rounding_tile`` (128): after the router each expert's count is rounded
    to a multiple of the tile (functional.round_routing) and the experts run
    on that general routing, so that no grouped-GEMM tile is partly empty.
    Kept picks' scores pass their gradient to the router; pairs that rounding
    added score the raw softmax probability and pass none (constants)."""

    def __init__(self, num_experts: int, num_experts_per_tok: int, hidden_size: int,
                 intermediate_size: int,
                 activation_function: ActivationType | str = ActivationType.SWIGLU,
                 add_bias: bool = False, std: float = 0.02, *,
                 router_order: RouterOrder | str = RouterOrder.TOPK_THEN_SOFTMAX,
                 renormalize: bool = False,
                 token_rounding: TokenRounding | str | None = None,
                 rounding_tile: int = 128) -> None:
        super().__init__()
        act = as_activation(activation_function, "activation_function")
        if not 1 <= num_experts_per_tok <= num_experts:
            raise ValueError(f"sonicmoe.MoE: argument 'num_experts_per_tok': expected a value in "
                             f"[1, {num_experts}], got {num_experts_per_tok}")
        self.num_experts = num_experts
        self.top_k = num_experts_per_tok
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.activation_function = act
        self.router_order = as_router_order(router_order)
        self.renormalize = bool(renormalize)
        self.token_rounding = (None if token_rounding is None
                               else as_token_rounding(token_rounding, "token_rounding"))
        if isinstance(rounding_tile, bool) or not isinstance(rounding_tile, int) \
                or rounding_tile < 1:
            raise ValueError(f"sonicmoe.MoE: argument 'rounding_tile': expected a positive int, "
                             f"got {rounding_tile!r}")
        self.rounding_tile = rounding_tile
        self.router = nn.Linear(hidden_size, num_experts, bias=False)
        self.c_fc = Experts(num_experts, hidden_size,
                            2 * intermediate_size if is_glu(act) else intermediate_size,
                            add_bias=add_bias, std=std)
        self.c_proj = Experts(num_experts, intermediate_size, hidden_size, add_bias=add_bias,
                              std=std)

    def forward(self, hidden_states: torch.Tensor,
                kernel_backend_moe: KernelBackendMoE | str = KernelBackendMoE.sonicmoe,
                is_inference_mode: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states [..., H] -> (output [..., H], aux_loss).

        aux_loss is the Switch load-balancing loss (functional.switch_aux_loss),
        None when `is_inference_mode`. In eval mode (``not self.training``)
        the library keeps nothing for backward."""
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, self.hidden_size)
        out, logits, freq = Fm.moe_TC_softmax_topk_layer(
            x, self.router.weight, self.c_fc.weight, self.c_fc.bias, self.c_proj.weight,
            self.c_proj.bias, self.top_k, self.activation_function,
            is_inference_mode or not self.training,
            router_order=self.router_order, renormalize=self.renormalize,
            kernel_backend_moe=as_backend(kernel_backend_moe),
            token_rounding=self.token_rounding, rounding_tile=self.rounding_tile)
        if out.shape != shape:
            # Not a view: FSDP2 warns about (and cannot hook in-place ops
            # on) a module output that is a view. The library's output is a
            # fresh tensor nothing else refers to, the case _unsafe_view is for.
            out = torch.ops.aten._unsafe_view(out, shape)
        aux_loss = None if is_inference_mode else Fm.switch_aux_loss(logits, freq)
        return out, aux_loss

    @torch.no_grad()
    def load_hf_experts(self, gate_proj: torch.Tensor | Sequence[torch.Tensor] | None,
                        up_proj: torch.Tensor | Sequence[torch.Tensor],
                        down_proj: torch.Tensor | Sequence[torch.Tensor], *,
                        gate_bias=None, up_bias=None, down_bias=None,
                        router_weight: torch.Tensor | None = None) -> "MoE":
        """Load Hugging Face style expert weights.

        gate_proj, up_proj: [E, I, H] (or E tensors [I, H], the weights of
        per-expert nn.Linear(H, I)); down_proj: [E, H, I] (or E x [H, I]).
        Gated activations need gate_proj and up_proj; they are concatenated
        and interleaved (row 2j gate, 2j+1 up) with the library's
        interleave_gate_up. Non-gated ones take up_proj alone (gate_proj None).
        Optional biases: gate_bias, up_bias [E, I], down_bias [E, H];
        router_weight [E, H]. Values are copied into the existing parameters
        (their dtype and device are kept). Returns self."""
        fn = "MoE.load_hf_experts"
        E, H, I = self.num_experts, self.hidden_size, self.intermediate_size

        def stack(t, name, shape):
            if t is None:
                return None
            if isinstance(t, (list, tuple)):
                if len(t) != E:
                    raise ValueError(f"sonicmoe.{fn}: argument '{name}': expected {E} "
                                     f"per-expert tensors, got {len(t)}")
                t = torch.stack([torch.as_tensor(v) for v in t])
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"sonicmoe.{fn}: argument '{name}': expected a tensor or a "
                                f"list of tensors, got {type(t).__name__}")
            if tuple(t.shape) != shape:
                raise ValueError(f"sonicmoe.{fn}: argument '{name}': expected shape {shape}, "
                                 f"got {tuple(t.shape)}")
            return t

        gated = is_glu(self.activation_function)
        up = stack(up_proj, "up_proj", (E, I, H))
        down = stack(down_proj, "down_proj", (E, H, I))
        if up is None or down is None:
            raise ValueError(f"sonicmoe.{fn}: up_proj and down_proj are required")
        gate = stack(gate_proj, "gate_proj", (E, I, H))
        if gated and gate is None:
            raise ValueError(f"sonicmoe.{fn}: argument 'gate_proj': required for the gated "
                             f"activation {self.activation_function.value}")
        if not gated and gate is not None:
            raise ValueError(f"sonicmoe.{fn}: argument 'gate_proj': must be None for the "
                             f"non-gated activation {self.activation_function.value}")
        w = self.c_fc.weight
        if gated:
            cat = torch.cat([gate, up], dim=1).to(device=w.device, dtype=w.dtype)
            w.copy_(Fm.interleave_gate_up(cat.contiguous()))
        else:
            w.copy_(up)
        self.c_proj.weight.copy_(down)
        gb = stack(gate_bias, "gate_bias", (E, I))
        ub = stack(up_bias, "up_bias", (E, I))
        db = stack(down_bias, "down_bias", (E, H))
        if any(b is not None for b in (gb, ub, db)) and self.c_fc.bias is None:
            raise ValueError(f"sonicmoe.{fn}: biases given to a layer built with add_bias=False")
        if self.c_fc.bias is not None:
            b = self.c_fc.bias
            if gated and (gb is not None or ub is not None):
                gb = torch.zeros_like(ub) if gb is None else gb
                ub = torch.zeros_like(gb) if ub is None else ub
                cat = torch.cat([gb.to(b), ub.to(b)], dim=1)
                b.copy_(Fm.interleave_gate_up(cat.contiguous()))
            elif not gated and ub is not None:
                b.copy_(ub)
            if db is not None:
                self.c_proj.bias.copy_(db)
        if router_weight is not None:
            self.router.weight.copy_(stack(router_weight, "router_weight", (E, H)))
        return self

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, top_k={self.top_k}, "
                f"activation={self.activation_function.value}, "
                f"router_order={self.router_order.name.lower()}, renormalize={self.renormalize}"
                + ("" if self.token_rounding is None else
                   f", token_rounding={self.token_rounding.name.lower()}, "
                   f"rounding_tile={self.rounding_tile}"))
