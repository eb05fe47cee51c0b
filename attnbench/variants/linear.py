"""Linear attention: Performer's FAVOR+ and Katharopoulos' elu+1 (and relu) feature maps.

All three compute, for a non-negative feature map phi and A_ij = phi(q_i) . phi(k_j),

    out_i = sum_j A_ij v_j / sum_j A_ij          (j over the keys query i may see)

without ever forming A: the keys are summed into a state S = sum_j phi(k_j) v_j^T [r, D] and
z = sum_j phi(k_j) [r], and out_i = phi(q_i) S / phi(q_i) z. Time O(n r D); extra memory
O(n D): the engine (``attnbench.engines.linear_chunks``) streams the sequences in spans of a
few MiB of features, so phi(Q) and phi(K) never exist whole, forward or backward. This file
holds the what — the feature maps (as the engine's :class:`FeatureMap`), their dense
definitions, the cost model and the registrations; the variants differ only in phi:

* ``performer@favor`` (Choromanski et al. 2021, "Rethinking Attention with Performers"):
  positive orthogonal random features for the softmax kernel,
  phi(x) = exp(W x - |x|^2 / 2) / sqrt(r), x = q * D^-1/4, W [r, D] with orthogonal rows
  (QR of Gaussian D x D blocks) rescaled by chi_D-distributed norms, so that
  E[phi(q) . phi(k)] = exp(q . k / sqrt(D)) and ``out`` estimates softmax attention.
* ``linear@elu`` (Katharopoulos et al. 2020, "Transformers are RNNs"): phi(x) = elu(x) + 1.
* ``linear@relu``: phi(x) = relu(x); a query whose features are all 0 (or that meets only
  such keys) has a zero normalizer, so this one's definition is out = A V / (A 1 + eps)
  (``eps`` = 1e-6 by default, the constant of fast-transformers' linear attention).

Layouts: q [B, H, N, D]; k, v [B, Hkv, M, D] with H a multiple of Hkv. The key side (features,
state) is computed once per K/V head and shared by its H/Hkv query heads by folding them into
the query rows — nothing is copied per head. fp16/bf16 inputs are computed in fp32 (the
exponentials of FAVOR+ do not survive 16-bit) and the output is cast back.

Causal (bottom-right aligned, query i sees keys j <= i + M - N, as everywhere in the suite) is
computed in blocks of ``chunk`` queries: inside a block the masked [c x c] block
phi(Q_c) phi(K_c)^T is used directly; across blocks only the running state (S, z) is carried.
The O(n r D) prefix-sum tensor of the textbook formulation is never built. With autograd the
engine keeps no features: its backward rebuilds them span by span (one extra forward's work).

Decode: ``decode_state(k, v, **params)`` sums the cached keys into a :class:`LinearState`;
``forward(q, k_new, v_new, state=st)`` absorbs the new keys and answers the queries in O(r D)
per token whatever the cache length, and returns the updated state in ``AttnOutput.state``.
Every forward returns the state of all the keys it saw (a prefill followed by decode steps).

FAVOR+ stabilization (the "max trick"), and why the result is an exact function of the
definition: a factor shared by the numerator and the denominator of out_i cancels exactly.

* Query side: each row is divided by its own exp(max_l w_l . x_i) (performer-pytorch's
  per-row max); the row's exp(-|x_i|^2 / 2) and the global 1 / sqrt(r) are such factors too and
  are not computed at all.
* Key side: performer-pytorch divides all keys by one global max over keys and features. In
  causal mode that constant depends on future keys (a future key can move it, and change the
  rounding or underflow of the past), and a decode state built earlier would be on a different
  scale. Here each key carries its own log-scale c_j = max_l log phi_l(k_j) (its features are
  stored as exp(log phi(k_j) - c_j) <= 1) and the state is kept on a running log-scale m — the
  largest c_j absorbed so far — like the running max of online softmax: when a block of keys
  comes in, m grows to m' and (S, z) are multiplied by exp(m - m') <= 1. Query i combines the
  state and the keys of its own chunk on the scale M_i = max(c_j : j visible to i), which only
  depends on keys it may see: every term is <= 1 (no overflow for any input), no future key
  changes a single bit of an earlier output, and the full-sequence, chunked and decode paths
  share one definition. The non-causal path is the same absorb-all-then-read.
  Stabilizers are detached: the output does not depend on them, so their gradient is zero.
  The big exponentials are exp2 of base-2 logits (log2 e folded into W once): the same
  function up to rounding, and ~3x cheaper than exp on an AVX-512 CPU.

The dense definitions (``reference_fn``) materialize A [N, M] with the plain per-row and global
max trick; the tests check every kernel path against them, outputs and gradients. The implied
attention (``weights_fn``) is that A normalized, A / (A 1 + eps).

Against performer-pytorch (``scripts/bench_performer.py``): with the same W and its eps set to
0 the two agree to 1e-15 in fp64. Its default adds eps = 1e-4 to every feature after the global
key max; where the key features are far below that max (q, k ~ N(0, 1) at D = 64, the suite's
'gaussian' rel_err inputs) the eps outweighs them and its output drifts to uniform weights —
its error then equals the uniform baseline's, while the exact estimator's is larger: its
variance grows like exp(|x_q + x_k|^2) / r, so FAVOR+ is only a good estimate for small
q, k norms (the test uses q, k ~ 0.5 N(0, 1) at D = 32, where the error falls as r grows).
"""
from __future__ import annotations

import hashlib
import math
from functools import lru_cache, partial

import torch
import torch.nn.functional as F

from attnbench import params as P
from attnbench import reference
from attnbench.case import Shape
from attnbench.engines import linear_chunks as engine
from attnbench.engines.linear_chunks import FeatureMap, LinearState
from attnbench.registry import AttnOutput, VariantSpec, add

DEFAULT_FEATURES = 256
DEFAULT_CHUNK = 64  # 32..64 fastest on a 2-core AVX-512 CPU at r = 256, D = 64
RELU_EPS = 1e-6
LOG2E = 1.0 / math.log(2.0)


# ------------------------------------------------------------------------------ parameters
def _check_int(name: str, value, lo: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name}={value!r}: must be an integer >= {lo} ({what})")
    return value


def _check_chunk(chunk) -> int:
    return _check_int("chunk", chunk, 1, "queries per causal block, e.g. 32..256")


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    if t.dtype in (torch.float16, torch.bfloat16):
        return torch.float32  # exp of FAVOR+ logits and long sums do not survive 16 bits
    if t.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype {t.dtype}: linear attention supports float16/bfloat16/float32/float64")
    return t.dtype


def _check_shapes(q, k, v) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D [B, H, N, D] / [B, Hkv, M, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"heads={q.shape[1]} is not a multiple of kv_heads={k.shape[1]}")


# ------------------------------------------------------------------------------ random features
def _seed_for(seed: int, d: int, r: int, orthogonal: bool) -> int:
    """A generator seed from (seed, D, r, orthogonal): the same call draws the same features in
    any process; changing ``seed`` draws new ones (the way to "redraw")."""
    key = f"favor+|seed={seed}|d={d}|r={r}|orth={int(orthogonal)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


def favor_projection(d: int, nb_features: int = DEFAULT_FEATURES, seed: int = 0,
                     orthogonal: bool = True) -> torch.Tensor:
    """The random feature matrix W [r, D] (float64, CPU), reproducible from (seed, D, r).

    orthogonal=True (the paper's ORF, performer-pytorch's ``scaling=0``): ceil(r / D) blocks,
    each the Q of a Gaussian D x D matrix (sign-fixed by diag(R), so Q is Haar-distributed),
    stacked and cut to r rows; then each row is rescaled by the norm of an independent
    Gaussian D-vector (chi_D), so rows have the marginal law of iid Gaussian rows while rows
    within a block stay exactly orthogonal. orthogonal=False: iid N(0, 1) entries.
    """
    d = _check_int("head_dim", d, 1, "the head dimension D")
    r = _check_int("nb_features", nb_features, 1, "the number of random features r, e.g. 256")
    seed = _check_int("seed", seed, 0, "seeds the random features; change it to draw new ones")
    if not isinstance(orthogonal, bool):
        raise ValueError(f"orthogonal={orthogonal!r}: must be True (orthogonal blocks) or False (iid rows)")
    return _draw(d, r, seed, orthogonal)


@lru_cache(maxsize=32)
def _draw(d: int, r: int, seed: int, orthogonal: bool) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():  # cached: a normal tensor (see _scaled)
        return _draw_now(d, r, seed, orthogonal)


def _draw_now(d: int, r: int, seed: int, orthogonal: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(_seed_for(seed, d, r, bool(orthogonal)))
    if not orthogonal:
        return torch.randn(r, d, generator=g, dtype=torch.float64)
    blocks = []
    for _ in range(-(-r // d)):
        qm, rm = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        qm = qm * torch.sign(torch.diagonal(rm)).where(torch.diagonal(rm) != 0, 1.0)
        blocks.append(qm.T)  # rows orthonormal
    w = torch.cat(blocks)[:r]
    norms = torch.randn(r, d, generator=g, dtype=torch.float64).norm(dim=1)
    return w * norms[:, None]


def _raw_projection(d: int, nb_features, seed, orthogonal, features) -> torch.Tensor:
    """W [r, D] float64: drawn from (seed, D, r), or the given ``features``."""
    if features is not None:
        if not torch.is_tensor(features) or features.dim() != 2 or features.shape[1] != d:
            got = tuple(features.shape) if torch.is_tensor(features) else type(features).__name__
            raise ValueError(f"features: must be a tensor [r, D={d}] of projection rows w_l; got {got}")
        return features.detach().to(device="cpu", dtype=torch.float64)
    return favor_projection(d, nb_features, seed, orthogonal)


def _projection(d: int, dtype, device, nb_features, seed, orthogonal, features) -> torch.Tensor:
    """W D^-1/4 log2(e) [r, D] at the compute dtype: the D^-1/4 of x = q D^-1/4 folded in once,
    and log2(e) so that features are exp2 of the GEMM's logits (exp2 is ~3x cheaper than exp
    on an AVX-512 CPU, measured: 0.3 vs 0.9 ns per element; the same function up to rounding)."""
    if features is None:
        favor_projection(d, nb_features, seed, orthogonal)  # validates
        return _scaled(d, nb_features, seed, orthogonal, dtype, str(device))
    w = _raw_projection(d, nb_features, seed, orthogonal, features)
    return (w * (d ** -0.25 * LOG2E)).to(device=device, dtype=dtype)


@lru_cache(maxsize=32)
def _scaled(d, r, seed, orthogonal, dtype, device) -> torch.Tensor:
    # Cached per device and dtype: no host-to-device copy per call. Made outside inference
    # mode: a first call under torch.inference_mode must not leave an inference tensor that a
    # later autograd call cannot save for backward.
    with torch.inference_mode(False), torch.no_grad():
        return (_draw(d, r, seed, orthogonal) * (d ** -0.25 * LOG2E)).to(device=device, dtype=dtype)


def favor_query_features(q: torch.Tensor, ws2: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """q [..., L, D] -> exp(w_l . x - max_l w_l . x) [..., L, r], each row's max feature = 1
    (``ws2`` = W D^-1/4 log2(e): the logits are in base 2).

    The row's max, its exp(-|x|^2/2) and 1/sqrt(r) multiply numerator and normalizer of that
    query alike, so they are left out (exactly). One GEMM (into ``out`` when given), then in
    place (no second buffer).
    """
    logits = torch.matmul(q, ws2.T, out=out)  # [..., L, r]
    with torch.no_grad():
        mx = logits.amax(-1, keepdim=True)
    return logits.sub_(mx).exp2_()


def favor_key_features(k: torch.Tensor, ws2: torch.Tensor,
                       out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """k [..., L, D] -> (exp(w_l . x - a_j) [..., L, r], c_j [..., L]), a_j = max_l w_l . x_j.

    log phi_l(k_j) = w_l . x_j - |x_j|^2 / 2 (up to the global -log sqrt(r)); its largest,
    c_j = a_j - |x_j|^2 / 2, is the key's own log-scale (natural log), kept apart so that keys
    combine on a common running scale. a_j is a detached stabilizer; c_j carries the gradient of
    -|x_j|^2 / 2. ``ws2`` and ``out`` as in :func:`favor_query_features`.
    """
    logits = torch.matmul(k, ws2.T, out=out)  # [..., L, r]: base-2 logits
    with torch.no_grad():
        a2 = logits.amax(-1)
    c = a2 * math.log(2.0) - (k * k).sum(-1) * (0.5 / math.sqrt(k.shape[-1]))  # |x|^2 / 2, x = k D^-1/4
    return logits.sub_(a2.unsqueeze(-1)).exp2_(), c


def favor_map(ws2: torch.Tensor) -> FeatureMap:
    """FAVOR+'s phi for the engine from ``ws2`` = W D^-1/4 log2(e) [r, D]: per-key log-scales."""
    return FeatureMap(ws2.shape[0], partial(favor_query_features, ws2=ws2), partial(favor_key_features, ws2=ws2),
                      True)


def _elu_features(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """elu(x) + 1. Into ``out`` (no autograd) as exp(min(x, 0)) + max(x, 0) with the exp as exp2:
    2x faster than F.elu (measured); under autograd F.elu, whose backward is one kernel where
    that form's would be five."""
    if out is None:
        return F.elu(x) + 1.0
    return torch.clamp(x, max=0.0, out=out).mul_(LOG2E).exp2_().add_(F.relu(x))


def _relu_features(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    return torch.clamp(x, min=0.0, out=out)


def _elu_keys(x: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
    return _elu_features(x, out), None


def _relu_keys(x: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
    return _relu_features(x, out), None


def elu_map(d: int) -> FeatureMap:
    """phi(x) = elu(x) + 1 (r = D, > 0: no log-scale)."""
    return FeatureMap(d, _elu_features, _elu_keys, False)


def relu_map(d: int) -> FeatureMap:
    """phi(x) = relu(x) (r = D)."""
    return FeatureMap(d, _relu_features, _relu_keys, False)


# ------------------------------------------------------------------------------ variants
def _run(q, k, v, fmap: FeatureMap, *, causal, state, chunk, eps=0.0) -> AttnOutput:
    out, st = engine.run(fmap, q, k, v, causal=causal, state=state, chunk=chunk, eps=eps, dt=_compute_dtype(q))
    return AttnOutput(out=out.to(q.dtype), state=st)


def performer_favor(q, k, v, *, causal=False, state=None, need_weights=False,
                    nb_features=DEFAULT_FEATURES, seed=0, orthogonal=True, chunk=DEFAULT_CHUNK,
                    features=None) -> AttnOutput:
    """FAVOR+ (positive orthogonal random features), q [B, H, N, D], k, v [B, Hkv, M, D].

    nb_features r: random features; seed: draws them (reproducible; another seed = a redraw);
    orthogonal: ORF blocks (True) or iid Gaussian rows; chunk: causal block size;
    features: an explicit W [r, D] (e.g. performer-pytorch's ``projection_matrix``) instead of
    drawing one. need_weights: not available (A is never formed); ``weights`` is None.
    Returns out [B, H, N, D] and the state of all keys seen (for decode).
    Time O((N H + M Hkv) r D); extra memory O(N H D + r D (H + N Hkv / span)).
    """
    _check_shapes(q, k, v)
    chunk = _check_chunk(chunk)
    ws2 = _projection(q.shape[-1], _compute_dtype(q), q.device, nb_features, seed, orthogonal, features)
    return _run(q, k, v, favor_map(ws2), causal=causal, state=state, chunk=chunk)


def linear_elu(q, k, v, *, causal=False, state=None, need_weights=False, chunk=DEFAULT_CHUNK) -> AttnOutput:
    """Katharopoulos et al.'s linear attention, phi(x) = elu(x) + 1 (> 0, so no epsilon).

    q [B, H, N, D], k, v [B, Hkv, M, D] -> out [B, H, N, D]. Time O(N D^2), memory O(N D).
    """
    _check_shapes(q, k, v)
    chunk = _check_chunk(chunk)
    return _run(q, k, v, elu_map(q.shape[-1]), causal=causal, state=state, chunk=chunk)


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 <= eps < math.inf):
        raise ValueError(f"eps={eps!r}: must be a finite number >= 0 (added to the normalizer, e.g. 1e-6)")
    return float(eps)


def linear_relu(q, k, v, *, causal=False, state=None, need_weights=False, chunk=DEFAULT_CHUNK,
                eps=RELU_EPS) -> AttnOutput:
    """Linear attention with phi(x) = relu(x); out = A V / (A 1 + eps) (a query or keys with no
    positive coordinate give A 1 = 0). Shapes and complexity as :func:`linear_elu`."""
    _check_shapes(q, k, v)
    chunk, eps = _check_chunk(chunk), _check_eps(eps)
    return _run(q, k, v, relu_map(q.shape[-1]), causal=causal, state=state, chunk=chunk, eps=eps)


class FavorAttention(torch.nn.Module):
    """FAVOR+ with its random features held as a buffer (moves with ``.to(device)``, saved in
    the state dict), for models: ``redraw()`` draws new features from the next seed, as
    Performer training does every so many steps. ``forward`` is :func:`performer_favor`."""

    def __init__(self, head_dim: int, nb_features: int = DEFAULT_FEATURES, seed: int = 0,
                 orthogonal: bool = True, chunk: int = DEFAULT_CHUNK):
        super().__init__()
        self.seed, self.orthogonal, self.chunk = seed, orthogonal, _check_chunk(chunk)
        self.register_buffer("projection", favor_projection(head_dim, nb_features, seed, orthogonal).float())

    def redraw(self, seed: int | None = None) -> None:
        """New features: from ``seed``, or from the next seed after the current one."""
        self.seed = self.seed + 1 if seed is None else seed
        w = favor_projection(self.projection.shape[1], self.projection.shape[0], self.seed, self.orthogonal)
        self.projection.copy_(w)

    def forward(self, q, k, v, *, causal: bool = False, state: LinearState | None = None) -> AttnOutput:
        return performer_favor(q, k, v, causal=causal, state=state, chunk=self.chunk, features=self.projection)


# ------------------------------------------------------------------------------ decode states
def favor_decode_state(k, v, *, nb_features=DEFAULT_FEATURES, seed=0, orthogonal=True,
                       chunk=DEFAULT_CHUNK, features=None, **_) -> LinearState:
    """The :class:`LinearState` of cached keys k, v [B, Hkv, M, D] (M may be 0): O(M r D)."""
    _check_chunk(chunk)
    dt = _compute_dtype(k)
    ws2 = _projection(k.shape[-1], dt, k.device, nb_features, seed, orthogonal, features)
    return engine.state_of(favor_map(ws2), k, v, dt)


def elu_decode_state(k, v, *, chunk=DEFAULT_CHUNK, **_) -> LinearState:
    return engine.state_of(elu_map(k.shape[-1]), k, v, _compute_dtype(k))


def relu_decode_state(k, v, *, chunk=DEFAULT_CHUNK, eps=RELU_EPS, **_) -> LinearState:
    _check_eps(eps)
    return engine.state_of(relu_map(k.shape[-1]), k, v, _compute_dtype(k))


# ------------------------------------------------------------------------------ dense definitions
def _products(phq, phk, *, causal, n, rows) -> torch.Tensor:
    """A = phq phk^T [B, Hkv, G, R, M] (query head h = hkv G + g), zero where causal hides a key."""
    b, h, nr, r = phq.shape
    hkv, m = phk.shape[1], phk.shape[2]
    a = torch.matmul(phq.reshape(b, hkv, h // hkv, nr, r), phk.unsqueeze(2).transpose(-1, -2))  # [B, Hkv, G, R, M]
    if causal:
        a = a * reference.causal_mask(n, m, phq.device, rows)
    return a


def _dense(phq, phk, v, *, causal, n, rows, eps=0.0) -> torch.Tensor:
    """A = phq phk^T [B, H, R, M] (causal-masked), out = A V / (A 1 + eps); 0 where A 1 = 0."""
    b, h, nr, _ = phq.shape
    a = _products(phq, phk, causal=causal, n=n, rows=rows)  # [B, Hkv, G, R, M]
    num = torch.matmul(a, v.unsqueeze(2)).reshape(b, h, nr, -1)
    den = a.sum(-1, keepdim=True).reshape(b, h, nr, 1)
    if eps > 0:
        return num / (den + eps)
    return num / torch.where(den > 0, den, torch.ones_like(den))


def _dense_weights(phq, phk, *, causal, eps=0.0) -> tuple[torch.Tensor, None]:
    """(A / (A 1 + eps) [B, H, N, M], None): the weights ``_dense`` averages V with (a row with
    A 1 = 0 is 0); every causal key is attended, so no support beyond causality."""
    b, h, n, _ = phq.shape
    a = _products(phq, phk, causal=causal, n=n, rows=None)  # [B, Hkv, G, N, M]
    den = a.sum(-1, keepdim=True)  # [B, Hkv, G, N, 1]
    den = den + eps if eps > 0 else torch.where(den > 0, den, torch.ones_like(den))
    return (a / den).reshape(b, h, n, -1), None  # [B, H, N, M]


def _rows(q, rows):
    return q if rows is None else q[:, :, rows]


def _favor_features(q, k, rows, nb_features, seed, orthogonal, features) -> tuple[torch.Tensor, torch.Tensor]:
    """(phi(Q rows) [B, H, R, r], phi(K) [B, Hkv, M, r]) of FAVOR+ by its definition: phi(x) =
    exp(W x - |x|^2/2) / sqrt(r), x = q D^-1/4, the kernel's W (drawn from the params or given).

    Max trick as in performer-pytorch's ``softmax_kernel``: a per-query max and one global max
    over all keys and features (constants that cancel in the ratio), at the inputs' dtype.
    """
    d = q.shape[-1]
    w = _raw_projection(d, nb_features, seed, orthogonal, features).to(device=q.device, dtype=q.dtype)
    r = w.shape[0]
    xq, xk = _rows(q, rows) * d ** -0.25, k * d ** -0.25
    lq = xq @ w.T - (xq * xq).sum(-1, keepdim=True) / 2
    lk = xk @ w.T - (xk * xk).sum(-1, keepdim=True) / 2
    phq = torch.exp(lq - lq.amax(-1, keepdim=True).detach()) / math.sqrt(r)
    phk = torch.exp(lk - lk.amax((-1, -2), keepdim=True).detach()) / math.sqrt(r)
    return phq, phk


def favor_reference(q, k, v, *, causal=False, rows=None, nb_features=DEFAULT_FEATURES, seed=0,
                    orthogonal=True, features=None, **_) -> torch.Tensor:
    """FAVOR+ by its definition, densely: A = phi(Q) phi(K)^T [N, M] (:func:`_favor_features`),
    out = A V / A 1 -> [B, H, R, D] for ``rows`` (default: all)."""
    phq, phk = _favor_features(q, k, rows, nb_features, seed, orthogonal, features)
    return _dense(phq, phk, v, causal=causal, n=q.shape[2], rows=rows)


def favor_weights(q, k, v, *, causal=False, nb_features=DEFAULT_FEATURES, seed=0, orthogonal=True,
                  features=None, **_) -> tuple[torch.Tensor, None]:
    """FAVOR+'s implied attention: (A / A 1 [B, H, N, M] with the kernel's features, None)."""
    phq, phk = _favor_features(q, k, None, nb_features, seed, orthogonal, features)
    return _dense_weights(phq, phk, causal=causal)


def elu_reference(q, k, v, *, causal=False, rows=None, **_) -> torch.Tensor:
    """phi = elu + 1, A = phi(Q) phi(K)^T, out = A V / A 1 -> [B, H, R, D]."""
    return _dense(_elu_features(_rows(q, rows)), _elu_features(k), v, causal=causal, n=q.shape[2], rows=rows)


def elu_weights(q, k, v, *, causal=False, **_) -> tuple[torch.Tensor, None]:
    """(A / A 1 [B, H, N, M], None) for phi = elu + 1 (every causal key has weight > 0)."""
    return _dense_weights(_elu_features(q), _elu_features(k), causal=causal)


def relu_reference(q, k, v, *, causal=False, rows=None, eps=RELU_EPS, **_) -> torch.Tensor:
    """phi = relu, A = phi(Q) phi(K)^T, out = A V / (A 1 + eps) -> [B, H, R, D]."""
    return _dense(F.relu(_rows(q, rows)), F.relu(k), v, causal=causal, n=q.shape[2], rows=rows,
                  eps=_check_eps(eps))


def relu_weights(q, k, v, *, causal=False, eps=RELU_EPS, **_) -> tuple[torch.Tensor, None]:
    """(A / (A 1 + eps) [B, H, N, M], None) for phi = relu: a row sums to A 1 / (A 1 + eps),
    just under 1, and is 0 where the query (or every key it sees) has no positive feature."""
    return _dense_weights(F.relu(q), F.relu(k), causal=causal, eps=_check_eps(eps))


# ------------------------------------------------------------------------------ cost model
def _flops(shape: Shape, r: int, chunk: int, projection: bool) -> float:
    """FLOPs of one forward call at ``shape`` with r features (decode: one new key absorbed,
    ``seq_len`` queries read the state)."""
    b, h, hkv, d = shape.batch, shape.heads, shape.kv_heads, shape.head_dim
    n, m = shape.seq_len, (1 if shape.mode == "decode" else shape.kv_len)
    fl = 0.0
    if projection:  # x W^T for q and k (+ |k|^2), exp counted as 1 FLOP per feature
        fl += h * n * (2 * r * d + r) + hkv * m * (2 * r * d + 2 * d + r)
    fl += hkv * m * (2 * r * (d + 1) + d + 1)  # [S | z] += phi(K)^T ([V | 1] scaled per key)
    fl += h * n * (2 * r * (d + 1) + d)  # phi(Q) [S | z], then the division
    if shape.causal and shape.mode != "decode":  # per block: phi(Q_c) phi(K_c)^T, masked, times [V | 1]
        fl += h * n * min(chunk, n) * (2 * r + 2 * (d + 1) + 2)
    return b * fl


def _peak_bytes(shape: Shape, r: int, chunk: int) -> float:
    """Extra bytes of one call at ``shape`` with r features, as the engine runs it.

    Forward: the output (and its 16-bit copy), one span's working set (features of its queries
    and keys, the [rows, D] blocks: ~5 MiB at STREAM_BYTES = 4 MiB) and the states. With
    autograd: dq, dk, dv (and, fwd+bwd, the output and its gradient), the causal spans' saved
    states, and about 3 working sets while a span is recomputed and differentiated (measured).
    """
    b, h, hkv, d = shape.batch, shape.heads, shape.kv_heads, shape.head_dim
    n, m = shape.seq_len, (1 if shape.mode == "decode" else shape.kv_len)
    causal = shape.causal and shape.mode != "decode"
    dt = torch.float32 if shape.dtype in ("float16", "bfloat16") else shape.torch_dtype
    e, ein = torch.finfo(dt).bits // 8, shape.element_size
    rows = min(engine.span_rows(b, h, r, d, dt), max(n, m))
    work = (b * (h + hkv) * rows * (r + 2 * d + 2) + 3 * b * hkv * r * (d + 1)) * e
    if causal:  # a block's products, its masks and scales
        work += 3 * b * h * chunk * (chunk + r) * e
    out = b * h * n * d * (e + (ein if ein != e else 0))
    if not shape.needs_grad:
        return float(out + work)
    grads = b * (h * n + 2 * hkv * m) * d * ein
    saved = -(-n // rows) * b * hkv * r * (d + 1) * e if causal else 0
    around = 0 if shape.mode == "bwd" else out + b * h * n * d * ein  # made before a bwd call
    return float(around + grads + saved + 3 * work)


def _favor_flops(shape, params):
    return _flops(shape, params["nb_features"], params["chunk"], True)


def _favor_mem(shape, params):
    return _peak_bytes(shape, params["nb_features"], params["chunk"])


def _phi_flops(shape, params):
    return _flops(shape, shape.head_dim, params["chunk"], False)


def _phi_mem(shape, params):
    return _peak_bytes(shape, shape.head_dim, params["chunk"])


CHUNK = P.integer(DEFAULT_CHUNK, minimum=1, doc="queries per causal block")


def _features(x):
    if x is not None and not (isinstance(x, torch.Tensor) and x.dim() == 2):
        raise ValueError
    return x
_COMMON = dict(family="linear", exact=False, causal=True, cross=True, kv_heads=True)

PERFORMER = add(VariantSpec(
    name="performer@favor", forward=performer_favor, time="O(n r d)", memory="O(n d)",
    params={"nb_features": P.integer(DEFAULT_FEATURES, minimum=1, doc="random features r"),
            "seed": P.integer(0, minimum=0, doc="seed of the random features"),
            "orthogonal": P.boolean(True, doc="orthogonal random features (FAVOR+) rather than i.i.d."),
            "chunk": CHUNK,
            "features": P.Param(None, "none (drawn from seed) or a [r, D] tensor of random features (Python API)",
                                _features, doc="explicit random features (a model's buffer)")},
    flops_fn=_favor_flops, memory_fn=_favor_mem, reference_fn=favor_reference, weights_fn=favor_weights,
    decode_state=favor_decode_state, default=True,
    doc="FAVOR+: positive orthogonal random features (r = nb_features) estimating softmax attention; "
        "causal by chunked prefix sums, O(1)-per-token decode from a running state",
    paper="Choromanski et al. 2021, Rethinking Attention with Performers", **_COMMON,
))
LINEAR_ELU = add(VariantSpec(
    name="linear@elu", forward=linear_elu, time="O(n d^2)", memory="O(n d)",
    params={"chunk": CHUNK}, flops_fn=_phi_flops, memory_fn=_phi_mem,
    reference_fn=elu_reference, weights_fn=elu_weights, decode_state=elu_decode_state, default=True,
    doc="linear attention with phi(x) = elu(x) + 1; causal by chunked prefix sums, O(1)-per-token decode",
    paper="Katharopoulos et al. 2020, Transformers are RNNs", **_COMMON,
))
LINEAR_RELU = add(VariantSpec(
    name="linear@relu", forward=linear_relu, time="O(n d^2)", memory="O(n d)",
    params={"chunk": CHUNK, "eps": P.number(RELU_EPS, minimum=0.0, doc="added to the normalizer")},
    flops_fn=_phi_flops, memory_fn=_phi_mem,
    reference_fn=relu_reference, weights_fn=relu_weights, decode_state=relu_decode_state,
    doc="linear attention with phi(x) = relu(x), out = A V / (A 1 + eps)",
    paper="Katharopoulos et al. 2020 (relu feature map); Qin et al. 2022, cosFormer (relu kernel)", **_COMMON,
))
