"""What scripts/peers.py measures: our kernels and the public implementations users pick, each
a name, what it needs, how it is built and bound to q, k, v, and (peers) a check against ours.

Every implementation gets the same case: seeded q, k, v [B, H, n, D] (``make_inputs``), fp32,
non-causal, forward under ``torch.inference_mode``. A peer that takes another layout gets its
own copy made before the baseline is taken (the originals freed), so each process holds one
set of inputs; what it holds is what ``Bound.inputs`` keeps alive. The HF layers project
hidden states with learned q/k/v matrices; here those projections return the given q, k, v
(``Given``, ``Copy``), so the layer computes attention on our inputs and no projection GEMM is
timed; the copy of q that HF then scales in place is, as a Linear's fresh output would be.

Peers import lazily, inside ``build``: this module imports without any of them.
"""
from __future__ import annotations

import contextlib
import functools
import io
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from attnbench import Shape, get
from attnbench.harness.inputs import make_inputs
from attnbench.patterns.blocks import bigbird_random

WINDOW = 256  # keys on each side: the "sliding window +-256" (HF attention_window = 2 x 256)
GLOBAL_TOKENS = 16  # longformer@blocked's default global tokens (the first 16 positions)
BIGBIRD = {"block": 64, "window_blocks": 3, "global_blocks": 2, "random_blocks": 3, "seed": 0}  # ours' defaults
LSH = {"bucket_size": 64, "n_hashes": 4, "seed": 0}
PERFORMER = {"nb_features": 256, "seed": 0}
CHECK_TOL = 1e-4  # fp32 max |peer - ours| on the check case for "same attention"


@dataclass
class Bound:
    """One implementation bound to its inputs: ``call()`` is one forward, ``to_bhnd`` maps its
    output to [B, H, n, D]; ``inputs`` are the tensors it holds (counted in ``inputs_mb``)."""
    call: Callable[[], torch.Tensor]
    inputs: tuple
    to_bhnd: Callable[[torch.Tensor], torch.Tensor] = lambda o: o


Binder = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Bound]


@dataclass(frozen=True)
class Impl:
    name: str
    algorithm: str  # what ours and its peer both compute (one key per table row)
    role: str  # ours | peer
    package: str | None  # the pip distribution (None: attnbench itself)
    module: str  # what must import for it to run
    params: dict
    pattern: str  # what it attends to, against ours, in words
    build: Callable[[Shape], Binder]  # modules and tables, made before the memory baseline
    check_against: str | None = None  # ours: the impl whose output a check compares with
    multiple: int = 1  # n must be a multiple of this
    min_n: int = 1  # below it the peer's own model would not use this layer
    custom_check: Callable | None = None  # (shape, q, k, v) -> check fields, instead of the plain comparison

    def reasons(self, n: int) -> list[str]:
        out = []
        if n % self.multiple:
            out.append(f"{self.name} needs n divisible by {self.multiple}; n = {n}")
        if n < self.min_n:
            out.append(f"{self.name} needs n >= {self.min_n}; n = {n}")
        return out


def _inference(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    def call():
        with torch.inference_mode():
            return fn()

    return call


def ours(variant: str, **params) -> Callable[[Shape], Binder]:
    """A registry variant called with ``params`` (what the row records)."""
    def build(shape: Shape) -> Binder:
        spec = get(variant)
        return lambda q, k, v: Bound(_inference(lambda: spec(q, k, v, **params).out), (q, k, v))

    return build


# ---- peers -------------------------------------------------------------------------------

def local_attention(shape: Shape) -> Binder:
    from local_attention import LocalAttention

    mod = LocalAttention(window_size=WINDOW, causal=False, look_backward=1, look_forward=1,
                         exact_windowsize=True, autopad=True, dropout=0.0).eval()
    return lambda q, k, v: Bound(_inference(lambda: mod(q, k, v)), (q, k, v))


class Given(nn.Module):
    """A projection that returns the given tensor (HF's key / value projections)."""

    def __init__(self, t: torch.Tensor):
        super().__init__()
        self.t = t

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.t


class Copy(nn.Module):
    """A projection that returns a contiguous copy of its input (HF's query projections: the
    layer scales the result in place, so it must not be the caller's tensor)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states.clone(memory_format=torch.contiguous_format)


def hf_longformer(shape: Shape) -> Binder:
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    b, h, n, d = shape.batch, shape.heads, shape.seq_len, shape.head_dim
    cfg = LongformerConfig(hidden_size=h * d, num_attention_heads=h, attention_window=[2 * WINDOW],
                           attention_probs_dropout_prob=0.0, num_hidden_layers=1)
    layer = LongformerSelfAttention(cfg, layer_id=0).eval()
    layer.query = layer.query_global = Copy()
    mask = torch.zeros(b, n)  # HF's layer mask: 0 local, > 0 global, < 0 padding
    mask[:, :GLOBAL_TOKENS] = 10000.0
    masked, global_ = mask < 0, mask > 0

    def bind(q, k, v) -> Bound:
        x = q.transpose(1, 2).reshape(b, n, h * d)  # [B, n, H*D]: the layer's hidden states = q
        layer.key = layer.key_global = Given(k.permute(2, 0, 1, 3).reshape(n, b, h * d))  # [n, B, H*D]
        layer.value = layer.value_global = Given(v.permute(2, 0, 1, 3).reshape(n, b, h * d))  # [n, B, H*D]
        fwd = lambda: layer(x, attention_mask=mask, is_index_masked=masked,  # noqa: E731
                            is_index_global_attn=global_, is_global_attn=True)[0]
        return Bound(_inference(fwd), (x, layer.key.t, layer.value.t), _bnE_to_bhnd(h))

    return bind


def _bnE_to_bhnd(h: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def to_bhnd(o: torch.Tensor) -> torch.Tensor:
        b, n, e = o.shape
        return o.view(b, n, h, e // h).transpose(1, 2)  # [B, H, n, D]

    return to_bhnd


def _bigbird_class():
    """HF's block-sparse layer with our random blocks: stock HF draws them with numpy in training
    mode (new ones per call) and uses block 0 for all of them in eval mode."""
    from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention

    class OurRandomBlocks(BigBirdBlockSparseAttention):
        rand = None  # int32 [n / block - 2, random_blocks]: random key blocks of query blocks 1..-2

        def _bigbird_block_rand_mask(self, *args, **kwargs):
            return self.rand

        def _bigbird_block_rand_mask_with_head(self, *args, num_heads, **kwargs):
            return [self.rand] * num_heads

    return OurRandomBlocks


def hf_bigbird(shape: Shape) -> Binder:
    from transformers import BigBirdConfig
    from transformers.models.big_bird.modeling_big_bird import BigBirdModel

    b, h, n, d, bs = shape.batch, shape.heads, shape.seq_len, shape.head_dim, BIGBIRD["block"]
    cfg = BigBirdConfig(hidden_size=h * d, num_attention_heads=h, block_size=bs, use_bias=False,
                        num_random_blocks=BIGBIRD["random_blocks"], attention_type="block_sparse",
                        max_position_embeddings=n)
    layer = _bigbird_class()(cfg, seed=BIGBIRD["seed"]).eval()
    rand = bigbird_random(n // bs, BIGBIRD["window_blocks"], BIGBIRD["global_blocks"], BIGBIRD["random_blocks"],
                          BIGBIRD["seed"])  # [n / bs, r]
    layer.rand = rand[1:-1].numpy().astype("int32")  # query blocks 1..-2 (0 and -1 are global)
    blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(torch.ones(b, n), bs)

    def bind(q, k, v) -> Bound:
        x, kx, vx = (t.transpose(1, 2).reshape(b, n, h * d) for t in (q, k, v))  # [B, n, H*D]
        layer.query, layer.key, layer.value = Given(x), Given(kx), Given(vx)
        fwd = lambda: layer(x, band_mask=band, from_mask=from_mask, to_mask=to_mask,  # noqa: E731
                            from_blocked_mask=blocked, to_blocked_mask=blocked)[0]
        return Bound(_inference(fwd), (x, kx, vx), _bnE_to_bhnd(h))

    return bind


def reformer_pytorch(shape: Shape) -> Binder:
    from reformer_pytorch.reformer_pytorch import LSHAttention

    mod = LSHAttention(bucket_size=LSH["bucket_size"], n_hashes=LSH["n_hashes"], causal=False, dropout=0.0).eval()
    b, h, n, d = shape.batch, shape.heads, shape.seq_len, shape.head_dim

    def bind(q, k, v) -> Bound:
        qk, vv = q.reshape(b * h, n, d), v.reshape(b * h, n, d)  # [B*H, n, D] views

        def fwd():
            torch.manual_seed(LSH["seed"])  # its rotations come from the global RNG: ours' draw at seed 0
            return mod(qk, vv)[0]

        # k is held as ours holds it: shared-QK attention ignores it in both
        return Bound(_inference(fwd), (q, k, v), lambda o: o.view(b, h, n, d))

    return bind


def performer_module(head_dim: int):
    """performer-pytorch's FastAttention, its features drawn from torch's RNG at PERFORMER's seed."""
    from performer_pytorch import FastAttention

    torch.manual_seed(PERFORMER["seed"])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # "unable to import cuda code"
        warnings.simplefilter("ignore")
        return FastAttention(dim_heads=head_dim, nb_features=PERFORMER["nb_features"], causal=False).eval()


def performer_pytorch(shape: Shape) -> Binder:
    mod = performer_module(shape.head_dim)
    return lambda q, k, v: Bound(_inference(lambda: mod(q, k, v)), (q, k, v))


def performer_check(shape: Shape, q, k, v) -> dict:
    """performer-pytorch with eps = 0 against ours given its features: the same estimator; the
    stock eps = 1e-4 difference is reported beside it."""
    import performer_pytorch.performer_pytorch as pp

    mod = performer_module(shape.head_dim)
    with torch.inference_mode():
        want = get("performer@favor")(q, k, v, features=mod.projection_matrix, **PERFORMER).out
        stock = float((mod(q, k, v) - want).abs().max())
        kernel = pp.softmax_kernel
        pp.softmax_kernel = functools.partial(kernel, eps=0.0)
        try:
            got = mod(q, k, v)
        finally:
            pp.softmax_kernel = kernel
    return {"check_max_abs_diff": float((got - want).abs().max()),
            "check_note": f"max |performer-pytorch (eps = 0) - performer@favor (its features)| over all "
                          f"{shape.seq_len} rows; with its stock eps = 1e-4: {stock:.2g}"}


# ---- the registry ------------------------------------------------------------------------

_SW = "sliding window |i - j| <= 256"
IMPLS: dict[str, Impl] = {i.name: i for i in (
    Impl("sliding_window@blocked", "sliding_window", "ours", None, "attnbench", {"window": WINDOW}, _SW,
         ours("sliding_window@blocked", window=WINDOW)),
    Impl("longformer@blocked", "longformer", "ours", None, "attnbench",
         {"window": WINDOW, "global_tokens": GLOBAL_TOKENS},
         f"window +-{WINDOW} plus the first {GLOBAL_TOKENS} tokens global (attend to and attended by all)",
         ours("longformer@blocked", window=WINDOW, global_tokens=GLOBAL_TOKENS)),
    Impl("bigbird@blocked", "bigbird", "ours", None, "attnbench", dict(BIGBIRD),
         "blocks of 64: 3-block window, first and last block global, 3 seeded random blocks",
         ours("bigbird@blocked", **BIGBIRD)),
    Impl("lsh@shared_qk", "lsh", "ours", None, "attnbench", dict(LSH),
         "shared-QK LSH, 4 hash rounds, chunks of 64 attending to themselves and the chunk before",
         ours("lsh@shared_qk", **LSH)),
    Impl("performer@favor", "performer", "ours", None, "attnbench", dict(PERFORMER),
         "FAVOR+ with 256 orthogonal positive random features",
         ours("performer@favor", **PERFORMER)),
    Impl("local-attention", "sliding_window", "peer", "local-attention", "local_attention",
         {"window_size": WINDOW, "look_backward": 1, "look_forward": 1, "exact_windowsize": True, "autopad": True},
         f"the same window; scores 3 x {WINDOW} keys per query (its bucket of {WINDOW} and both neighbours) "
         f"and masks the excess, ours 64 + 2 x {WINDOW}",
         local_attention, check_against="sliding_window@blocked"),
    Impl("hf-longformer", "longformer", "peer", "transformers", "transformers",
         {"attention_window": 2 * WINDOW, "global_tokens": GLOBAL_TOKENS},
         "the same pattern; computes the global rows twice (windowed, then overwritten), q/k/v projections "
         "replaced by the given q, k, v",
         hf_longformer, check_against="longformer@blocked", multiple=2 * WINDOW),
    Impl("hf-bigbird", "bigbird", "peer", "transformers", "transformers",
         {"block_size": BIGBIRD["block"], "num_random_blocks": BIGBIRD["random_blocks"], "random": "ours"},
         "the same pattern given our random blocks (stock HF in eval mode uses block 0 for all of them); "
         "builds the dense [B, H, n, n] probability matrix on every call",
         hf_bigbird, check_against="bigbird@blocked", multiple=BIGBIRD["block"],
         min_n=(5 + 2 * BIGBIRD["random_blocks"]) * BIGBIRD["block"]),
    Impl("reformer-pytorch", "lsh", "peer", "reformer-pytorch", "reformer_pytorch",
         {"bucket_size": LSH["bucket_size"], "n_hashes": LSH["n_hashes"], "seed": LSH["seed"]},
         "the same LSH attention; seeded alike it draws the same rotations, so the same buckets",
         reformer_pytorch, check_against="lsh@shared_qk", multiple=2 * LSH["bucket_size"]),
    Impl("performer-pytorch", "performer", "peer", "performer-pytorch", "performer_pytorch",
         {"nb_features": PERFORMER["nb_features"], "seed": PERFORMER["seed"]},
         "the same FAVOR+ estimator up to its eps = 1e-4 added to every feature (checked with its features "
         "and eps = 0)",
         performer_pytorch, check_against="performer@favor", custom_check=performer_check),
    Impl("sliding_window@flex", "sliding_window", "peer", "torch", "torch", {"window": WINDOW},
         f"{_SW} through torch's compiled FlexAttention (our mask, torch's kernel)",
         ours("sliding_window@flex", window=WINDOW), check_against="sliding_window@blocked"),
)}


def shape_for(n: int, batch: int = 1, heads: int = 8, head_dim: int = 64) -> Shape:
    return Shape(batch=batch, heads=heads, kv_heads=heads, seq_len=n, kv_len=n, head_dim=head_dim,
                 dtype="float32")


def check(impl: Impl, shape: Shape) -> dict:
    """The peer against ours on ``shape`` (seed 1): max |peer - ours| over the whole output."""
    q, k, v = make_inputs(shape, seed=1)
    if impl.custom_check is not None:
        return {"check_tol": CHECK_TOL, **impl.custom_check(shape, q, k, v)}
    ref = IMPLS[impl.check_against]
    want = ref.build(shape)(q, k, v).call()
    bound = impl.build(shape)(q, k, v)
    got = bound.to_bhnd(bound.call())
    return {"check_max_abs_diff": float((got - want).abs().max()), "check_tol": CHECK_TOL,
            "check_note": f"max |{impl.name} - {ref.name}| over all {shape.seq_len} rows, same inputs"}
