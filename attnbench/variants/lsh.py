"""Reformer LSH attention (Kitaev, Kaiser, Levskaya 2020), shared-QK, vectorized PyTorch.

``lsh@shared_qk`` — what it computes, for q [B, H, N, D] and v [B, Hkv, N, D] (Hkv divides H):

* **Shared QK.** Keys are the L2-normalized queries, k_j = q_j / ||q_j||; the ``k`` argument is
  ignored (Reformer computes one projection for both). Scores are q_i . k_j / sqrt(D).
* **Angular LSH.** Round r (of ``n_hashes``) draws a random matrix R_r [D, n_buckets / 2] and
  puts token i in bucket argmax([q_i R_r ; -q_i R_r]). Rotations come from
  ``torch.Generator().manual_seed(seed)`` (drawn as [D, n_hashes, n_buckets / 2] on the CPU,
  then moved), shared by every batch element and head, as in reformer-pytorch's default: the same
  seed and shape give the same rotations on every call, device and dtype, in the kernel and in
  its dense definition. Buckets are computed from q rounded to float32 whatever the input
  dtype, so fp64, fp32 and the references all see the same buckets.
* **Sort and chunk.** Each round sorts the tokens by (bucket, position) and cuts the sorted
  order into chunks of ``c = min(bucket_size, N)`` slots. N is padded to a multiple of c; pad
  tokens get an extra bucket (``n_buckets``) so they sort last, and are never attended to.
  ``n_buckets`` defaults to N_pad / c rounded up to even (reformer-pytorch's rule: an average
  bucket fills one chunk; the paper and trax v2 use twice as many, pass ``n_buckets=`` for it).
* **Look one back.** As in trax and reformer-pytorch, the chunks of all rounds form one
  sequence (round-major) and each chunk attends to itself and to the chunk before it, with
  wraparound: the first chunk of round r looks back to the last chunk of round r - 1 (round 0
  to round n_hashes - 1). A key that appears in both chunks is attended twice (counted twice
  in the softmax), as both references do by default (``allow_duplicate_attention=True``).
* **Masks** (those of trax's ``mask_self_attention`` and reformer-pytorch's ``LSHAttention``):
  causal by original position (key j > query i is masked); attention to self gets the score
  SELF_SCORE = -5e4 (reformer-pytorch's value, safe in fp16; the paper and trax use -1e5), so a
  token attends to itself only when nothing else is allowed. Keys in another bucket are *not*
  masked (both references default to ``attend_across_buckets=True``; the paper's definition,
  P_i = keys of the same bucket, would mask them). Causal caveat, shared with both references:
  a query never reads a later key, but which earlier keys share its chunk depends on the
  buckets of all tokens, later ones included.
* **Rounds.** Each round gives o_r and its log-sum-exp l_r; out = sum_r softmax_r(l_r) o_r —
  the softmax over the union of the rounds' key sets, duplicates counted per round.

Cost per (batch, head): time O(n_hashes N (2c + n_buckets) D) (scores and values on
[c, 2c] blocks, plus hashing; n_buckets ~ N / c makes hashing O(N^2 D / c)) + sort
O(n_hashes N log N); memory O(n_hashes N c) for the blocks' scores under autograd, and
O(n_hashes N D) plus one tile of blocks without it.

``reference_fn`` is the same computation done densely from the same buckets (an [N, N]
multiplicity matrix per round, no chunking, no look-back gathers); ``target_fn`` is exact
shared-QK softmax attention with the same self rule — what LSH approximates. ``weights_fn``
gives the effective weights: the rounds combined are one softmax over their bucket-mates with
multiplicities summed.
Not supported: N != M (cross attention) and decode (keys are the queries themselves; a decode
step would need the cached queries and their hashes).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from attnbench import params as P
from attnbench.case import Shape, Unsupported
from attnbench.engines import pages
from attnbench.registry import AttnOutput, VariantSpec, add
from attnbench.tolerance import Tolerance

SELF_SCORE = -5e4  # score of a token against itself (reformer-pytorch's TOKEN_SELF_ATTN_VALUE)
PAPER = "Kitaev, Kaiser, Levskaya 2020, Reformer: The Efficient Transformer"
DEFAULTS = {"bucket_size": 64, "n_hashes": 4, "seed": 0, "n_buckets": None}
# Without autograd, hashing and blocks run in tiles through buffers allocated once per call: a
# fresh CPU allocation above glibc's 32 MiB mmap threshold page-faults on every call (~2 us per
# 4 KiB here), which made the time superlinear in N (exponent 1.42 over N = 2048..16384).
TILE_BYTES = 8 << 20  # blocks' working set per tile: few enough tiles that per-op costs stay small
HASH_BYTES = 2 << 20  # hashing's projections per chunk of rows (1..2 MiB fastest on a 2-core EPYC)
CUDA_TILE_BYTES = 256 << 20  # on a GPU a tile only bounds memory: few, large launches


def _tile_bytes(device, cpu_bytes: int | None = None) -> int:
    cpu = torch.device(device).type == "cpu"
    return (TILE_BYTES if cpu_bytes is None else cpu_bytes) if cpu else CUDA_TILE_BYTES


def _tiling(bh: int, nc: int, c: int, d: int, e: int, device) -> tuple[int, int]:
    """(blocks per tile, heads per group) without autograd: a tile's working set (gathered
    queries, keys, values, outputs, scores, masks: ~e (7 c D + 2 c^2) + 3 c^2 bytes a block)
    within the tile bytes; a group: the heads whose round fills about one tile."""
    tb = max(1, _tile_bytes(device) // (e * (7 * c * d + 2 * c * c) + 3 * c * c))
    gh = max(1, min(bh, tb // nc))
    return min(tb, gh * nc), gh


# ---------------------------------------------------------------------------------------------
# Parameters, geometry and hashing: shared by the kernel and its dense definition.
# ---------------------------------------------------------------------------------------------
def _check_params(bucket_size, n_hashes, n_buckets, seed) -> None:
    def is_int(x):
        return isinstance(x, int) and not isinstance(x, bool)

    if not is_int(bucket_size) or bucket_size < 1:
        raise ValueError(f"bucket_size={bucket_size!r}: allowed: an integer >= 1 (chunk length)")
    if not is_int(n_hashes) or n_hashes < 1:
        raise ValueError(f"n_hashes={n_hashes!r}: allowed: an integer >= 1 (hash rounds)")
    if n_buckets is not None and (not is_int(n_buckets) or n_buckets < 2 or n_buckets % 2):
        raise ValueError(f"n_buckets={n_buckets!r}: allowed: None (N / bucket_size rounded up to "
                         "even) or an even integer >= 2")
    if not is_int(seed):
        raise ValueError(f"seed={seed!r}: allowed: an integer")


def geometry(n: int, bucket_size: int, n_buckets: int | None) -> tuple[int, int, int, int]:
    """(c, n_pad, n_chunks, n_buckets) for N tokens: chunk length c = min(bucket_size, N) (a
    chunk longer than the sequence would only add masked pad slots), N padded to n_chunks c."""
    c = max(1, min(int(bucket_size), n))
    nc = -(-n // c)
    nb = int(n_buckets) if n_buckets is not None else max(2, nc + nc % 2)
    return c, nc * c, nc, nb


@functools.lru_cache(maxsize=32)
def _rotations(seed: int, n_hashes: int, d: int, half: int, device: str) -> torch.Tensor:
    """[D, n_hashes n_buckets / 2] float32 N(0, 1), drawn on the CPU from ``seed`` (so every
    device gets the same numbers), built outside inference mode so autograd calls may reuse it.
    Drawn in reformer-pytorch's layout [D, n_hashes, n_buckets / 2], so that its LSHAttention
    after ``torch.manual_seed(seed)`` hashes fp32 CPU inputs exactly as we do; columns
    r half .. (r + 1) half are round r's rotation (all rounds in one matmul)."""
    with torch.inference_mode(False):
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        rot = torch.randn(d, n_hashes, half, generator=g, dtype=torch.float32)
        return rot.reshape(d, n_hashes * half).to(device)


def lsh_buckets(q: torch.Tensor, n_hashes: int, n_buckets: int, seed: int) -> torch.Tensor:
    """Angular LSH of q [B, H, N, D]: buckets [B, H, n_hashes, N] (int64 in 0..n_buckets-1).

    bucket = argmax([x R ; -x R]) without forming the concatenation: j = argmax |x R_j|, plus
    n_buckets / 2 if x R_j < 0 (exact ties, of probability zero, go to the lower j). Computed in
    float32 from q rounded to float32, all rounds in one 2-D matmul per chunk of rows, chunks of
    HASH_BYTES of projections and their magnitudes (those of all tokens, [B H N, n_hashes
    n_buckets / 2], would be fresh 64 MiB allocations at N = 16384, page-faulted per call).
    """
    b, h, n, d = q.shape
    half = n_buckets // 2
    rot = _rotations(int(seed), int(n_hashes), d, half, str(q.device))  # [D, R half]
    x = q.detach().reshape(b * h * n, d)  # [B H N, D]
    out = torch.empty(b * h * n, n_hashes, dtype=torch.long, device=q.device)  # [B H N, R]
    rows = max(1, min(x.shape[0], _tile_bytes(q.device, HASH_BYTES) // (8 * rot.shape[1])))
    xr_buf = torch.empty(rows, rot.shape[1], device=q.device)  # [S, R half] projections
    abs_buf = torch.empty_like(xr_buf)
    int_buf = torch.empty(rows, rot.shape[1], dtype=torch.int32, device=q.device)
    top_buf = torch.empty(rows, n_hashes, 1, dtype=torch.int32, device=q.device)
    with torch.no_grad():
        for r0 in range(0, x.shape[0], rows):  # chunks of rows (not a loop over tokens)
            xs = x[r0:r0 + rows].float()  # [S, D]
            s = xs.shape[0]
            # 2-D mm of all rounds at once: ~4x faster than a broadcast matmul on CPU
            xr = torch.mm(xs, rot, out=xr_buf[:s]).view(s, n_hashes, half)  # [S, R, half]
            mag = torch.abs(xr, out=abs_buf[:s].view(s, n_hashes, half))  # [S, R, half] |x R_j|
            # a non-negative float's bits order as int32 (NaN still wins): the same argmax
            j = first_argmax(mag.view(torch.int32), top_buf[:s], int_buf[:s].view(s, n_hashes, half))  # [S, R, 1]
            neg = xr.gather(-1, j) < 0  # [S, R, 1]: -j won
            out[r0:r0 + s] = (j + neg * half).squeeze(-1)
    return out.view(b, h, n, n_hashes).permute(0, 1, 3, 2).contiguous()  # [B, H, R, N]


def first_argmax(x: torch.Tensor, top: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """``x.argmax(-1, keepdim=True)`` (int64) of non-negative int32 x [..., K]: the first index
    of the largest, in buffers ``top`` [..., 1] and ``work`` (x's shape), int32. 2x faster on a
    2-core CPU than argmax, whose reduction carries an index through every step: here the max
    is a vectorized reduction, then K - j is kept where x holds it and the largest taken."""
    k = x.shape[-1]
    torch.amax(x, -1, keepdim=True, out=top)
    torch.sub(x, top, out=work)  # <= 0; 0 where the max is (ints: -1 or less elsewhere)
    weights = torch.arange(k, 0, -1, dtype=torch.int32, device=x.device)  # K - j
    work.add_(1).clamp_(min=0).mul_(weights)  # K - j where the max is, 0 elsewhere
    return k - work.amax(-1, keepdim=True).long()  # the first j that holds the max


def key_norms(x: torch.Tensor) -> torch.Tensor:
    """||x|| over the last dim, keepdim, clamped at the dtype's smallest normal number (F.normalize's
    default 1e-12 is 0 in fp16, making 0 / 0 = NaN for a zero vector such as a pad row, whose NaN
    would reach the gradients through 0 * NaN)."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def unit_keys(x: torch.Tensor) -> torch.Tensor:
    """The shared keys x / ||x|| (F.normalize's formula, with :func:`key_norms`)."""
    return x / key_norms(x)


def _padded_buckets(q, n_hashes, nb, seed, n_pad):
    """Buckets [B, H, R, n_pad]: pad tokens in their own bucket ``nb``, sorted after all others."""
    bk = lsh_buckets(q, n_hashes, nb, seed)
    return F.pad(bk, (0, n_pad - q.shape[2]), value=nb) if n_pad > q.shape[2] else bk


def _validate(q, k, v, bucket_size, n_hashes, n_buckets, seed) -> None:
    _check_params(bucket_size, n_hashes, n_buckets, seed)
    if q.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q and v must be [B, H, N, D]; got {tuple(q.shape)} and {tuple(v.shape)}")
    if v.shape[2] != q.shape[2]:
        raise Unsupported(f"LSH shared-QK attention needs N == M (keys are the queries); got "
                          f"N={q.shape[2]}, M={v.shape[2]}")
    if q.shape[1] % v.shape[1]:
        raise ValueError(f"heads={q.shape[1]} is not a multiple of kv_heads={v.shape[1]}")


def _heads_v(v: torch.Tensor, h: int) -> torch.Tensor:
    """v [B, Hkv, N, D] -> [B, H, N, D] (query head h reads K/V head h // (H / Hkv))."""
    g = h // v.shape[1]
    return v if g == 1 else v.repeat_interleave(g, dim=1)


# ---------------------------------------------------------------------------------------------
# The kernel: hash, sort, chunk, [c, 2c] blocks round by round, rounds combined.
#
# Round r's chunks of all (batch, head) form B H nc independent blocks (block y is chunk
# y mod nc of head y // nc): block y holds c query slots and reads 2c key slots (its own chunk
# and the chunk before). Rows are copied with index_select on flattened [rows, D] views of q and
# v themselves (gather with an expanded [.., D] index is ~20x slower on CPU; pad slots read a
# real row, which the masks hide as a key and the way back drops as a query), and keys are
# normalized after the gather (q / ||q|| for all tokens would be one more full copy). With
# autograd each round runs as one batch (autograd keeps e [B H nc, c, 2c] per round for the
# backward: O(n_hashes N c)) and the rounds are combined at the end. Without it, groups of
# heads run round by round, in tiles of TILE_BYTES of working set through buffers allocated
# once; each round is gathered back to token order and folded into the output (online softmax
# over the rounds), so no allocation beyond the output and int64 index maps grows with B H N.
# ---------------------------------------------------------------------------------------------


def _blocks(bq, kk, vv, qpos, kpos, causal: bool, n: int, padded: bool, *, x0: int, nc: int,
            grad: bool, out=None, lse_out=None, s_buf=None, m_buf=None):
    """Attention inside blocks x0 .. x0 + X - 1 of one round, batched.

    bq [X, c, D] (already scaled by 1/sqrt(D)), kk [X, 2c, D] (unit keys), vv [X, 2c, D];
    qpos [X, c], kpos [X, 2c]: original positions of the slots (pads: >= n). Block x is chunk
    x mod nc of its round: the first chunk (x mod nc = 0) looks back into another round, the
    last holds the round's pads. Returns o [X, c, D] and lse [X, c] (into ``out`` / ``lse_out``).
    """
    x, c = bq.shape[0], bq.shape[1]
    s = torch.bmm(bq, kk.transpose(1, 2)) if s_buf is None else \
        torch.bmm(bq, kk.transpose(1, 2), out=s_buf[:x])  # [X, c, 2c]
    first = (-x0) % nc  # the tile's first "first chunk"; they recur every nc blocks
    last = (nc - 1 - x0) % nc
    # Masks, in place on the matmul's output (autograd keeps only the masks). Self: the
    # own-chunk diagonal, and in a round's first chunk a token met again in the look-back half.
    s[:, :, :c].diagonal(dim1=1, dim2=2).fill_(SELF_SCORE)
    with torch.no_grad():
        again = kpos[first::nc, c:].unsqueeze(1) == qpos[first::nc].unsqueeze(2)
    s[first::nc, :, c:].masked_fill_(again, SELF_SCORE)
    if causal:  # pad keys sit past every real query, so this masks them too
        with torch.no_grad():
            later = kpos.unsqueeze(1) > qpos.unsqueeze(2)
        s.masked_fill_(later, float("-inf"))
    elif padded:  # pads sort last: the last chunk's own half, the next (first) chunk's look-back
        with torch.no_grad():
            pad_own = (kpos[last::nc, :c] >= n).unsqueeze(1)
            pad_back = (kpos[first::nc, c:] >= n).unsqueeze(1)
        s[last::nc, :, :c].masked_fill_(pad_own, float("-inf"))
        s[first::nc, :, c:].masked_fill_(pad_back, float("-inf"))
    # Every row keeps a finite score (its self slot, or a real token of its chunk), so the row
    # max is finite. Softmax as exp(s - max), normalized on the [c, D] outputs, and the
    # log-sum-exp from the same sum. Subtracting the max (not the lse) keeps a row whose only
    # key is itself exact: -5e4 + log 2 would lose ~4e-3 to rounding in fp32 (reformer-pytorch
    # does lose it). The max is a constant for autograd (it cancels); autograd keeps e alone.
    with torch.no_grad():
        m = s.amax(dim=-1, keepdim=True) if m_buf is None else \
            torch.amax(s, dim=-1, keepdim=True, out=m_buf[:x])
    if grad:
        e = torch.exp(s - m)
        ssum = e.sum(dim=-1, keepdim=True)
        o = torch.bmm(e, vv) / ssum
        return o, (m + torch.log(ssum)).squeeze(-1)
    # Without autograd: one fused softmax in place; its largest probability is exp(m - lse),
    # so lse = m - log(max p) (max p >= 1 / 2c: no cancellation; a self-only row gets m exactly).
    p = torch.softmax(s, dim=-1, out=s)
    o = torch.bmm(p, vv) if out is None else torch.bmm(p, vv, out=out)
    lse = torch.sub(m, p.amax(dim=-1, keepdim=True).log_()).squeeze(-1)  # [X, c]
    if lse_out is not None:
        lse_out.copy_(lse)
        lse = lse_out
    return o, lse


class _Round(NamedTuple):
    """Round r's blocks of some heads (block y: chunk y mod nc of the group's head y // nc) as
    flat row indices into [B H N, D] queries and [B Hkv N, D] values, and positions for masks."""

    qpos: torch.Tensor  # [Y, c] original position of each query slot (pads: >= N)
    kpos: torch.Tensor  # [Y, 2c] ... of each key slot: the block's chunk, then the chunk before
    k_rows: torch.Tensor  # [Y 2c] rows of the keys' tokens (the first c: the block's queries;
    #                       pads read their head's token N - 1)
    v_rows: torch.Tensor  # [Y 2c] value rows (K/V head of each query head)


@torch.no_grad()
def _sorted_order(q, n_hashes: int, nb: int, seed: int, c: int, n_pad: int):
    """Hash, then sort each round by (bucket, position). Returns order [B H, R, nc, c] (the
    original position of every slot, in the round's chunks of c; pads sort last) and its
    inverse rank [B H, R, n_pad] (the slot of every position)."""
    B, H = q.shape[:2]
    buckets = _padded_buckets(q, n_hashes, nb, seed, n_pad).view(B * H, n_hashes, n_pad)  # [B H, R, n_pad]
    order = torch.argsort(buckets, dim=-1, stable=True)  # stable: by (bucket, position)
    del buckets
    slot = torch.arange(n_pad, device=q.device).expand_as(order)  # [B H, R, n_pad]
    rank = torch.empty_like(order).scatter_(-1, order, slot)  # [B H, R, n_pad]
    return order.view(B * H, n_hashes, n_pad // c, c), rank


@torch.no_grad()
def _round_maps(order: torch.Tensor, r: int, N: int, G: int, h0: int = 0) -> _Round:
    """The index maps of round r's blocks of heads h0 .. h0 + len(order) - 1 (``order`` holds
    those heads' rows). The chunks of all rounds form one sequence: the chunk before a round's
    first is the last of the round before (round 0: of round R - 1)."""
    nh, R, nc, c = order.shape
    qpos = order[:, r]  # [nh, nc, c]
    before = torch.cat([order[:, (r - 1) % R, -1:], order[:, r, :-1]], dim=1)  # [nh, nc, c]
    kpos = torch.cat([qpos, before], dim=-1)  # [nh, nc, 2c]
    bh = torch.arange(h0, h0 + nh, device=order.device).view(nh, 1, 1)  # b H + h
    tok = kpos.clamp_max(N - 1)  # [nh, nc, 2c]: pads read a real token (masked, dropped)
    k_rows = tok + bh * N  # [nh, nc, 2c]
    v_rows = k_rows if G == 1 else tok + (bh // G) * N  # b H + h -> b Hkv + h // G
    return _Round(qpos.reshape(-1, c), kpos.reshape(-1, 2 * c), k_rows.reshape(-1), v_rows.reshape(-1))


def _unsort_rows(rank: torch.Tensor, r: int, N: int) -> torch.Tensor:
    """[nh N] the slot row, in a [nh n_pad] round of these heads, of each real token."""
    nh, _, n_pad = rank.shape
    return (rank[:, r, :N] + torch.arange(nh, device=rank.device).view(nh, 1) * n_pad).reshape(-1)


def _rounds_autograd(qf, vf, norms, order, rank, N: int, G: int, causal: bool, padded: bool):
    """Each round's blocks at once, differentiable; the rounds combined by their log-sum-exps
    at the end: out [B H N, D]."""
    BH, R, nc, c = order.shape
    D = qf.shape[1]
    outs, lses = [], []
    for r in range(R):  # rounds (a handful), not tokens
        rd = _round_maps(order, r, N, G)
        Y = rd.qpos.shape[0]
        kq = qf.index_select(0, rd.k_rows).view(Y, 2 * c, D)  # [Y, 2c, D]: the first c are the queries
        bq = kq[:, :c] * (1.0 / math.sqrt(D))  # [Y, c, D]
        kk = kq / norms.index_select(0, rd.k_rows).view(Y, 2 * c, 1)  # [Y, 2c, D] unit keys
        vv = vf.index_select(0, rd.v_rows).view(Y, 2 * c, D)  # [Y, 2c, D]
        o, lse = _blocks(bq, kk, vv, rd.qpos, rd.kpos, causal, N, padded, x0=0, nc=nc, grad=True)
        rows = _unsort_rows(rank, r, N)  # [BH N]
        outs.append(o.reshape(Y * c, D).index_select(0, rows))  # [BH N, D]
        lses.append(lse.reshape(Y * c).index_select(0, rows))  # [BH N]
    w = torch.softmax(torch.stack(lses), dim=0).unsqueeze(-1)  # [R, BH N, 1]
    return (torch.stack(outs) * w).sum(0)  # [BH N, D]


def _fold(out, m, s, o, lo) -> None:
    """Fold one round's outputs o [S, D] and log-sum-exps lo [S] (token order) into ``out``:
    the online form of out = sum_r softmax_r(l_r) o_r, keeping per row the largest l so far
    (``m``) and the rounds' mass relative to it (``s``), so that weights come from differences
    of log-sum-exps (exact for close ones, as softmax's l - max), never from a rounded log-sum
    of them (a self-only row has l ~ -5e4, where an fp32 ulp is 4e-3)."""
    m1 = torch.maximum(m, lo)
    a = (m - m1).exp_().mul_(s)  # the earlier rounds' mass, relative to m1
    b = (lo - m1).exp_()  # this round's
    s.copy_(a.add_(b))
    out.lerp_(o, (b / s).unsqueeze(-1))  # out (a / s) + o (b / s) in one pass: a / s = 1 - b / s
    m.copy_(m1)


def _rounds_inference(qf, vf, norms, order, rank, N: int, G: int, causal: bool, padded: bool):
    """Groups of heads, round by round: tiles of blocks through buffers allocated once into the
    round's slots, then one gather puts them in token order and folds them into the output
    (a gather is ~4x faster than a scatter on CPU): out [B H N, D]."""
    BH, R, nc, c = order.shape
    D, dev, dt = qf.shape[1], qf.device, qf.dtype
    tb, gh = _tiling(BH, nc, c, D, qf.element_size(), dev)  # blocks per tile, heads per group
    out = pages.empty(BH * N, D, dtype=dt, device=dev)
    m, mass = torch.empty(BH * N, dtype=dt, device=dev), torch.ones(BH * N, dtype=dt, device=dev)
    slots = torch.empty(gh * nc, c, D, dtype=dt, device=dev)  # a group's round of outputs
    slot_l, tok = torch.empty(gh * nc, c, dtype=dt, device=dev), torch.empty(gh * N, D, dtype=dt, device=dev)
    bufs = _tile_buffers(tb, c, D, dt, dev)
    for h0 in range(0, BH, gh):
        h1 = min(BH, h0 + gh)
        rows = slice(h0 * N, h1 * N)
        for r in range(R):
            rd = _round_maps(order[h0:h1], r, N, G, h0)
            for y0 in range(0, (h1 - h0) * nc, tb):  # tiles of blocks (not tokens or buckets)
                y1 = min((h1 - h0) * nc, y0 + tb)
                _tile(qf, vf, norms, rd, y0, y1, causal, N, padded, nc, bufs, slots[y0:y1], slot_l[y0:y1])
            back = _unsort_rows(rank[h0:h1], r, N)  # [nh N]
            if r == 0:
                torch.index_select(slots.view(-1, D), 0, back, out=out[rows])
                torch.index_select(slot_l.view(-1), 0, back, out=m[rows])
            else:
                o = torch.index_select(slots.view(-1, D), 0, back, out=tok[:(h1 - h0) * N])  # [nh N, D]
                _fold(out[rows], m[rows], mass[rows], o, slot_l.view(-1).index_select(0, back))
    return out


def _tile_buffers(tb: int, c: int, D: int, dt, dev) -> dict:
    """Buffers of one tile of tb blocks, allocated once per call."""
    def empty(*shape):
        return torch.empty(*shape, dtype=dt, device=dev)

    return {"bq": empty(tb * c, D), "kk": empty(tb * 2 * c, D), "vv": empty(tb * 2 * c, D),
            "norm": empty(tb * 2 * c, 1), "s": empty(tb, c, 2 * c), "m": empty(tb, c, 1)}


def _tile(qf, vf, norms, rd: _Round, y0: int, y1: int, causal: bool, N: int, padded: bool, nc: int,
          bufs: dict, out, lse_out) -> None:
    """Blocks y0 .. y1 - 1 of a round: gather queries, unit keys and values into the tile's
    buffers, attend (:func:`_blocks`), write o [nt, c, D] and lse [nt, c] into out / lse_out."""
    nt, c, D = y1 - y0, rd.qpos.shape[1], qf.shape[1]
    ks = slice(2 * c * y0, 2 * c * y1)
    kk = torch.index_select(qf, 0, rd.k_rows[ks], out=bufs["kk"][:2 * c * nt])  # [nt 2c, D]
    # a block's queries are the first half of its key rows: a copy, not another gather
    bq = bufs["bq"][:nt * c].view(nt, c, D)  # [nt, c, D]
    torch.mul(kk.view(nt, 2 * c, D)[:, :c], 1.0 / math.sqrt(D), out=bq)
    kk.div_(torch.index_select(norms, 0, rd.k_rows[ks], out=bufs["norm"][:2 * c * nt]))  # unit keys
    vv = torch.index_select(vf, 0, rd.v_rows[ks], out=bufs["vv"][:2 * c * nt])  # [nt 2c, D]
    _blocks(bq, kk.view(nt, 2 * c, D), vv.view(nt, 2 * c, D), rd.qpos[y0:y1],
            rd.kpos[y0:y1], causal, N, padded, x0=y0, nc=nc, grad=False, out=out, lse_out=lse_out,
            s_buf=bufs["s"], m_buf=bufs["m"])


def lsh_shared_qk(q, k, v, *, causal=False, state=None, need_weights=False,
                  bucket_size=DEFAULTS["bucket_size"], n_hashes=DEFAULTS["n_hashes"], seed=DEFAULTS["seed"],
                  n_buckets=DEFAULTS["n_buckets"]) -> AttnOutput:
    """Reformer LSH attention, shared QK (``k`` is ignored: keys are the normalized queries;
    its gradient is 0).

    q [B, H, N, D], v [B, Hkv, N, D] -> out [B, H, N, D]. Time O(n_hashes N (2c + n_buckets) D)
    plus an O(n_hashes N log N) sort; memory O(n_hashes N c) for the [c, 2c] score blocks
    under autograd; without it, the output, int64 index maps (O(n_hashes N)), one tile and
    one group of heads' round of outputs. Backward through autograd.
    """
    _validate(q, k, v, bucket_size, n_hashes, n_buckets, seed)
    B, H, N, D = q.shape
    if N == 0 or B * H == 0:
        return AttnOutput(out=torch.zeros_like(q))
    c, n_pad, nc, nb = geometry(N, bucket_size, n_buckets)
    order, rank = _sorted_order(q, n_hashes, nb, seed, c, n_pad)  # [B H, R, nc, c], [B H, R, n_pad]
    qf, vf = q.reshape(-1, D), v.reshape(-1, D)  # [B H N, D], [B Hkv N, D]
    norms = key_norms(qf)  # [B H N, 1]: keys are qf / norms, formed per gathered block
    grad = torch.is_grad_enabled() and (q.requires_grad or v.requires_grad)
    run = _rounds_autograd if grad else _rounds_inference
    out = run(qf, vf, norms, order, rank, N, H // v.shape[1], causal, n_pad > N).view(B, H, N, D)  # [B, H, N, D]
    if torch.is_grad_enabled() and isinstance(k, torch.Tensor) and k.requires_grad:
        # k is ignored; an empty slice puts it in the graph so that autograd.grad(out, (q, k,
        # v)) gives dk = 0 instead of raising (the harness asks for all three)
        out = out + k[..., :0].sum()
    return AttnOutput(out=out)


# ---------------------------------------------------------------------------------------------
# Dense definitions: the same LSH attention without chunking, and its exact target.
# ---------------------------------------------------------------------------------------------
class _Chunks(NamedTuple):
    """Where every real token sits in each round's sorted, chunked order (dense definitions)."""

    chunk: torch.Tensor  # [B, H, R, N]: token j's chunk C_r(j) in the round-major sequence
    nc: int  # chunks per round
    total: int  # T = n_hashes nc chunks in all


def _chunks(q, bucket_size, n_hashes, seed, n_buckets) -> _Chunks:
    """Hash q [B, H, N, D] and sort by (bucket, position): each token's chunk per round."""
    N, dev = q.shape[2], q.device
    c, n_pad, nc, nb = geometry(max(N, 1), bucket_size, n_buckets)
    buckets = _padded_buckets(q, n_hashes, nb, seed, n_pad)  # [B, H, R, n_pad]
    key = buckets * n_pad + torch.arange(n_pad, device=dev)  # distinct: (bucket, position)
    order = torch.argsort(key, dim=-1)  # [B, H, R, n_pad]
    slot = torch.empty_like(order).scatter_(-1, order, torch.arange(n_pad, device=dev).expand_as(order))
    chunk = ((slot + torch.arange(n_hashes, device=dev).view(n_hashes, 1) * n_pad) // c)[..., :N]  # [B, H, R, N]
    return _Chunks(chunk, nc, n_hashes * nc)


def _mates(ch: _Chunks, r: int, rows: torch.Tensor, dtype) -> torch.Tensor:
    """Round r's multiplicity A_r [B, H, nr, N]: how many times query ``rows`` read key j (its
    own chunk, plus the chunk before it, which may wrap into another round holding j again)."""
    B, H, _, N = ch.chunk.shape
    cur = ch.chunk[:, :, r, rows].unsqueeze(-1)  # [B, H, nr, 1]
    prev = (cur - 1) % ch.total
    chunk_prev_round = ch.chunk.gather(2, (prev // ch.nc).expand(B, H, rows.numel(), N))  # [B, H, nr, N]
    return (ch.chunk[:, :, r].unsqueeze(2) == cur).to(dtype) + (chunk_prev_round == prev).to(dtype)


def _shared_scores(q, rows: torch.Tensor, causal: bool) -> torch.Tensor:
    """Shared-QK scores [B, H, nr, N]: q_i . q_j / ||q_j|| / sqrt(D), s_ii = SELF_SCORE, keys
    after the query -inf when causal."""
    kn = unit_keys(q)
    s = torch.matmul(q[:, :, rows], kn.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # [B, H, nr, N]
    j = torch.arange(q.shape[2], device=q.device)
    s = s.masked_fill(rows[:, None] == j[None, :], SELF_SCORE)
    if causal:
        s = s.masked_fill(j[None, :] > rows[:, None], float("-inf"))
    return s


def _all_rows(q, rows) -> torch.Tensor:
    return torch.arange(q.shape[2], device=q.device) if rows is None else rows.to(q.device)


def lsh_shared_qk_reference(q, k, v, *, causal=False, rows=None, bucket_size=DEFAULTS["bucket_size"],
                            n_hashes=DEFAULTS["n_hashes"], seed=DEFAULTS["seed"], n_buckets=DEFAULTS["n_buckets"],
                            **_) -> torch.Tensor:
    """LSH attention from its definition, densely, at the inputs' dtype: [B, H, R, D] for the
    query ``rows`` (all rows if None). ``k`` is ignored (it joins the graph through an empty
    slice so that autograd reports dk = 0 rather than an unused input).

    Round r: token j's chunk is C_r(j) = (r n_pad + slot_r(j)) // c in the round-major
    sequence of T = n_hashes n_pad / c chunks (chunk C belongs to round C // nc). Query i reads
    every slot of chunks C_r(i) and P = C_r(i) - 1 (mod T), so key j has multiplicity
    A_r[i, j] = [C_r(j) = C_r(i)] + [C_{P // nc}(j) = P] (2 only when the chunk before wraps
    into another round holding j), and
    o_r(i) = sum_j A exp(s_ij) v_j / sum_j A exp(s_ij),  l_r(i) = log sum_j A exp(s_ij)
    with s_ij = q_i . q_j / ||q_j|| / sqrt(D), s_ii = SELF_SCORE, j > i masked when causal and
    pad tokens never read; out = sum_r softmax_r(l_r) o_r. Time O(n_hashes nr N D), memory
    O(nr N) for nr = len(rows) query rows, plus the sort.
    """
    _validate(q, k, v, bucket_size, n_hashes, n_buckets, seed)
    rows = _all_rows(q, rows)
    ch = _chunks(q, bucket_size, n_hashes, seed, n_buckets)
    s = _shared_scores(q, rows, causal)  # [B, H, nr, N]
    vh = _heads_v(v, q.shape[1])
    outs, lses = [], []
    for r in range(n_hashes):
        sr = s + torch.log(_mates(ch, r, rows, q.dtype))  # log 0 = -inf: keys outside both chunks
        lses.append(torch.logsumexp(sr, dim=-1))
        outs.append(torch.matmul(torch.softmax(sr, dim=-1), vh))
    w = torch.softmax(torch.stack(lses, 0), dim=0)  # [R, B, H, nr]
    out = (torch.stack(outs, 0) * w.unsqueeze(-1)).sum(0)
    return out if k is None else out + k[..., :0].sum()


def lsh_weights(q, k, v, *, causal=False, bucket_size=DEFAULTS["bucket_size"], n_hashes=DEFAULTS["n_hashes"],
                seed=DEFAULTS["seed"], n_buckets=DEFAULTS["n_buckets"], **_) -> tuple[torch.Tensor, torch.Tensor]:
    """LSH attention's effective weights and support, densely: ([B, H, N, N], bool [B, H, N, N]).

    Combining the rounds by their log-sum-exps (out = sum_r softmax_r(l_r) o_r) is one softmax
    over the union of their key sets with multiplicities summed: w_ij = softmax_j(s_ij +
    log sum_r A_r[i, j]). Support: the keys any round puts in a chunk query i reads (its
    bucket-mates and the chunk before), self included. Time O(n_hashes N^2), memory O(N^2).
    """
    _validate(q, k, v, bucket_size, n_hashes, n_buckets, seed)
    rows = _all_rows(q, None)
    ch = _chunks(q, bucket_size, n_hashes, seed, n_buckets)
    mult = sum(_mates(ch, r, rows, q.dtype) for r in range(n_hashes))  # [B, H, N, N]
    return torch.softmax(_shared_scores(q, rows, causal) + torch.log(mult), dim=-1), mult > 0


def shared_qk_weights(q, k, v, *, causal=False, rows=None, **_) -> torch.Tensor:
    """Exact shared-QK softmax attention's weights [B, H, N, N] (or the ``rows``): keys =
    normalized queries, s_ii = SELF_SCORE, causal by position; ``k`` ignored. Time O(N^2 D)."""
    return torch.softmax(_shared_scores(q, _all_rows(q, rows), causal), dim=-1)


def shared_qk_attention(q, k, v, *, causal=False, rows=None, **_) -> torch.Tensor:
    """Exact shared-QK softmax attention, dense: :func:`shared_qk_weights` V, [B, H, N, D]
    (or the ``rows``). Time O(N^2 D)."""
    return torch.matmul(shared_qk_weights(q, k, v, causal=causal, rows=rows), _heads_v(v, q.shape[1]))


# ---------------------------------------------------------------------------------------------
# Cost model (defaults: bucket_size 64, n_hashes 4) and registration.
# ---------------------------------------------------------------------------------------------
def _geo(shape: Shape, params):
    c, n_pad, nc, nb = geometry(max(shape.seq_len, 1), params["bucket_size"], params["n_buckets"])
    return params["n_hashes"], c, n_pad, nb


def lsh_flops(shape: Shape, params) -> float:
    """Work the kernel does: per round and padded token, 2c scores and 2c value rows
    (4 D FLOPs each pair), plus hashing (2 D n_buckets / 2 per token and round)."""
    r, c, n_pad, nb = _geo(shape, params)
    bh = shape.batch * shape.heads
    return float(bh * r * n_pad * (4 * 2 * c * shape.head_dim + shape.head_dim * nb))


def lsh_memory(shape: Shape, params) -> float:
    """Predicted peak bytes above the inputs. Both paths: buckets, the sort's order, its
    inverse and the sort's own copy (4 int64 per round and padded token). Without autograd:
    the output and three per-token scalars (running max, mass, key norm), one group of heads'
    round of outputs and its token-order copy, one tile of blocks and one chunk of hashing.
    With autograd, per round: the gathered queries, keys (raw and unit), values and outputs
    (8 n_pad D), the scores and exponentials (4 n_pad c); the rounds' outputs in token order,
    stacked and weighted ((2R + 1) N D). The backward reuses about as much."""
    r, c, n_pad, nb = _geo(shape, params)
    e, bh, d, n = shape.element_size, shape.batch * shape.heads, shape.head_dim, shape.seq_len
    index = 8 * 4 * bh * r * n_pad
    if shape.needs_grad:
        return float(index + e * bh * (r * (8 * n_pad * d + 4 * n_pad * c) + (2 * r + 1) * n * d))
    tb, gh = _tiling(bh, n_pad // c, c, d, e, shape.device)
    tile = tb * e * (5 * c * d + 2 * c * c + 3 * c)
    hashing = _tile_bytes(shape.device, HASH_BYTES)
    return float(index + e * bh * n * (d + 3) + e * gh * (n_pad * (d + 1) + n * d) + tile + hashing)


def _n_buckets(x):
    if x is None:
        return None
    v = P.integer(None, minimum=2).convert(x)
    if v % 2:
        raise ValueError
    return v


def _reasons(shape: Shape, params) -> list[str]:
    if shape.mode == "decode":
        return ["decode not supported: shared-QK keys are the queries themselves (a step would "
                "need every cached query and its hashes)"]
    return []


add(VariantSpec(
    name="lsh@shared_qk", forward=lsh_shared_qk, family="lsh", exact=False,
    time="O(r n (c + n/c) d + r n log n)", memory="O(r n c)",
    cross=False, kv_heads=True,
    params={"bucket_size": P.integer(DEFAULTS["bucket_size"], minimum=1, doc="chunk length c"),
            "n_hashes": P.integer(DEFAULTS["n_hashes"], minimum=1, doc="hash rounds"),
            "seed": P.integer(DEFAULTS["seed"], minimum=0, doc="seed of the random rotations"),
            "n_buckets": P.Param(DEFAULTS["n_buckets"], "none (N / bucket_size rounded up to even) or an even "
                                 "integer >= 2", _n_buckets, doc="buckets per round")},
    tolerances={"float32": Tolerance(5e-5, rtol=1e-5), "float16": Tolerance(5e-3),
                "bfloat16": Tolerance(3e-2)},
    flops_fn=lsh_flops, memory_fn=lsh_memory, extra_reasons=_reasons,
    reference_fn=lsh_shared_qk_reference, target_fn=shared_qk_attention, weights_fn=lsh_weights,
    default=True,
    doc="Reformer LSH attention, shared QK (k ignored: keys are the normalized queries): "
        "angular LSH, n_hashes rounds sorted by (bucket, position), chunks of bucket_size "
        "attending to themselves and the chunk before, rounds combined by their log-sum-exp",
    paper=PAPER,
))
