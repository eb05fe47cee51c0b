"""Built-in variants: pattern x engine pairings and the other families, one module each.

Importing this package registers them all (``attnbench.catalog.load`` does, once); the modules
import what they need and nothing depends on the order below.
"""
from attnbench.variants import full, sdpa, mqa, flex, masked  # noqa: F401  dense, kv sharing, generic pattern kernels
from attnbench.variants import window, sparse, swin, xformers  # noqa: F401  @blocked / @xformers pairings
from attnbench.variants import linear, lsh, sra, xl  # noqa: F401  approximate, reduced and stateful families
