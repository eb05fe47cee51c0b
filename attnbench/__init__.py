"""attnbench: benchmark and analysis suite for efficient attention.

Public API: registration (``register``, ``VariantSpec``, ``AttnOutput``, ``Shape``, ``Unsupported``),
lookup through the one loader (``get``, ``names``, ``select``, ``all_specs``) and the dense
reference (``attnbench.reference``).
"""
from attnbench.case import AttnOutput, Case, Shape, Unsupported
from attnbench.catalog import all_specs, get, names, select
from attnbench.registry import VariantSpec, register

__all__ = ["AttnOutput", "Case", "Shape", "Unsupported", "VariantSpec", "all_specs", "get", "names", "register",
           "select"]
__version__ = "0.1.0"
