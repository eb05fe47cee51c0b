"""Swin (shifted-window) attention: every kernel against the pattern, and the pattern against Swin.

Three layers of evidence:

1. ``swin@blocked`` / ``@dense`` / ``@sdpa_mask`` (and ``@flex``, slow) equal the pattern's dense
   definition (mask + relative-position bias) through ``check_case``: outputs and gradients,
   fp32 and fp64, MHA / GQA / MQA, windows 2, 3, 4, 7, shift on and off, square, non-square,
   non-divisible grids and grids smaller than the window. ``bias_std=1.0`` so a wrong bias
   index shows.
2. First principles: an independent shifted-window attention written here the way the official
   Swin Transformer code computes it (img_mask labelled with slices on the padded grid, not
   rolled; torch.roll of the data; window_partition; -100 between different labels; the
   relative_position_index from meshgrid). The pattern's dense mask and bias, and every kernel's
   output, must equal it. One deliberate difference: the official code lets queries attend to
   the zero-padded tokens; the suite masks them. Grids divisible by M have no padding, so there
   the official code is used unchanged.
3. Degenerate geometry: one window covering the grid, no shift = full attention plus the bias
   (plain full attention when the bias is zero).

``check_case`` runs swin@blocked with autograd (every window at once); without autograd it runs
chunks of windows per head, checked against both at every kind of chunk boundary.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from attnbench import reference
from attnbench.check import check_case
from attnbench.check import check_rows
from attnbench.harness.inputs import make_inputs
from attnbench.patterns import dense_mask, get_pattern, pattern_flops
from attnbench import Shape, Unsupported, get, names
from attnbench.patterns.swin import bias_table, bias_table_init, swin_geometry
import attnbench.variants.swin as swin_kernel

HEADS = 8
KV_HEADS = (HEADS, HEADS // 4, 1)
KERNELS = ("swin@blocked", "swin@dense", "swin@sdpa_mask")
# (grid, window): square / non-square, divisible by M or not, smaller than M (Swin then shrinks
# the window to the shorter side and drops the shift).
GEOMETRIES = [
    ((8, 8), 4),    # square, divisible: 2 x 2 windows
    ((8, 8), 3),    # square, not divisible (pad to 9 x 9)
    ((6, 10), 3),   # non-square
    ((6, 10), 4),   # non-square, not divisible (pad to 8 x 12)
    ((5, 7), 2),    # odd sides, tiny windows
    ((9, 11), 4),   # both sides padded
    ((14, 14), 7),  # Swin's own geometry (224 / 4 / 8 = 28 -> stage 3 is 14 x 14, M = 7)
    ((5, 7), 7),    # shorter side < M: window 5, no shift
    ((3, 3), 4),    # grid smaller than M: one window
    ((1, 7), 8),    # 1 x n (n prime): window 1, each token attends to itself
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one torch thread (conftest.one_thread)."""


def _params(grid, window, shift, bias_std=1.0):
    return dict(grid=grid, window=window, shift=shift, seed=0, bias_std=bias_std)


def _shape(grid, hkv, dtype, heads=HEADS, batch=2, d=16):
    n = grid[0] * grid[1]
    return Shape(batch=batch, heads=heads, kv_heads=hkv, seq_len=n, kv_len=n, head_dim=d, dtype=dtype)


def _assert_ok(spec_name, shape, params):
    res = check_case(get(spec_name), shape, grads=True, params=params)
    detail = (f"{spec_name} {shape} {params}: {res.status} {res.reasons} "
              f"errors={res.errors} allowed={res.allowed}")
    assert res.status == "ok", detail
    return res


# --------------------------------------------------------------------------- 1. kernels vs the pattern

def _kernel_cases():
    out = []
    for kernel in KERNELS:
        for grid, win in GEOMETRIES:
            for shift in (True, False):
                for hkv in KV_HEADS:
                    for dt in ("float32", "float64"):
                        out.append(pytest.param(kernel, grid, win, shift, hkv, dt,
                                                id=f"{kernel}-{grid[0]}x{grid[1]}-M{win}-"
                                                   f"{'shift' if shift else 'noshift'}-kv{hkv}-{dt}"))
    return out


@pytest.mark.parametrize("kernel, grid, win, shift, hkv, dtype", _kernel_cases())
def test_kernel_matches_pattern(kernel, grid, win, shift, hkv, dtype):
    res = _assert_ok(kernel, _shape(grid, hkv, dtype), _params(grid, win, shift))
    assert {"out", "dq", "dk", "dv"} <= set(res.errors)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("grid, win", [((6, 10), 4), ((14, 14), 7)], ids=["6x10-M4", "14x14-M7"])
def test_blocked_half_precision(grid, win, dtype):
    _assert_ok("swin@blocked", _shape(grid, 2, dtype), _params(grid, win, True))


@pytest.mark.slow
@pytest.mark.parametrize("grid, win, hkv", [((8, 8), 4, 2), ((6, 10), 4, HEADS)],
                         ids=["8x8-M4-kv2", "6x10-M4-kv8"])
def test_flex_matches_pattern(grid, win, hkv):
    """Compiled FlexAttention with the pattern's mask_mod and score_mod (forward only on CPU)."""
    res = _assert_ok("swin@flex", _shape(grid, hkv, "float32"), _params(grid, win, True))
    assert res.errors["out"] <= res.allowed["out"]


def test_blocked_is_registered_as_the_default_swin_kernel():
    spec = get("swin")
    assert spec.name == "swin@blocked"
    assert (spec.family, spec.exact, spec.reference) == ("window", True, "swin")
    assert not spec.causal and not spec.cross
    assert spec.defaults == dict(get_pattern("swin").defaults)
    assert "swin@blocked" in names("all") and "swin@blocked" in names("swin@*")


def test_blocked_flops_count_padded_windows():
    spec = get("swin@blocked")
    # 64 x 64, M = 8: no padding, every token scores its 64 window keys
    s = Shape(batch=1, heads=8, kv_heads=8, seq_len=4096, kv_len=4096, head_dim=64)
    assert spec.flops(s) == 4.0 * 1 * 8 * 64 * 4096 * 64
    # 10 x 10 padded to 16 x 16: 256 slots x 64 keys, more than the pattern's useful pairs
    s = Shape(batch=2, heads=4, kv_heads=1, seq_len=100, kv_len=100, head_dim=32)
    assert spec.flops(s) == 4.0 * 2 * 4 * 32 * 256 * 64
    assert spec.flops(s) > pattern_flops("swin", s, dict(spec.defaults))
    assert spec.predicted_peak_bytes(s) > 0


def test_blocked_refuses_causal_and_cross():
    spec = get("swin@blocked")
    q, k, v = make_inputs(Shape(batch=1, heads=2, kv_heads=2, seq_len=16, kv_len=16, head_dim=8))
    with pytest.raises(Unsupported):
        spec(q, k, v, causal=True)
    with pytest.raises(Unsupported):
        spec(q, k[:, :, :8], v[:, :, :8])
    assert spec.not_supported_reasons(Shape(batch=1, heads=2, kv_heads=2, seq_len=16, kv_len=16,
                                            head_dim=8, causal=True))


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_blocked_never_forms_n_by_n():
    """No tensor bigger than the windowed scores [B, H, slots, M^2], forward or backward."""
    grid, win = (32, 48), 4
    n = grid[0] * grid[1]
    shape = Shape(batch=1, heads=4, kv_heads=1, seq_len=n, kv_len=n, head_dim=8)
    q, k, v = make_inputs(shape, requires_grad=True)
    spec = get("swin@blocked")
    with _LargestTensor() as rec:
        out = spec(q, k, v, **_params(grid, win, True)).out
        out.sum().backward()
    scores = shape.batch * shape.heads * n * win * win
    assert rec.largest <= scores < n * n
    assert q.grad is not None and k.grad is not None and v.grad is not None


def test_blocked_large_grid_matches_sampled_rows():
    """256 x 256 tokens (an n x n fp32 score matrix would be 16 GiB per head): sampled rows."""
    grid = (256, 256)
    n = grid[0] * grid[1]
    shape = Shape(batch=1, heads=2, kv_heads=1, seq_len=n, kv_len=n, head_dim=8)
    spec = get("swin@blocked")
    q, k, v = make_inputs(shape)
    params = _params(grid, 8, True)
    with torch.no_grad():
        out = spec(q, k, v, **params).out
    chk = check_rows(spec, shape, q, k, v, out, n_rows=32, params={**spec.defaults, **params})
    assert chk["ok"] and chk["rows_checked"] == 32, chk


# Inference path: windows in chunks per head (shifted, padded, GQA; one window, a non-divisor, all).
CHUNKED = [((8, 8), 4, True), ((9, 11), 4, True), ((6, 10), 3, False), ((14, 14), 7, True), ((1, 7), 8, True)]


@pytest.mark.parametrize("windows", [1, 3, None], ids=["1win", "3win", "all"])
@pytest.mark.parametrize("hkv", [HEADS, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("grid, win, shift", CHUNKED, ids=[f"{g[0]}x{g[1]}-M{m}-{'shift' if s else 'noshift'}"
                                                           for g, m, s in CHUNKED])
def test_blocked_inference_chunks_equal_autograd_path_and_reference(grid, win, shift, dtype, hkv, windows,
                                                                     monkeypatch):
    """Without autograd, swin@blocked runs chunks of windows per head into one head's slots;
    with it, every window at once. Both equal each other and the pattern's definition on every
    row: chunks of one window, of 3 (not a divisor of the window count: a short last chunk)
    and of all, with shifted windows (all four mask patterns), padding on both sides, a 1 x n
    grid (windows of one token), GQA, fp32 and fp64."""
    shape = _shape(grid, hkv, dtype)
    n, spec, params = shape.seq_len, get("swin@blocked"), _params(grid, win, shift)
    q, k, v = make_inputs(shape, requires_grad=True)
    whole = spec(q, k, v, **params).out.detach()
    t = swin_geometry(n, params)["win"] ** 2
    if windows:
        monkeypatch.setattr(swin_kernel, "CHUNK_BYTES", windows * q.element_size() * t * (4 * shape.head_dim + t))
    tol = 1e-12 if dtype == "float64" else 2e-6
    for mode in (torch.inference_mode, torch.no_grad):
        with mode():
            out = spec(q.detach(), k.detach(), v.detach(), **params).out
        assert (out - whole).abs().max().item() < tol, mode
    chk = check_rows(spec, shape, q, k, v, out, n_rows=n, params={**spec.defaults, **params})
    assert chk["ok"] and chk["rows_checked"] == n, chk


def test_blocked_inference_allocates_one_head_at_a_time(monkeypatch, storages):
    """Without autograd nothing the size of q, k or v is allocated but the output: q, k and v
    are gathered one chunk of windows of one head at a time, and the slots hold one head
    (at n = 16384 the whole-sequence gathers were 3 x 32 MiB plus [nW, H, M^2, M^2] scores,
    fresh allocations above glibc's mmap threshold, page-faulted on every call)."""
    grid, win, heads = (24, 40), 4, 8
    n = grid[0] * grid[1]
    shape = Shape(batch=1, heads=heads, kv_heads=heads, seq_len=n, kv_len=n, head_dim=16)
    q, k, v = make_inputs(shape)
    t = win * win
    monkeypatch.setattr(swin_kernel, "CHUNK_BYTES", 5 * 4 * t * (4 * 16 + t))  # chunks of 5 windows
    with torch.inference_mode(), storages() as rec:
        out = get("swin@blocked")(q, k, v, **_params(grid, win, True)).out
    made = sorted(b for p, (b, _) in rec.storages.items() if p not in {x.untyped_storage().data_ptr() for x in (q, k, v)})
    assert made[-1] == out.numel() * 4
    assert made[-2] <= n * 16 * 4 == made[-1] // heads, made[-4:]  # one head's slots


# --------------------------------------------------------------------------- 2. first principles

def _window_partition(x: torch.Tensor, m: int) -> torch.Tensor:
    """[B, Hp, Wp, C] -> [B * nW, m, m, C], windows in raster order (Swin's window_partition)."""
    b, hp, wp, c = x.shape
    x = x.view(b, hp // m, m, wp // m, m, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, m, m, c)


def _window_reverse(w: torch.Tensor, m: int, hp: int, wp: int) -> torch.Tensor:
    """[B * nW, m, m, C] -> [B, Hp, Wp, C] (Swin's window_reverse)."""
    b = w.shape[0] // ((hp // m) * (wp // m))
    x = w.view(b, hp // m, wp // m, m, m, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)


class OfficialSwin:
    """Shifted-window attention on an H x W grid, step by step as the official Swin code does it."""

    def __init__(self, grid, window, shift):
        self.h, self.w = grid
        m = window
        s = m // 2 if shift else 0
        if min(self.h, self.w) <= m:  # SwinTransformerBlock.__init__: no partition, no shift
            s, m = 0, min(self.h, self.w)
        self.m, self.s, self.t = m, s, m * m
        self.hp, self.wp = math.ceil(self.h / m) * m, math.ceil(self.w / m) * m
        # relative_position_index: coords [2, M, M] from meshgrid, pairwise differences, shifted
        # to start at 0, row offset times (2M - 1) plus column offset.
        coords = torch.stack(torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij"))
        flat = torch.flatten(coords, 1)  # [2, T]
        rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()  # [T, T, 2]
        rel[:, :, 0] += m - 1
        rel[:, :, 1] += m - 1
        rel[:, :, 0] *= 2 * m - 1
        self.rel_index = rel.sum(-1)  # [T, T]
        # attn_mask for SW-MSA: img_mask labelled on the padded grid (in the shifted frame, the
        # mask itself is never rolled), partitioned, -100 between different labels.
        self.attn_mask = None
        if s > 0:
            img_mask = torch.zeros(1, self.hp, self.wp, 1)
            cnt = 0
            for hs in (slice(0, -m), slice(-m, -s), slice(-s, None)):
                for ws in (slice(0, -m), slice(-m, -s), slice(-s, None)):
                    img_mask[:, hs, ws, :] = cnt
                    cnt += 1
            mw = _window_partition(img_mask, m).view(-1, self.t)
            am = mw.unsqueeze(1) - mw.unsqueeze(2)
            self.attn_mask = am.masked_fill(am != 0, -100.0).masked_fill(am == 0, 0.0)  # [nW, T, T]

    def to_windows(self, x: torch.Tensor, pad_value=0) -> torch.Tensor:
        """[B', n, C] in raster order -> [B' * nW, T, C]: pad, roll by -s, partition."""
        b, _, c = x.shape
        x = F.pad(x.view(b, self.h, self.w, c), (0, 0, 0, self.wp - self.w, 0, self.hp - self.h),
                  value=pad_value)
        if self.s:
            x = torch.roll(x, shifts=(-self.s, -self.s), dims=(1, 2))
        return _window_partition(x, self.m).reshape(-1, self.t, c)

    def from_windows(self, w: torch.Tensor) -> torch.Tensor:
        """[B' * nW, T, C] -> [B', n, C]: reverse, roll by +s, unpad."""
        x = _window_reverse(w.view(-1, self.m, self.m, w.shape[-1]), self.m, self.hp, self.wp)
        if self.s:
            x = torch.roll(x, shifts=(self.s, self.s), dims=(1, 2))
        return x[:, :self.h, :self.w].reshape(x.shape[0], self.h * self.w, -1)

    def table(self, heads, seed=0, std=1.0, dtype=torch.float64) -> torch.Tensor:
        """relative_position_bias_table [(2M-1)^2, heads] (the suite draws it from a seed)."""
        return bias_table(heads, self.m, seed, std, "cpu", dtype).t()

    def window_bias(self, table: torch.Tensor) -> torch.Tensor:
        return table[self.rel_index.view(-1)].view(self.t, self.t, -1).permute(2, 0, 1)  # [heads, T, T]

    def attention(self, q, k, v, table, mask_padding=True) -> torch.Tensor:
        """q [B, H, n, D], k/v [B, Hkv, n, D] -> [B, H, n, D]."""
        b, heads, n, d = q.shape
        rep = heads // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)  # a test may copy
        qw, kw, vw = (self.to_windows(x.reshape(b * heads, n, d)) for x in (q, k, v))
        attn = (qw * d ** -0.5) @ kw.transpose(-2, -1)  # [B*H*nW, T, T]
        nw = attn.shape[0] // (b * heads)
        attn = attn.view(b, heads, nw, self.t, self.t) + self.window_bias(table).unsqueeze(1)
        if self.attn_mask is not None:
            attn = attn + self.attn_mask.to(attn.dtype)
        if mask_padding:  # the suite's rule: padded keys are never attended
            pad = self.to_windows(torch.zeros(1, n, 1, dtype=torch.bool), pad_value=True).view(nw, self.t)
            attn = attn.masked_fill(pad[None, None, :, None, :], float("-inf"))
        attn = attn.softmax(-1).view(-1, self.t, self.t)
        return self.from_windows(attn @ vw).view(b, heads, n, d)

    def dense(self, heads, table):
        """(allowed [n, n] bool, bias [heads, n, n]) of the official layout, on real tokens."""
        n = self.h * self.w
        ids = self.to_windows(torch.arange(n).view(1, n, 1), pad_value=-1).squeeze(-1)  # [nW, T]
        qi, ki = ids[:, :, None].expand(-1, -1, self.t), ids[:, None, :].expand(-1, self.t, -1)
        ok = (qi >= 0) & (ki >= 0)
        if self.attn_mask is not None:
            ok &= self.attn_mask == 0
        allowed = torch.zeros(n, n, dtype=torch.bool)
        allowed[qi[ok], ki[ok]] = True
        wb = self.window_bias(table).unsqueeze(1).expand(-1, ids.shape[0], -1, -1)  # [heads, nW, T, T]
        bias = torch.zeros(heads, n, n, dtype=table.dtype)
        bias[:, qi[ok], ki[ok]] = wb[:, ok]
        return allowed, bias


OFFICIAL = [
    ((8, 8), 4), ((8, 8), 7), ((14, 14), 4), ((14, 14), 7),
    ((6, 10), 4),  # non-square, padded
    ((5, 9), 7),   # shorter side < M: window 5, no shift (official rule)
    ((5, 5), 7),   # smaller than M: one window
]


@pytest.mark.parametrize("shift", [True, False], ids=["shift", "noshift"])
@pytest.mark.parametrize("grid, win", OFFICIAL, ids=[f"{g[0]}x{g[1]}-M{m}" for g, m in OFFICIAL])
def test_pattern_mask_and_bias_equal_official(grid, win, shift):
    heads = 3
    off = OfficialSwin(grid, win, shift)
    n = grid[0] * grid[1]
    params = _params(grid, win, shift)
    g = swin_geometry(n, params)
    assert (g["win"], g["shift"], g["hp"], g["wp"]) == (off.m, off.s, off.hp, off.wp)
    want_mask, want_bias = off.dense(heads, off.table(heads))
    pattern = get_pattern("swin")
    got_mask = dense_mask(pattern, n, n, params)
    assert torch.equal(got_mask, want_mask)
    _, dense_bias = pattern.make_bias(n, n, heads, params, "cpu", torch.float64)
    got_bias = dense_bias(torch.arange(n), torch.arange(n))
    assert torch.equal(got_bias[:, want_mask], want_bias[:, want_mask])
    if off.s:  # the roll brings far-apart tokens together: region labels must keep them apart
        t = torch.arange(n)
        r, c = t // grid[1], t % grid[1]
        far = ((r[:, None] - r[None, :]).abs() >= off.m) | ((c[:, None] - c[None, :]).abs() >= off.m)
        assert not (got_mask & far).any()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shift", [True, False], ids=["shift", "noshift"])
@pytest.mark.parametrize("grid, win", OFFICIAL, ids=[f"{g[0]}x{g[1]}-M{m}" for g, m in OFFICIAL])
def test_kernel_equals_official(kernel, grid, win, shift):
    shape = _shape(grid, 2, "float64", heads=4, batch=2, d=8)
    q, k, v = make_inputs(shape)
    off = OfficialSwin(grid, win, shift)
    want = off.attention(q, k, v, off.table(shape.heads))
    got = get(kernel)(q, k, v, **_params(grid, win, shift)).out
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("grid, win", [((14, 14), 7), ((8, 8), 7)], ids=["14x14-M7", "8x8-M7"])
def test_flex_equals_official(grid, win):
    shape = _shape(grid, 2, "float32", heads=4, batch=1, d=16)
    q, k, v = make_inputs(shape)
    off = OfficialSwin(grid, win, True)
    want = off.attention(q.double(), k.double(), v.double(), off.table(shape.heads))
    got = get("swin@flex")(q, k, v, **_params(grid, win, True)).out
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)


def test_official_padding_is_the_only_difference():
    """The official code attends to zero-padded tokens; the suite masks them.

    8 x 8 with M = 7 pads to 14 x 14: there the two differ. 14 x 14 with M = 7 has no padding:
    the official computation, unmodified, equals the kernel.
    """
    spec = get("swin@blocked")
    for grid, differs in (((8, 8), True), ((14, 14), False)):
        shape = _shape(grid, 4, "float64", heads=4, batch=1, d=8)
        q, k, v = make_inputs(shape)
        off = OfficialSwin(grid, 7, True)
        official = off.attention(q, k, v, off.table(4), mask_padding=False)
        got = spec(q, k, v, **_params(grid, 7, True)).out
        gap = (official - got).abs().max().item()
        assert (gap > 1e-3) if differs else (gap < 1e-12), (grid, gap)


# --------------------------------------------------------------------------- 3. degenerate geometry

def _full_grid_bias(grid, heads, std):
    """Bias of one window covering the whole (square) grid: table[(dr + L-1) * (2L-1) + dc + L-1]."""
    side = grid[0]
    table = bias_table(heads, side, 0, std, "cpu", torch.float64)
    t = torch.arange(grid[0] * grid[1])
    r, c = t // grid[1], t % grid[1]
    dr, dc = r[:, None] - r[None, :] + side - 1, c[:, None] - c[None, :] + side - 1
    return table[:, dr * (2 * side - 1) + dc]  # [heads, n, n]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("grid, win, shift", [((8, 8), 8, False), ((8, 8), 8, True), ((6, 6), 9, True)])
@pytest.mark.parametrize("std", [1.0, 0.0])
def test_one_window_is_full_attention_plus_bias(kernel, grid, win, shift, std):
    shape = _shape(grid, 2, "float64", heads=4, batch=2, d=8)
    q, k, v = make_inputs(shape)
    g = swin_geometry(shape.seq_len, _params(grid, win, shift))
    assert (g["win"], g["shift"], g["hp"], g["wp"]) == (grid[0], 0, grid[0], grid[1])
    got = get(kernel)(q, k, v, **_params(grid, win, shift, bias_std=std)).out
    want = reference.attention(q, k, v, bias=_full_grid_bias(grid, shape.heads, std)).out
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    if std == 0.0:
        torch.testing.assert_close(got, reference.attention(q, k, v).out, rtol=0, atol=1e-12)


@pytest.mark.parametrize("grid, window, expect", [
    ((14, 14), 7, (7, 3, 14, 14)),
    ((8, 8), 7, (7, 3, 14, 14)),
    ((8, 8), 8, (8, 0, 8, 8)),    # min(H, W) <= M: window = min side, no shift
    ((5, 9), 7, (5, 0, 5, 10)),   # elongated: min-side windows, no shift
    ((1, 37), 8, (1, 0, 1, 37)),  # 1 x n (prime n): each token its own window
    ((6, 10), 4, (4, 2, 8, 12)),
])
def test_geometry_follows_official_rule(grid, window, expect):
    g = swin_geometry(grid[0] * grid[1], _params(grid, window, True))
    assert (g["win"], g["shift"], g["hp"], g["wp"]) == expect
    assert swin_geometry(grid[0] * grid[1], _params(grid, window, False))["shift"] == 0


# --------------------------------------------------------------------------- 4. a learned bias table
# A model that learns Swin's table passes it as ``bias_table=`` [H, (2M-1)^2] (M: the window after
# the shrink rule) to spec.forward, beside the resolved params, as the model's Attention does.

LEARNED = [((6, 10), 4, True), ((8, 8), 3, True), ((5, 7), 7, False)]  # padded, shifted; shrunk to M = 5


def _forward(kernel, q, k, v, params, **kw):
    spec = get(kernel)
    return spec.forward(q, k, v, **kw, **spec.resolve_params(params)).out


def _table(heads, win, seed=7):
    t = torch.randn(heads, (2 * win - 1) ** 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return t.requires_grad_()


@pytest.mark.parametrize("kernel", ("swin@blocked", "swin@sdpa_mask"))
@pytest.mark.parametrize("grid, win, shift", LEARNED, ids=[f"{g[0]}x{g[1]}-M{m}" for g, m, _ in LEARNED])
def test_given_table_matches_reference_with_gradients(kernel, grid, win, shift):
    """With a given table: outputs and the gradients of the table and of q, k, v equal those of
    the dense reference (swin@dense) and of the official computation, in float64."""
    shape = _shape(grid, 2, "float64", heads=4, batch=2, d=8)
    params = _params(grid, win, shift)
    m = swin_geometry(shape.seq_len, params)["win"]
    off = OfficialSwin(grid, win, shift)
    q, k, v = make_inputs(shape)
    g = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grads = {}
    for name in (kernel, "swin@dense", "official"):
        table = _table(shape.heads, m)
        qkv = [x.clone().requires_grad_() for x in (q, k, v)]
        if name == "official":
            out = off.attention(*qkv, table.t())  # the official layout is [(2M-1)^2, heads]
        else:
            out = _forward(name, *qkv, params, bias_table=table)
        grads[name] = (out,) + torch.autograd.grad(out, (table, *qkv), g)
    for name in ("swin@dense", "official"):
        for what, a, b in zip(("out", "dtable", "dq", "dk", "dv"), grads[kernel], grads[name]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=f"{kernel} vs {name}: {what}")
    assert grads[kernel][1].abs().sum() > 0


@pytest.mark.parametrize("kernel", KERNELS)
def test_given_seeded_table_gives_the_seeded_result(kernel):
    grid, win = (6, 10), 4
    shape = _shape(grid, 2, "float32", heads=4, batch=2, d=8)
    params = _params(grid, win, True)
    q, k, v = make_inputs(shape)
    seeded = bias_table_init(shape.seq_len, shape.heads, params)
    assert seeded.dtype == torch.float64 and seeded.shape == (4, 49)
    assert torch.equal(seeded, bias_table(4, 4, 0, 1.0, "cpu", torch.float64))
    assert seeded is not bias_table_init(shape.seq_len, shape.heads, params)  # a fresh tensor each time
    want = _forward(kernel, q, k, v, params)
    assert torch.equal(_forward(kernel, q, k, v, params, bias_table=seeded), want)
    assert torch.equal(_forward(kernel, q, k, v, params, bias_table=seeded.float()), want)
    other = _forward(kernel, q, k, v, params, bias_table=seeded * 2)
    assert not torch.allclose(other, want)
    assert torch.equal(_forward(kernel, q, k, v, params), want)  # the seeded path is untouched


@pytest.mark.parametrize("kernel", (*KERNELS, "swin@flex"))
def test_given_table_of_wrong_shape_names_the_expected_one(kernel):
    grid = (5, 7)  # window 7 shrinks to 5: the table is [heads, 81]
    shape = _shape(grid, 4, "float32", heads=4, batch=1, d=8)
    q, k, v = make_inputs(shape)
    with pytest.raises(ValueError, match=r"expected \[heads, \(2M-1\)\^2\] = \[4, 81\] \(M = 5"):
        _forward(kernel, q, k, v, _params(grid, 7, True), bias_table=torch.zeros(4, 169))


def test_flex_on_cpu_refuses_a_table_to_learn():
    """No FlexAttention backward on CPU: a table that requires grad is refused with a reason."""
    grid = (8, 8)
    q, k, v = make_inputs(_shape(grid, 4, "float32", heads=4, batch=1, d=8))
    table = _table(4, 4).float().detach().requires_grad_()
    with pytest.raises(Unsupported, match="swin@blocked"):
        _forward("swin@flex", q, k, v, _params(grid, 4, True), bias_table=table)


def test_bias_table_is_refused_by_a_pattern_without_bias():
    q, k, v = make_inputs(Shape(batch=1, heads=2, kv_heads=2, seq_len=16, kv_len=16, head_dim=8))
    with pytest.raises(ValueError, match="no relative-position bias"):
        _forward("sliding_window@dense", q, k, v, {}, bias_table=torch.zeros(2, 9))
