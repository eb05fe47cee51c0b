"""attnbench: benchmark and analysis suite for efficient attention.

Public API: the registry (``register``, ``get``, ``names``, ``VariantSpec``, ``AttnOutput``)
and the dense reference (``attnbench.reference``).
"""
from attnbench.registry import AttnOutput, Shape, Unsupported, VariantSpec, all_specs, get, names, register

__all__ = ["AttnOutput", "Shape", "Unsupported", "VariantSpec", "all_specs", "get", "names", "register"]
__version__ = "0.1.0"
