"""sonicmoe: the PyTorch front end of libsonicmoe, a fast, memory-efficient
Mixture-of-Experts training layer.

The package is pure Python: it drives the library's C ABI with ctypes
(``sonicmoe._lib``), registers its calls as torch.library custom ops in the
``sonicmoe`` namespace (``sonicmoe.ops``), and mirrors the API of the
upstream SonicMoE package (``MoE``, ``moe_TC_softmax_topk_layer``,
``moe_general_routing_inputs``, ``ActivationType``, ``KernelBackendMoE``).
See docs/PYTHON.md.
"""

from . import ops  # noqa: F401  (registers the custom ops)
from ._lib import (LibraryNotFoundError, SonicMoEError, SonicMoEInvalidArgument,
                   available as library_available, library_path)
from .enums import ActivationType, KernelBackendMoE, RouterOrder, TokenRounding, is_glu
from .functional import (deinterleave_gate_up, interleave_gate_up, moe_general_routing_inputs,
                         moe_TC_softmax_topk_layer, round_routing, softmax_topk_router,
                         switch_aux_loss)
from .moe import MoE, Experts

__version__ = "0.1.0"


def library_version() -> str:
    """The loaded libsonicmoe's version string."""
    from . import _lib

    return _lib.version()


__all__ = [
    "ActivationType", "KernelBackendMoE", "RouterOrder", "TokenRounding", "is_glu",
    "MoE", "Experts",
    "moe_TC_softmax_topk_layer", "moe_general_routing_inputs", "softmax_topk_router",
    "round_routing",
    "switch_aux_loss", "interleave_gate_up", "deinterleave_gate_up",
    "SonicMoEError", "SonicMoEInvalidArgument", "LibraryNotFoundError",
    "library_available", "library_path", "library_version",
]
