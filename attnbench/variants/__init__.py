"""Built-in variants, one module per family. Importing this package registers them all."""
from attnbench.variants import full, sdpa, flex, xformers, mqa  # noqa: F401
