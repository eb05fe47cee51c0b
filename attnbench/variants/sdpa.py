"""PyTorch's ``scaled_dot_product_attention``: the dispatcher and one name per backend.

``full@sdpa`` lets PyTorch choose; ``full@math``, ``full@flash``, ``full@efficient`` and
``full@cudnn`` pin one backend with ``sdpa_kernel``. On CPU the flash backend is a
flash-style blocked kernel (O(N D) memory); efficient and cuDNN exist only on CUDA. When a
pinned backend refuses a case at run time, PyTorch's own warnings become the row's reasons.

K/V-head sharing never copies K/V per head: without a mask the H // Hkv query heads of a group
are folded into the query length (a view), since rows are independent; with a causal mask the
kernel is called with ``enable_gqa=True``.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

from attnbench.costs import fused_bytes, materialized_bytes
from attnbench.reference import causal_mask
from attnbench.registry import AttnOutput, Unsupported, VariantSpec, add


def sdpa_attention(q, k, v, *, causal=False, backend=None, scale=None) -> torch.Tensor:
    """SDPA with the suite's conventions (bottom-right causal, GQA without K/V copies).

    q [B, H, N, D], k/v [B, Hkv, M, D] -> [B, H, N, D]. Time O(N M D); memory depends on the
    backend (math: O(N M); flash / efficient / cudnn: O(N D)).
    """
    b, h, n, d = q.shape
    hkv, m = k.shape[1], k.shape[2]
    mask = None
    is_causal = False
    if causal:
        if n == m:
            is_causal = True
        elif n > 1:  # a single decode query sees its whole cache: no mask at all
            mask = causal_mask(n, m, q.device)  # SDPA's own is_causal is top-left for N != M
    ctx = torch.nn.attention.sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()
    with ctx:
        if hkv != h and mask is None and not is_causal:
            g = h // hkv
            out = F.scaled_dot_product_attention(
                q.reshape(b, hkv, g * n, d), k, v, scale=scale
            )
            return out.reshape(b, h, n, d)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=hkv != h
        )


def _pinned(backend):
    def forward(q, k, v, *, causal=False, state=None, need_weights=False) -> AttnOutput:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out = sdpa_attention(q, k, v, causal=causal, backend=backend)
            except RuntimeError as e:
                if "No viable backend" not in str(e):
                    raise
                why = "; ".join(str(w.message) for w in caught) or str(e)
                raise Unsupported(f"SDPA {backend.name} backend refused this case: {why}") from e
        return AttnOutput(out=out)

    return forward


def sdpa_forward(q, k, v, *, causal=False, state=None, need_weights=False) -> AttnOutput:
    """q [B, H, N, D], k/v [B, Hkv, M, D] -> out [B, H, N, D]; PyTorch picks the backend."""
    return AttnOutput(out=sdpa_attention(q, k, v, causal=causal))


_B = torch.nn.attention.SDPBackend
add(VariantSpec(
    name="full@sdpa", forward=sdpa_forward, family="dense", exact=True,
    time="O(n^2 d)", memory="O(n d)",
    doc="torch scaled_dot_product_attention, backend chosen by PyTorch",
    memory_fn=fused_bytes, default=True,  # what `full` means: the fused kernel users reach for (and train with)
    paper="Dao et al. 2022, FlashAttention (CPU/CUDA fused kernels)",
))
add(VariantSpec(
    name="full@math", forward=_pinned(_B.MATH), family="dense", exact=True,
    time="O(n^2 d)", memory="O(n^2)",
    doc="SDPA pinned to the MATH backend (materialized, composite ops)",
    memory_fn=materialized_bytes,
))
add(VariantSpec(
    name="full@flash", forward=_pinned(_B.FLASH_ATTENTION), family="dense", exact=True,
    time="O(n^2 d)", memory="O(n d)",
    doc="SDPA pinned to FLASH_ATTENTION (CPU: flash-style blocked kernel; CUDA: FlashAttention-2)",
    memory_fn=fused_bytes, paper="Dao 2023, FlashAttention-2",
))
add(VariantSpec(
    name="full@efficient", forward=_pinned(_B.EFFICIENT_ATTENTION), family="dense", exact=True,
    time="O(n^2 d)", memory="O(n d)", devices=("cuda",), backward=("cuda",),
    doc="SDPA pinned to EFFICIENT_ATTENTION (xformers' memory-efficient kernel; CUDA only)",
    memory_fn=fused_bytes, paper="Rabe & Staats 2021, Self-attention Does Not Need O(n^2) Memory",
))
add(VariantSpec(
    name="full@cudnn", forward=_pinned(_B.CUDNN_ATTENTION), family="dense", exact=True,
    time="O(n^2 d)", memory="O(n d)", devices=("cuda",), backward=("cuda",),
    dtypes=("bfloat16", "float16"),
    doc="SDPA pinned to CUDNN_ATTENTION (cuDNN fused attention; CUDA only, half precision)",
    memory_fn=fused_bytes,
))
