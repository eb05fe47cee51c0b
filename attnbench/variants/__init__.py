"""Built-in variants, one module per family. Importing this package registers them all."""
from attnbench.variants import full, sdpa, flex, mqa, xl, linear, lsh  # noqa: F401
from attnbench.variants import window, sparse, swin  # noqa: F401  (patterns: @dense/@flex/@sdpa_mask)
from attnbench.variants import xformers  # noqa: F401  (after window: registers sliding_window/block_local@xformers)
