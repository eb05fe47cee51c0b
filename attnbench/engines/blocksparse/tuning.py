"""Tuning constants of the block-sparse engine (read at call time, so a test or a tuning script
may set them on this module: ``tuning.THREADS = 3``)."""
from __future__ import annotations

SCORE_BYTES = 2 << 20  # per-head score tile of a gather chunk (C * rb * L * 4 bytes)
BAND_SCORE_BYTES = 8 << 20  # ... of a band chunk (no copies to keep in cache: fewer, larger tasks)
MAX_CHUNK_BLOCKS = 64
DENSE_RATIO = 1.25  # a query block goes dense when its key range is at most this x its own keys
DENSE_MIN_BLOCKS = 4  # ... and it reads at least this many blocks
DENSE_MAX_ROWS = 2048
DENSE_MASK_ELEMS = 1 << 24  # rows x key range of one dense chunk
DENSE_CACHE_ELEMS = 1 << 21  # dense masks up to this size are kept in the plan (per dtype)
MAX_REGIONS = 4
THREADS: int | None = None  # inference worker threads; None = torch.get_num_threads()
