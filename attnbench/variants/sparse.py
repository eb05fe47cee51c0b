"""Sparse patterns with global tokens or block layouts: Longformer, BigBird, block-sparse.

Definitions (qp = i + M - N is the query's position among the keys; blocks are in key space):

* ``longformer``: sliding window |qp - j| <= window, plus global tokens (``global_tokens``: an
  int k = the first k positions, or a list of positions): a global query attends to every key
  and every query attends to the global keys.
* ``bigbird``: blocks of ``block`` tokens; a query block attends to its 3-block window
  (``window_blocks``), to ``global_blocks`` global blocks (the first ceil(g/2) and last
  floor(g/2) blocks, as in BigBird's ITC code; global blocks also attend everywhere), and to
  ``random_blocks`` random blocks drawn once per (shape, ``seed``) among the others.
* ``block_sparse``: any block layout [ceil(N'/b), ceil(M/b)] (N' = query positions in key
  space); presets ``strided`` and ``fixed`` are the Sparse Transformer's (Child et al. 2019)
  at block granularity with ``stride`` blocks (``fixed``: ``summary`` last blocks of each
  stride segment are attended by everyone); ``stride='auto'`` is round(sqrt(key blocks)), the
  paper's stride ~ sqrt(n), so either preset does O(n sqrt(n)) work.
"""
from __future__ import annotations

import functools

import torch

from attnbench.patterns import Pattern
from attnbench.variants.masked import register_pattern


def global_positions(m: int, spec) -> torch.Tensor:
    """Global token positions from an int (the first k) or a list, kept inside [0, m)."""
    idx = torch.arange(min(int(spec), m)) if isinstance(spec, int) else torch.tensor(sorted(set(spec)), dtype=torch.long)
    return idx[(idx >= 0) & (idx < m)]


def _longformer(n, m, params, device):
    w, off = int(params["window"]), m - n
    flags = torch.zeros(m, dtype=torch.bool, device=device)
    flags[global_positions(m, params["global_tokens"]).to(device)] = True

    def mask_mod(b, h, q_idx, kv_idx):
        qp = q_idx + off
        d = qp - kv_idx
        return ((d <= w) & (d >= -w)) | flags[kv_idx] | flags[qp]

    return mask_mod


@functools.lru_cache(maxsize=64)
def bigbird_layout(nbk: int, window_blocks: int, global_blocks: int, random_blocks: int, seed: int) -> torch.Tensor:
    """Bool [nbk, nbk] block layout (query block in key space x key block), cached per shape+seed."""
    with torch.inference_mode(False):  # cached: never an inference tensor (autograd may use it later)
        return _bigbird_layout(nbk, window_blocks, global_blocks, random_blocks, seed)


def _bigbird_layout(nbk: int, window_blocks: int, global_blocks: int, random_blocks: int, seed: int) -> torch.Tensor:
    i = torch.arange(nbk)
    half = window_blocks // 2
    window = (i[:, None] - i[None, :]).abs() <= half
    g_first, g_last = (global_blocks + 1) // 2, global_blocks // 2
    is_global = (i < g_first) | (i >= nbk - g_last)
    fixed = window | is_global[None, :] | is_global[:, None]
    # Random blocks: r per query block among the blocks not already attended (seeded).
    gen = torch.Generator().manual_seed(seed)
    score = torch.rand(nbk, nbk, generator=gen).masked_fill(fixed, -1.0)
    r = min(random_blocks, nbk)
    top = score.topk(r, dim=1) if r > 0 else None
    rand = torch.zeros(nbk, nbk, dtype=torch.bool)
    if top is not None:
        rand.scatter_(1, top.indices, top.values >= 0)  # only real candidates
    return fixed | rand


def _bigbird(n, m, params, device):
    bs, off = int(params["block"]), m - n
    nbk = -(-m // bs)
    layout = bigbird_layout(nbk, int(params["window_blocks"]), int(params["global_blocks"]),
                            int(params["random_blocks"]), int(params["seed"])).to(device)

    def mask_mod(b, h, q_idx, kv_idx):
        return layout[(q_idx + off) // bs, kv_idx // bs]

    return mask_mod


def block_stride(stride, nbk: int) -> int:
    """The preset's stride in blocks: an int >= 1, or 'auto' = round(sqrt(key blocks)), the
    Sparse Transformer's choice (stride ~ sqrt(n)) that makes the pattern O(n sqrt(n))."""
    if stride == "auto":
        return max(1, round(nbk ** 0.5))
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"block_sparse stride {stride!r}: allowed: an int >= 1 or 'auto' (sqrt of the key blocks)")
    return stride


def block_sparse_layout(nbq: int, nbk: int, params) -> torch.Tensor:
    """Bool [nbq, nbk] layout from a preset (strided | fixed) or an explicit matrix."""
    lay = params["layout"]
    if not isinstance(lay, str):
        t = torch.as_tensor(lay, dtype=torch.bool)
        if t.shape != (nbq, nbk):
            raise ValueError(f"block_sparse layout has shape {tuple(t.shape)}, this case needs {(nbq, nbk)} "
                             f"(ceil(positions / block))")
        return t
    s = block_stride(params["stride"], nbk)
    qb = torch.arange(nbq)[:, None] + (nbk - nbq)  # query blocks in key-block space
    kb = torch.arange(nbk)[None, :]
    if lay == "strided":
        return ((qb - kb).abs() < s) | ((qb - kb) % s == 0)
    if lay == "fixed":
        c = int(params.get("summary", 1))
        return (qb // s == kb // s) | (kb % s >= s - c)
    raise ValueError(f"block_sparse layout {lay!r}: allowed: 'strided', 'fixed' or a bool matrix")


def _block_sparse(n, m, params, device):
    bs, off = int(params["block"]), m - n
    nbk = -(-m // bs)
    layout = block_sparse_layout(nbk, nbk, params).to(device)

    def mask_mod(b, h, q_idx, kv_idx):
        return layout[(q_idx + off) // bs, kv_idx // bs]

    return mask_mod


LONGFORMER = register_pattern(Pattern(
    name="longformer", family="sparse", make_mask=_longformer,
    defaults={"window": 256, "global_tokens": 16}, decode=True,
    doc="sliding window plus global tokens (attend to / attended by all)",
    paper="Beltagy et al. 2020, Longformer",
))
BIGBIRD = register_pattern(Pattern(
    name="bigbird", family="sparse", make_mask=_bigbird,
    defaults={"block": 64, "window_blocks": 3, "global_blocks": 2, "random_blocks": 3, "seed": 0},
    doc="BigBird ITC: 3-block window, global blocks, seeded random blocks",
    paper="Zaheer et al. 2020, Big Bird",
))
BLOCK_SPARSE = register_pattern(Pattern(
    name="block_sparse", family="sparse", make_mask=_block_sparse,
    defaults={"block": 64, "layout": "strided", "stride": "auto", "summary": 1},
    doc="block layout matrix; presets: Sparse Transformer strided / fixed (stride 'auto' = sqrt(n / block) blocks)",
    paper="Child et al. 2019, Sparse Transformers",
))


# ---------------------------------------------------------------------------------------------
# @blocked kernels: the block-sparse engine (attnbench.blocked) fed with each pattern's layout.
# Plans (index tensors and the masks of partially allowed column ranges) are built once per
# (shape, params, causal) and cached; the kernels' FLOPs are the plan's computed score pairs.

from attnbench import blocked as _blocked  # noqa: E402
from attnbench.registry import AttnOutput, Shape, VariantSpec, add  # noqa: E402


def _pattern_mask_fn(pattern: Pattern, n: int, m: int, params: dict):
    """The pattern's mask_mod as f(query position in key space, key position)."""
    mask_mod = pattern.make_mask(n, m, params, None)
    off = m - n
    zero = torch.zeros((), dtype=torch.long)
    return lambda qp, kp: mask_mod(zero, zero, qp - off, kp)


def longformer_block(window: int) -> int:
    """Block size of longformer@blocked: about a quarter of the window, 8..64."""
    b = 8
    while b < 64 and 4 * b < window:
        b *= 2
    return b


def _longformer_layout(n: int, m: int, window: int, b: int) -> torch.Tensor:
    """Key blocks holding a key within ``window`` of some query of the query block."""
    off, nbk = m - n, -(-m // b)
    qb = torch.arange(off // b, nbk)
    qlo = torch.clamp(qb * b, min=off)
    qhi = torch.clamp((qb + 1) * b, max=m) - 1
    kb = torch.arange(nbk)
    return ((kb * b + b - 1)[None, :] >= (qlo - window)[:, None]) & ((kb * b)[None, :] <= (qhi + window)[:, None])


@functools.lru_cache(maxsize=32)
def _longformer_plan(n: int, m: int, frozen: tuple, causal: bool, block: int | None,
                     dense: str = "auto", band: bool = True, score_bytes: int | None = None) -> _blocked.BlockPlan:
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in frozen}
    w = int(params["window"])
    b = int(block) if block else longformer_block(w)
    g = global_positions(m, params["global_tokens"])
    heavy = g[g >= m - n] - (m - n)  # global queries attend to every key: dense rows
    return _blocked.build_plan(n, m, b, _longformer_layout(n, m, w, b),
                               _pattern_mask_fn(LONGFORMER, n, m, params), causal=causal,
                               extra_keys=g, heavy_rows=heavy, dense=dense, band=band, score_bytes=score_bytes)


@functools.lru_cache(maxsize=32)
def _bigbird_plan(n: int, m: int, frozen: tuple, causal: bool, dense: str = "auto",
                  band: bool = True, score_bytes: int | None = None) -> _blocked.BlockPlan:
    params = dict(frozen)
    b = int(params["block"])
    nbk = -(-m // b)
    layout = bigbird_layout(nbk, int(params["window_blocks"]), int(params["global_blocks"]),
                            int(params["random_blocks"]), int(params["seed"]))[(m - n) // b:]
    return _blocked.build_plan(n, m, b, layout, _pattern_mask_fn(BIGBIRD, n, m, params),
                               causal=causal, dense=dense, band=band, block_exact=True,
                               score_bytes=score_bytes)


@functools.lru_cache(maxsize=32)
def _block_sparse_plan(n: int, m: int, frozen: tuple, causal: bool, dense: str = "auto",
                       band: bool = True, score_bytes: int | None = None) -> _blocked.BlockPlan:
    params = {k: (torch.tensor(v, dtype=torch.bool) if isinstance(v, tuple) else v) for k, v in frozen}
    b = int(params["block"])
    nbk = -(-m // b)
    layout = block_sparse_layout(nbk, nbk, params)[(m - n) // b:]
    return _blocked.build_plan(n, m, b, layout, _pattern_mask_fn(BLOCK_SPARSE, n, m, params),
                               causal=causal, dense=dense, band=band, block_exact=True,
                               score_bytes=score_bytes)


def _frozen(params: dict, keys) -> tuple:
    """Hashable params of the pattern (a layout matrix becomes nested tuples)."""
    out = {}
    for k in keys:
        v = params[k]
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        if isinstance(v, (list, tuple)):
            v = tuple(tuple(r) if isinstance(r, (list, tuple)) else r for r in v)
        out[k] = v
    return tuple(sorted(out.items()))


def _plan(name: str, n: int, m: int, causal: bool, params: dict) -> _blocked.BlockPlan:
    """The cached plan of ``name@blocked`` for this case. Engine knobs (tests, tuning):
    ``dense`` ('auto' | 'never' | 'all'), ``band`` (bool), ``score_bytes`` (chunk size);
    longformer also ``block``."""
    if n > m:
        raise ValueError(f"{name}@blocked needs N <= M (got N={n} queries, M={m} keys)")
    knobs = dict(dense=params.get("dense", "auto"), band=bool(params.get("band", True)),
                 score_bytes=params.get("score_bytes"))
    params = {**PATTERNS_BY_NAME[name].defaults, **params}
    if name == "longformer":
        return _longformer_plan(n, m, _frozen(params, LONGFORMER.defaults), causal, params.get("block"), **knobs)
    if name == "bigbird":
        return _bigbird_plan(n, m, _frozen(params, BIGBIRD.defaults), causal, **knobs)
    return _block_sparse_plan(n, m, _frozen(params, BLOCK_SPARSE.defaults), causal, **knobs)


def _make_blocked(name: str):
    def forward(q, k, v, *, causal=False, state=None, need_weights=False, **params) -> AttnOutput:
        """q [B, H, N, D], k/v [B, Hkv, M, D]; gathered blocks per query block, dense global rows."""
        n, m = q.shape[2], k.shape[2]
        if n == 0 or m == 0:
            return AttnOutput(out=q.new_zeros(q.shape))
        return AttnOutput(out=_blocked.attention(q, k, v, _plan(name, n, m, causal, params)))

    return forward


def _defaults_plan(name: str, defaults: dict, shape: Shape):
    """The block plan of ``shape`` with the spec's defaults; None where @blocked does not run
    (N > M) or there is nothing to do."""
    if shape.seq_len > shape.kv_len or not shape.seq_len or not shape.kv_len:
        return None
    return _plan(name, shape.seq_len, shape.kv_len, shape.causal, defaults)


def _blocked_flops(name: str, defaults: dict):
    def flops(shape: Shape) -> float:
        plan = _defaults_plan(name, defaults, shape)
        return 0.0 if plan is None else _blocked.flops(plan, shape.batch, shape.heads, shape.head_dim)

    return flops


def _blocked_memory(name: str, defaults: dict):
    def memory(shape: Shape) -> float:
        plan = _defaults_plan(name, defaults, shape)
        if plan is None:
            return 0.0
        b = _blocked.peak_bytes(plan, shape.batch, shape.heads, shape.kv_heads, shape.head_dim,
                                shape.element_size, grad=shape.needs_grad)
        return b / 2 if shape.needs_grad else b  # the registry doubles backward modes itself

    return memory


def _blocked_reasons(shape: Shape) -> list[str]:
    if shape.seq_len > shape.kv_len:
        return [f"@blocked aligns query blocks with key blocks and needs N <= M "
                f"(got N={shape.seq_len}, M={shape.kv_len})"]
    return []


PATTERNS_BY_NAME = {p.name: p for p in (LONGFORMER, BIGBIRD, BLOCK_SPARSE)}
_BLOCKED_DOCS = {
    "longformer": ("O(n w d)", "band of key blocks read through strided views (no copy) plus the "
                   "global key columns (masked where the band holds them); global query rows dense"),
    "bigbird": ("O(n b d (w + g + r))", "window/global/random key blocks gathered per query block; "
                "global query blocks as dense rows"),
    "block_sparse": ("O(nnz(layout) b^2 d)", "(presets with stride 'auto': O(n sqrt(n) d)); the layout's key blocks gathered per query block "
                     "(a band of blocks read in place); near-dense rows as dense SDPA rows"),
}
for _p in (LONGFORMER, BIGBIRD, BLOCK_SPARSE):
    _time, _how = _BLOCKED_DOCS[_p.name]
    add(VariantSpec(
        name=f"{_p.name}@blocked", forward=_make_blocked(_p.name), family="sparse", exact=True,
        reference=_p.name, defaults=dict(_p.defaults), time=_time, memory="O(n d)",
        flops_fn=_blocked_flops(_p.name, dict(_p.defaults)),
        memory_fn=_blocked_memory(_p.name, dict(_p.defaults)), extra_reasons=_blocked_reasons,
        default=True, doc=f"{_p.doc}; block-sparse engine: {_how}", paper=_p.paper,
    ))
