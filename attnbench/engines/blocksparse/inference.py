"""Inference execution (no input needs grad): (chunk, K/V head) tasks on worker threads.

The inference path runs (chunk, K/V head) tasks on ``torch.get_num_threads()`` Python threads,
each doing single-threaded ops. Intra-op parallelism would put a fork/join barrier on every
one of the many small ops; on a shared machine one descheduled thread then stalls each of
them for a scheduler time slice. Ops release the GIL, so the threads compute concurrently.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable

import torch

from attnbench.engines import pages
from attnbench.engines.blocksparse import tuning  # the engine's tuning constants, read at call time
from attnbench.engines.blocksparse.autograd import dense_attention
from attnbench.engines.blocksparse.plan import BlockPlan, DenseChunk, LightChunk

# -- worker threads --------------------------------------------------------------------------

_POOL: ThreadPoolExecutor | None = None
_POOL_N = 0
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:  # a forked child has none of the parent's threads
    global _POOL, _POOL_N
    _POOL, _POOL_N = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _single_thread_ops() -> None:
    torch.get_num_threads()  # the thread's lazy init first (it would later reset the setting)
    torch.set_num_threads(1)  # this thread's OpenMP / MKL setting (and, briefly, the default)


def _pool(n: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_N
    with _POOL_LOCK:
        if _POOL is None or _POOL_N != n:
            if _POOL is not None:
                _POOL.shutdown(wait=True)
            prev = torch.get_num_threads()
            pool = ThreadPoolExecutor(n, thread_name_prefix="attnbench-blocked", initializer=_single_thread_ops)
            barrier = threading.Barrier(n)
            list(pool.map(lambda _: barrier.wait(), range(n)))  # start all n threads now
            torch.set_num_threads(prev)  # the initializers lowered the process default: restore it
            _POOL, _POOL_N = pool, n
        return _POOL


def workers() -> int:
    """Inference worker threads: ``THREADS``, or torch's intra-op thread count when None."""
    return max(1, torch.get_num_threads() if tuning.THREADS is None else int(tuning.THREADS))


def run_tasks(tasks: list, work: Callable, make_ctx: Callable, parallel: bool = True) -> None:
    """Run ``work(task, ctx)`` for every task on the workers, which pull from one queue
    (``parallel=False``: in this thread, e.g. for CUDA tensors, whose ops are asynchronous)."""
    if not tasks:
        return
    n = workers() if parallel else 1
    if n == 1 or len(tasks) == 1:
        ctx = make_ctx()
        for t in tasks:
            work(t, ctx)
        return
    it = iter(tasks)
    lock = threading.Lock()
    inference = torch.is_inference_mode_enabled()
    pool = _pool(n)
    futures = [pool.submit(_worker, it, lock, work, make_ctx, inference) for _ in range(min(n, len(tasks)))]
    wait(futures)  # all of them, so none still writes when an error is raised
    for f in futures:
        f.result()


def _worker(it, lock: threading.Lock, work: Callable, make_ctx: Callable, inference: bool) -> None:
    """One worker thread's share: its own ctx, then tasks from the shared iterator until none is left."""
    with torch.inference_mode(inference), torch.no_grad():
        ctx = make_ctx()
        while True:
            with lock:
                t = next(it, None)
            if t is None:
                return
            work(t, ctx)


# -- one call --------------------------------------------------------------------------------


@dataclass(eq=False)
class Call:
    """One inference call: inputs as [B*H, N, D] / [B*Hkv, M, D] views, the output, sizes."""

    q: torch.Tensor  # [B, H, N, D] (dense chunks)
    k: torch.Tensor  # [B, Hkv, M, D]
    v: torch.Tensor
    qf: torch.Tensor  # [BH, N, D]
    kf: torch.Tensor  # [BHkv, M, D]
    vf: torch.Tensor
    out: torch.Tensor  # [BH, N, D]
    kE: torch.Tensor | None  # [BHkv, E, D] the extra keys (band chunks with extras)
    vE: torch.Tensor | None
    scale: float
    H: int
    Hkv: int
    G: int  # query heads per K/V head
    M: int
    D: int
    b: int  # block size
    k_numel: int  # elements of k's storage (bound of the widened band view)
    s_el: int  # buffer sizes (elements): one head's scores of the largest chunk
    g_el: int  # ... gathered key rows (times D)
    r_el: int  # ... query rows (times D)


@dataclass(eq=False)
class Buffers:
    """One worker's buffers, reused by all its tasks (flat; each task views its prefix)."""

    s: torch.Tensor | None  # scores [C*rb*L]
    k: torch.Tensor | None  # gathered keys [C*L*D]
    v: torch.Tensor | None
    q: torch.Tensor | None  # gathered queries [C*rb*D]
    o: torch.Tensor | None  # outputs [C*rb*D]


def _softmax_(s: torch.Tensor) -> torch.Tensor:
    """In-place softmax over the last dim (the CPU kernel reads each row before writing it)."""
    return torch._softmax(s, -1, False, out=s)


def attention_inference(q, k, v, plan: BlockPlan, scale: float) -> torch.Tensor:
    """Inference: (chunk, K/V head) tasks, scores [C, rb, L] per query head in a reused buffer.

    Band chunks read K/V through strided views; with E extra columns the band view is widened
    by E rows so the score GEMM writes one contiguous [C, rb, S*b + E] tile (MKL's batched
    path), and the E columns are then overwritten by the extra keys' scores. Gather chunks copy
    their K/V rows once per K/V head into a reused buffer shared by the head's query group.
    Each task writes its own rows of the output; dense chunks whose rows also sit in a light
    chunk (heavy token rows) run after all light chunks.
    """
    call = make_call(q, k, v, plan, scale)
    BHkv = q.shape[0] * call.Hkv

    def work(task, buf: Buffers) -> None:
        kind, c, j = task
        (light_task if kind == "light" else dense_task)(call, c, j, buf)

    first = [("light", c, j) for c in plan.light for j in range(BHkv)]
    first += [("dense", c, j) for c in plan.dense if not c.overlay for j in range(BHkv)]
    overlay = [("dense", c, j) for c in plan.dense if c.overlay for j in range(BHkv)]
    cpu = q.device.type == "cpu"
    run_tasks(first, work, lambda: worker_buffers(call), cpu)
    run_tasks(overlay, work, lambda: worker_buffers(call), cpu)
    return call.out.view(q.shape)  # [B, H, N, D]


def make_call(q, k, v, plan: BlockPlan, scale: float) -> Call:
    """The views, output, extra keys and buffer sizes of one call."""
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    BHkv = B * Hkv
    kf, vf = k.view(BHkv, M, D), v.view(BHkv, M, D)  # [BHkv, M, D]
    kE = vE = None
    if plan.extras.numel() and any(c.band_start is not None for c in plan.light):
        ex = plan.dev("extras", q.device)
        kE, vE = kf.index_select(1, ex), vf.index_select(1, ex)  # [BHkv, E, D]
    return Call(
        q=q, k=k, v=v, qf=q.view(B * H, N, D), kf=kf, vf=vf,  # qf: [BH, N, D]
        out=pages.empty(B * H, N, D, dtype=q.dtype, device=q.device), kE=kE, vE=vE, scale=scale,
        H=H, Hkv=Hkv, G=H // Hkv, M=M, D=D, b=plan.block,
        k_numel=k.untyped_storage().nbytes() // k.element_size(),
        s_el=max((c.blocks * c.rows * c.cols for c in plan.light), default=0),
        g_el=max((c.blocks * c.cols for c in plan.light if c.band_start is None), default=0),
        r_el=max((c.blocks * c.rows for c in plan.light), default=0))


def worker_buffers(call: Call) -> Buffers:
    """One set of buffers per worker, reused by all its tasks."""
    def buf(nel):
        return torch.empty(nel, dtype=call.out.dtype, device=call.out.device) if nel else None

    D = call.D
    return Buffers(s=buf(call.s_el), k=buf(call.g_el * D), v=buf(call.g_el * D), q=buf(call.r_el * D),
                   o=buf(call.r_el * D))


# -- light chunks ----------------------------------------------------------------------------


def light_task(call: Call, c: LightChunk, j: int, buf: Buffers) -> None:
    """Chunk ``c`` for K/V head ``j`` (of B*Hkv) and its G query heads: K/V read once."""
    C, rb, L = c.blocks, c.rows, c.cols
    R = C * rb
    dev, D = call.out.device, call.D
    if c.band_start is not None:
        kh, vh, wide = band_kv(call, c, j)
    else:
        (kh, vh), wide = gather_kv(call, c, j, buf), False
    biases = c.biases(call.out.dtype, dev)
    rs = None if c.rowscale is None else c.dev("rowscale", dev).view(C, rb, 1).to(call.out.dtype)  # [C, rb, 1]
    direct = c.q_start is not None and rs is None
    s = buf.s[:R * L].view(C, rb, L)  # [C, rb, L]
    for g in range(call.G):
        bh = (j // call.Hkv) * call.H + (j % call.Hkv) * call.G + g
        if c.q_start is not None:
            qh = call.qf[bh, c.q_start:c.q_start + R].view(C, rb, D)  # [C, rb, D]
        else:
            qbuf = buf.q[:R * D].view(R, D)  # [R, D]
            qh = torch.index_select(call.qf[bh], 0, c.dev("qrows", dev), out=qbuf).view(C, rb, D)  # [C, rb, D]
        light_probs(call, c, j, qh, kh, wide, biases, s)
        if direct:
            o = call.out[bh, c.q_start:c.q_start + R].view(C, rb, D)  # [C, rb, D]
        else:
            o = buf.o[:R * D].view(C, rb, D)  # [C, rb, D]
        light_values(call, c, j, s, vh, o)
        if not direct:
            if rs is not None:
                o.mul_(rs)
            if c.q_start is not None:
                call.out[bh, c.q_start:c.q_start + R].copy_(o.view(R, D))  # [R, D]
            else:
                call.out[bh].index_copy_(0, c.dev("qrows", dev), o.view(R, D))  # [R, D]


def band_kv(call: Call, c: LightChunk, j: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """K/V of band chunk ``c`` for K/V head ``j`` as overlapping strided views (no copy); with
    E extra columns the K view is widened by E rows (``wide``) when that stays in bounds."""
    C, L, b, M, D = c.blocks, c.cols, call.b, call.M, call.D
    Sb = L - c.n_extra
    kf, vf = call.kf, call.vf
    # widened band view: in bounds even for the last K/V head?
    wide = c.n_extra > 0 and (kf.storage_offset() + (kf.shape[0] - 1) * M * D + c.band_start * D
                              + ((C - 1) * b + L) * D) <= call.k_numel
    base = j * M * D + c.band_start * D  # from the start of head j's rows; each view from its own storage offset
    kh = kf.as_strided((C, L if wide else Sb, D), (b * D, D, 1), kf.storage_offset() + base)  # [C, L or S*b, D]
    vh = vf.as_strided((C, Sb, D), (b * D, D, 1), vf.storage_offset() + base)  # [C, S*b, D]
    return kh, vh, wide


def gather_kv(call: Call, c: LightChunk, j: int, buf: Buffers) -> tuple[torch.Tensor, torch.Tensor]:
    """K/V rows of gather chunk ``c`` for K/V head ``j``, copied into the worker's buffers."""
    C, L, b, M, D = c.blocks, c.cols, call.b, call.M, call.D
    dev = call.out.device
    kf, vf = call.kf, call.vf
    if c.kblk is not None:  # whole blocks: fewer, longer copies
        kb = c.dev("kblk", dev)
        nb = kb.numel()
        kout, vout = buf.k[:C * L * D].view(nb, b * D), buf.v[:C * L * D].view(nb, b * D)  # [C*S, b*D]
        kh = torch.index_select(kf[j].view(M // b, b * D), 0, kb, out=kout).view(C, L, D)  # [C, L, D]
        vh = torch.index_select(vf[j].view(M // b, b * D), 0, kb, out=vout).view(C, L, D)  # [C, L, D]
    else:
        kidx = c.dev("kidx", dev)
        kout, vout = buf.k[:C * L * D].view(C * L, D), buf.v[:C * L * D].view(C * L, D)  # [C*L, D]
        kh = torch.index_select(kf[j], 0, kidx, out=kout).view(C, L, D)  # [C, L, D]
        vh = torch.index_select(vf[j], 0, kidx, out=vout).view(C, L, D)  # [C, L, D]
    return kh, vh


def light_probs(call: Call, c: LightChunk, j: int, qh: torch.Tensor, kh: torch.Tensor, wide: bool,
                biases: list[torch.Tensor], s: torch.Tensor) -> None:
    """Probabilities [C, rb, L] of one query head into ``s``: scores (band chunks with extras:
    the E extra columns by their own GEMM), -inf on the masked regions, softmax in place."""
    C, rb, L = s.shape
    Sb = L - c.n_extra
    ext = c.band_start is not None and c.n_extra > 0
    if not ext or wide:
        torch.baddbmm(s, qh, kh.transpose(1, 2), beta=0, alpha=call.scale, out=s)  # kh^T [C, D, L]
    else:  # strided output: torch splits it into per-block GEMMs
        torch.baddbmm(s[..., :Sb], qh, kh.transpose(1, 2), beta=0, alpha=call.scale, out=s[..., :Sb])  # kh^T [C, D, S*b]
    if ext:  # the extra columns of all C*rb rows: one GEMM into a strided 2-D view
        se = s.view(C * rb, L)[:, Sb:]  # [R, E]
        torch.addmm(se, qh.reshape(C * rb, call.D), call.kE[j].t(), beta=0, alpha=call.scale, out=se)  # [R, D] @ [D, E]
    for (c0, c1), bias in zip(c.regions, biases):
        s[..., c0:c1].add_(bias)
    _softmax_(s)


def light_values(call: Call, c: LightChunk, j: int, s: torch.Tensor, vh: torch.Tensor, o: torch.Tensor) -> None:
    """o [C, rb, D] = probabilities ``s`` times the chunk's values (and the extra keys' values)."""
    if c.band_start is not None and c.n_extra > 0:
        Sb = c.cols - c.n_extra
        torch.bmm(s[..., :Sb], vh, out=o)
        torch.baddbmm(o, s[..., Sb:], call.vE[j].expand(c.blocks, c.n_extra, call.D), out=o)  # vE: [C, E, D]
    else:
        torch.bmm(s, vh, out=o)


# -- dense chunks ----------------------------------------------------------------------------


def dense_task(call: Call, c: DenseChunk, j: int, buf: Buffers) -> None:
    """Dense chunk ``c`` for K/V head ``j`` (of B*Hkv) and its G query heads, by SDPA."""
    bi, hk = divmod(j, call.Hkv)
    G = call.G
    hs = slice(hk * G, (hk + 1) * G)
    q, k, v = call.q, call.k, call.v
    o = dense_attention(q[bi:bi + 1, hs], k[bi:bi + 1, hk:hk + 1], v[bi:bi + 1, hk:hk + 1], c, call.scale)
    out4 = call.out.view(q.shape)  # [B, H, N, D]
    if c.q_start is not None:
        out4[bi, hs, c.q_start:c.q_start + len(c.qrows)] = o[0]
    else:
        out4[bi, hs].index_copy_(1, c.dev("qrows", q.device), o[0])
