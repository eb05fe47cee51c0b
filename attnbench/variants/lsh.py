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
from attnbench.registry import AttnOutput, VariantSpec, add
from attnbench.tolerance import Tolerance

SELF_SCORE = -5e4  # score of a token against itself (reformer-pytorch's TOKEN_SELF_ATTN_VALUE)
PAPER = "Kitaev, Kaiser, Levskaya 2020, Reformer: The Efficient Transformer"
DEFAULTS = {"bucket_size": 64, "n_hashes": 4, "seed": 0, "n_buckets": None}


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
    """[n_hashes, D, n_buckets / 2] float32 N(0, 1), drawn on the CPU from ``seed`` (so every
    device gets the same numbers), built outside inference mode so autograd calls may reuse it.
    Drawn in reformer-pytorch's layout [D, n_hashes, n_buckets / 2], so that its LSHAttention
    after ``torch.manual_seed(seed)`` hashes fp32 CPU inputs exactly as we do."""
    with torch.inference_mode(False):
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        rot = torch.randn(d, n_hashes, half, generator=g, dtype=torch.float32)
        return rot.permute(1, 0, 2).contiguous().to(device)


def lsh_buckets(q: torch.Tensor, n_hashes: int, n_buckets: int, seed: int) -> torch.Tensor:
    """Angular LSH of q [B, H, N, D]: buckets [B, H, n_hashes, N] (int64 in 0..n_buckets-1).

    bucket = argmax([x R ; -x R]) without forming the concatenation: j = argmax |x R_j|, plus
    n_buckets / 2 if x R_j < 0 (exact ties, of probability zero, go to the lower j). Computed in
    float32 from q rounded to float32, one round at a time ([B, H, N, n_buckets / 2] live).
    """
    b, h, n, d = q.shape
    half = n_buckets // 2
    rot = _rotations(int(seed), int(n_hashes), d, half, str(q.device))
    out = torch.empty(b, h, n_hashes, n, dtype=torch.long, device=q.device)
    with torch.no_grad():
        x = q.detach().float().reshape(b * h * n, d)
        for r in range(n_hashes):
            xr = x.mm(rot[r])  # 2-D mm: ~4x faster than a broadcast matmul on CPU
            j = xr.abs().argmax(-1, keepdim=True)  # the largest |x R_j|: +j or -j wins
            neg = xr.gather(-1, j) < 0
            out[:, :, r] = (j + neg * half).view(b, h, n)
    return out


def unit_keys(x: torch.Tensor) -> torch.Tensor:
    """The shared keys x / ||x||. The norm is clamped at the dtype's smallest normal number
    (F.normalize's default 1e-12 is 0 in fp16, making 0 / 0 = NaN for a zero vector such as a
    pad row, whose NaN would reach the gradients through 0 * NaN)."""
    return F.normalize(x, p=2.0, dim=-1, eps=torch.finfo(x.dtype).tiny)


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
# The kernel: sort, chunk, [c, 2c] blocks, unsort, combine rounds.
#
# The chunks of all (batch, head, round) form X = B H n_hashes n_pad / c independent blocks:
# block x holds c query slots and reads 2c key slots (its own chunk and the chunk before).
# Rows are copied with index_select on flattened [rows, D] views (gather with an expanded
# [.., D] index is ~20x slower on CPU). With autograd all blocks run as one batch (autograd
# keeps e [X, c, 2c] for the backward: O(n_hashes N c)). Without it, blocks run in tiles of
# TILE_BYTES of working set through preallocated buffers, so the scores stay in cache and no
# large temporary is allocated (a fresh large CPU allocation costs a page fault per 4 KiB on
# first touch): the forward's extra memory is the per-round outputs plus one tile.
# ---------------------------------------------------------------------------------------------
TILE_BYTES = 8 << 20  # working set per tile: ~L3-resident, few enough tiles that per-op costs stay small
CUDA_TILE_BYTES = 256 << 20  # on a GPU a tile only bounds memory: few, large launches


def _blocks(bq, kk, vv, qpos, kpos, causal: bool, n: int, padded: bool, *, x0: int, nc: int,
            grad: bool, out=None, lse_out=None, s_buf=None, m_buf=None):
    """Attention inside blocks x0 .. x0 + X - 1, batched.

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
    e = s.sub_(m).exp_()
    ssum = e.sum(dim=-1, keepdim=True)
    o = torch.bmm(e, vv) if out is None else torch.bmm(e, vv, out=out)
    o.div_(ssum)
    lse = torch.add(m, ssum.log_()).squeeze(-1)
    if lse_out is not None:
        lse_out.copy_(lse)
        lse = lse_out
    return o, lse


class _Slots(NamedTuple):
    """Where each block of the sorted rounds reads from: flat row indices into the padded
    [B H n_pad, D] queries, keys and values, the positions (for masks) and the way back."""

    q_rows: torch.Tensor  # [X c] query rows of every block
    k_rows: torch.Tensor  # [X 2c] key rows (the block and the one before)
    v_rows: torch.Tensor  # [X 2c] value rows (K/V head of each query head)
    qpos: torch.Tensor  # [X, c] original positions of the queries
    kpos: torch.Tensor  # [X, 2c] ... of the keys
    undo_rows: torch.Tensor  # [B H R N] the block-slot row of each (round, real token)


@torch.no_grad()
def _slots(q, G: int, R: int, nb: int, seed: int, c: int, n_pad: int) -> _Slots:
    """Hash, sort by (bucket, position), cut into chunks of c: the index maps of every block."""
    B, H, N, _ = q.shape
    dev, T = q.device, R * (n_pad // c)
    X = B * H * T
    buckets = _padded_buckets(q, R, nb, seed, n_pad)  # [B, H, R, n_pad]
    # stable sort on the bucket = sort by (bucket, position): the token at each sorted slot
    order = torch.argsort(buckets, dim=-1, stable=True)  # [B, H, R, n_pad]
    del buckets
    slot = torch.arange(n_pad, device=dev).expand_as(order)  # [B, H, R, n_pad]
    rank = torch.empty_like(order).scatter_(-1, order, slot)  # [B, H, R, n_pad]: the slot of each token
    del slot
    pos = order.view(B, H, T, c)  # original position of each slot; the chunks of all
    kpos = torch.cat([pos, pos.roll(1, dims=2)], dim=-1)  # [B, H, T, 2c]: rounds form one sequence,
    # so the chunk before the first of a round is the last of the round before (wrapping)
    bh = torch.arange(B * H, device=dev).view(B, H, 1, 1)
    kvh = (torch.arange(B, device=dev).view(B, 1, 1, 1) * (H // G)
           + torch.arange(H, device=dev).view(1, H, 1, 1) // G)  # [B, H, 1, 1]: K/V head of each head
    # result row (b, h, r, i) is block slot r n_pad + rank of (b, h)'s sequence
    undo = (rank[..., :N] + torch.arange(R, device=dev).view(R, 1) * n_pad + bh * (R * n_pad))  # [B, H, R, N]
    return _Slots((pos + bh * n_pad).view(X * c), (kpos + bh * n_pad).view(X * 2 * c),
                  (kpos + kvh * n_pad).view(X * 2 * c), pos.view(X, c), kpos.view(X, 2 * c), undo)


def _blocks_autograd(qf, kf, vf, sl: _Slots, c: int, causal: bool, N: int, padded: bool, nc: int):
    """Every block at once, differentiable: ([X, c, D] outputs, [X, c] log-sum-exps)."""
    X, D = sl.qpos.shape[0], qf.shape[1]
    bq = qf.index_select(0, sl.q_rows).view(X, c, D) * (1.0 / math.sqrt(D))  # [X, c, D]
    kk = kf.index_select(0, sl.k_rows).view(X, 2 * c, D)  # [X, 2c, D]
    vv = vf.index_select(0, sl.v_rows).view(X, 2 * c, D)  # [X, 2c, D]
    return _blocks(bq, kk, vv, sl.qpos, sl.kpos, causal, N, padded, x0=0, nc=nc, grad=True)


def _blocks_inference(qf, kf, vf, sl: _Slots, c: int, causal: bool, N: int, padded: bool, nc: int):
    """Tiles of blocks into buffers allocated once (fresh pages per tile would cost more than
    the arithmetic on CPU): ([X, c, D] outputs, [X, c] log-sum-exps)."""
    X, D = sl.qpos.shape[0], qf.shape[1]
    dev, dt, e = qf.device, qf.dtype, qf.element_size()
    scale = 1.0 / math.sqrt(D)
    tile = TILE_BYTES if dev.type == "cpu" else CUDA_TILE_BYTES
    tb = max(1, min(X, tile // (e * (3 * c * D + 4 * c * D + 2 * c * c) + 3 * c * c)))
    o = torch.empty(X, c, D, dtype=dt, device=dev)
    lse = torch.empty(X, c, dtype=dt, device=dev)
    bq_buf = torch.empty(tb * c, D, dtype=dt, device=dev)
    kk_buf = torch.empty(tb * 2 * c, D, dtype=dt, device=dev)
    vv_buf = torch.empty(tb * 2 * c, D, dtype=dt, device=dev)
    s_buf = torch.empty(tb, c, 2 * c, dtype=dt, device=dev)
    m_buf = torch.empty(tb, c, 1, dtype=dt, device=dev)
    for x0 in range(0, X, tb):  # tiles of blocks (not a loop over tokens or buckets)
        x1 = min(X, x0 + tb)
        nt = x1 - x0
        bq = torch.index_select(qf, 0, sl.q_rows[x0 * c:x1 * c], out=bq_buf[:nt * c]).mul_(scale)
        kk = torch.index_select(kf, 0, sl.k_rows[2 * c * x0:2 * c * x1], out=kk_buf[:2 * c * nt])
        vv = torch.index_select(vf, 0, sl.v_rows[2 * c * x0:2 * c * x1], out=vv_buf[:2 * c * nt])
        _blocks(bq.view(nt, c, D), kk.view(nt, 2 * c, D), vv.view(nt, 2 * c, D),  # [nt, c | 2c, D]
                sl.qpos[x0:x1], sl.kpos[x0:x1], causal, N, padded, x0=x0, nc=nc, grad=False,
                out=o[x0:x1], lse_out=lse[x0:x1], s_buf=s_buf, m_buf=m_buf)
    return o, lse


def _combine_rounds(o: torch.Tensor, lse: torch.Tensor, undo_rows: torch.Tensor) -> torch.Tensor:
    """Unsort the log-sum-exps of the real tokens ([B, H, R, N]); each round's weight is its mass
    among all rounds'; then unsort and add the outputs round by round (no [R, N, D] copy)."""
    B, H, R, N = undo_rows.shape
    D = o.shape[-1]
    lse = lse.view(-1).index_select(0, undo_rows.reshape(-1)).view(B, H, R, N)  # [B, H, R, N]
    w = torch.softmax(lse, dim=2).unsqueeze(-1)  # [B, H, R, N, 1]
    o = o.view(-1, D)  # [X c, D]
    out = None
    for r in range(R):
        o_r = o.index_select(0, undo_rows[:, :, r].reshape(-1)).view(B, H, N, D)  # [B, H, N, D]
        out = o_r * w[:, :, r] if out is None else out.addcmul_(o_r, w[:, :, r])
    return out.contiguous()


def lsh_shared_qk(q, k, v, *, causal=False, state=None, need_weights=False,
                  bucket_size=DEFAULTS["bucket_size"], n_hashes=DEFAULTS["n_hashes"], seed=DEFAULTS["seed"],
                  n_buckets=DEFAULTS["n_buckets"]) -> AttnOutput:
    """Reformer LSH attention, shared QK (``k`` is ignored: keys are the normalized queries;
    its gradient is 0).

    q [B, H, N, D], v [B, Hkv, N, D] -> out [B, H, N, D]. Time O(n_hashes N (2c + n_buckets) D)
    plus an O(n_hashes N log N) sort; memory O(n_hashes N c) for the [c, 2c] score blocks
    under autograd, O(n_hashes N D) without. Backward through autograd.
    """
    _validate(q, k, v, bucket_size, n_hashes, n_buckets, seed)
    B, H, N, D = q.shape
    if N == 0 or B * H == 0:
        return AttnOutput(out=torch.zeros_like(q))
    c, n_pad, nc, nb = geometry(N, bucket_size, n_buckets)
    sl = _slots(q, H // v.shape[1], n_hashes, nb, seed, c, n_pad)
    padded = n_pad > N
    pad = (0, 0, 0, n_pad - N)
    qf = (F.pad(q, pad) if padded else q).reshape(-1, D)  # [B H n_pad, D]
    vf = (F.pad(v, pad) if padded else v).reshape(-1, D)  # [B Hkv n_pad, D]
    kf = unit_keys(qf)  # the shared keys, once per token (not per round)
    grad = torch.is_grad_enabled() and (q.requires_grad or v.requires_grad)
    run = _blocks_autograd if grad else _blocks_inference
    o, lse = run(qf, kf, vf, sl, c, causal, N, padded, nc)
    out = _combine_rounds(o, lse, sl.undo_rows)
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
    """Predicted peak bytes above the inputs. Forward (no autograd): the sorted per-round
    outputs (R n_pad D), the output and one unsorted round (2 N D), padded q, keys and v
    (3 n_pad D), int64 slot indices (~12 R n_pad) and one tile of blocks. With autograd, also
    the sorted queries, keys and values (5 R n_pad D), the scores and exponentials
    (2 x R n_pad 2c) and the bool causal mask, and the backward makes about as much again."""
    r, c, n_pad, nb = _geo(shape, params)
    e, bh, d = shape.element_size, shape.batch * shape.heads, shape.head_dim
    blocks = r * n_pad * 2 * c  # scores per (batch, head)
    total = bh * (e * (r * n_pad * d + 2 * shape.seq_len * d + 3 * n_pad * d + 2 * r * n_pad)
                  + 8 * 12 * r * n_pad)
    total += TILE_BYTES if shape.device == "cpu" else CUDA_TILE_BYTES
    if shape.needs_grad:
        total += bh * (e * (5 * r * n_pad * d + 2 * blocks) + (blocks if shape.causal else 0))
        total *= 2
    return float(total)


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
