"""The variant registry: names, globs, plugins, entry points, capability reasons and FLOPs."""
from __future__ import annotations

import importlib.util
import textwrap
from dataclasses import replace

import pytest

from attnbench import catalog as registry  # the loader: all_specs, get, names, load_plugin, ...
from attnbench import reference
from attnbench.case import DTYPES, AttnOutput, Shape
from attnbench.catalog import get, names
from attnbench.costs import dense_flops
from attnbench.registry import UnknownVariant, VariantSpec
from attnbench.vocab import FAMILIES
from attnbench.vocab import MODES as MODE_FLOP_FACTOR


def _identity_forward(q, k, v, *, causal=False, state=None, need_weights=False):
    return AttnOutput(out=q)


def _test_spec(name: str, **fields) -> VariantSpec:
    base = dict(family="test", exact=False, time="O(1)", memory="O(1)")
    base.update(fields)
    return VariantSpec(name=name, forward=_identity_forward, **base)


def _shape(**kw) -> Shape:
    base = dict(batch=2, heads=8, kv_heads=8, seq_len=16, kv_len=16, head_dim=32)
    base.update(kw)
    return Shape(**base)


# --------------------------------------------------------------------------- names and lookup

def test_unknown_name_suggests_close_match_and_lists_known():
    with pytest.raises(UnknownVariant) as exc:
        get("ful@sdpa")
    msg = str(exc.value)
    assert "did you mean" in msg
    assert "'full@sdpa'" in msg
    assert "known variants:" in msg
    # the known list names every registered variant
    known = msg.split("known variants:", 1)[1]
    for n in names("all"):
        assert n in known
    # str() is the plain message, not KeyError's repr-quoted one
    assert not msg.startswith('"') and not msg.startswith("'")


def test_unknown_name_without_close_match_has_no_hint():
    with pytest.raises(UnknownVariant) as exc:
        get("zzzzzzzz@qqqqqq")
    assert "did you mean" not in str(exc.value)
    assert "known variants:" in str(exc.value)


def test_unknown_variant_is_a_key_error():
    with pytest.raises(KeyError):
        get("nope@nothing")


@pytest.mark.parametrize("pattern, default", [("full", "full@sdpa"), ("mqa", "mqa@sdpa"), ("gqa", "gqa@sdpa")])
def test_bare_pattern_resolves_to_default_kernel(pattern, default):
    spec = get(pattern)
    assert spec.name == default
    assert spec.default or len([s for s in registry.all_specs() if s.pattern == pattern]) == 1
    assert names(pattern) == [default]


def test_at_most_one_default_per_pattern():
    by_pattern: dict[str, list[str]] = {}
    for s in registry.all_specs():
        if s.default:
            by_pattern.setdefault(s.pattern, []).append(s.name)
    assert {p: v for p, v in by_pattern.items() if len(v) > 1} == {}


def test_name_parts():
    spec = get("full@sdpa")
    assert (spec.pattern, spec.kernel) == ("full", "sdpa")


def test_glob_expands_sorted_and_matching():
    got = names("full@*")
    want = sorted(s.name for s in registry.all_specs() if s.name.startswith("full@"))
    assert got == want
    assert {"full@naive", "full@sdpa", "full@math", "full@flash", "full@flex"} <= set(got)
    assert all(n.startswith("full@") for n in got)
    assert names("*@naive") == sorted(s.name for s in registry.all_specs() if s.kernel == "naive")
    assert names("full@[ns]*") == [n for n in got if n.split("@")[1][0] in "ns"]


def test_comma_list_keeps_each_name_once():
    assert names("full@naive,mqa@sdpa") == ["full@naive", "mqa@sdpa"]
    assert names(" full@naive , full@naive ,mqa") == ["full@naive", "mqa@sdpa"]
    assert names(["full@sdpa", "full@*"]).count("full@sdpa") == 1
    mixed = names("mqa@*,full@naive")
    assert mixed == sorted(n for n in names("all") if n.startswith("mqa@")) + ["full@naive"]


def test_glob_matching_nothing_raises():
    with pytest.raises(UnknownVariant, match="matches nothing"):
        names("nosuch@*")


@pytest.mark.parametrize("selection", ["", " , ", "full@naive,bogus@kernel"])
def test_empty_or_unknown_selection_raises(selection):
    with pytest.raises(UnknownVariant):
        names(selection)


def test_all_excludes_test_family(clean_registry):
    spec = clean_registry.add(_test_spec("zzselftest@only"))
    assert spec.name in clean_registry._REGISTRY
    everything = names("all")
    assert "zzselftest@only" not in everything
    assert all(get(n).family != "test" for n in everything)
    # ... but the test family is reachable by name and by glob
    assert names("zzselftest@*") == ["zzselftest@only"]
    assert get("zzselftest").name == "zzselftest@only"
    # and names('all') is every other registered variant
    assert everything == sorted(n for n, s in clean_registry._REGISTRY.items() if s.family != "test")


@pytest.mark.parametrize("bad_name", ["nopattern", "a@b@c", "@kernel", "pattern@"])
def test_add_rejects_malformed_names(clean_registry, bad_name):
    with pytest.raises(ValueError, match="pattern@kernel"):
        clean_registry.add(_test_spec(bad_name))


def test_add_rejects_unknown_family_and_dtype(clean_registry):
    with pytest.raises(ValueError, match="family"):
        clean_registry.add(_test_spec("bad@family", family="nonsense"))
    with pytest.raises(ValueError, match="dtypes"):
        clean_registry.add(_test_spec("bad@dtype", dtypes=("float8",)))
    assert "bad@family" not in clean_registry._REGISTRY
    assert "bad@dtype" not in clean_registry._REGISTRY


def test_builtin_specs_are_well_formed():
    specs = registry.all_specs()
    assert [s.name for s in specs] == sorted(s.name for s in specs)
    builtins = [s for s in specs if s.forward.__module__.startswith("attnbench.variants")]
    assert len(builtins) >= 10
    for s in builtins:
        assert s.family in FAMILIES
        assert s.source == "builtin"
        assert set(s.dtypes) <= set(DTYPES)
        assert set(s.backward) <= set(s.devices)
        assert s.doc, f"{s.name} has no doc"
        d = s.describe()
        assert d["name"] == s.name and d["pattern"] == s.pattern and d["kernel"] == s.kernel


# --------------------------------------------------------------------------- plugins

def test_register_from_plugin_file(clean_registry, tmp_path):
    vname = f"plug{abs(hash(str(tmp_path))) % 10**8}@mine"
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(textwrap.dedent(f"""
        from attnbench.registry import AttnOutput, register

        @register({vname!r}, family="window", exact=False, time="O(n w d)", memory="O(n w)",
                  doc="test plugin kernel", defaults={{"scale_by": 2.0}})
        def mine(q, k, v, *, causal=False, state=None, need_weights=False, scale_by=1.0):
            return AttnOutput(out=q * scale_by)
    """))
    assert vname not in clean_registry._REGISTRY
    clean_registry.load_plugin(plugin)
    spec = get(vname)
    assert spec.name == vname
    assert spec.family == "window"
    assert spec.source.startswith("plugin")
    assert str(plugin) in spec.source
    assert vname in names("all")
    # defaults reach the kernel, and call-time keywords override them
    import torch
    q = torch.ones(1, 1, 2, 4)
    assert torch.equal(spec(q, q, q).out, q * 2.0)
    assert torch.equal(spec(q, q, q, scale_by=3.0).out, q * 3.0)
    # registering from a plugin does not taint later registrations
    assert clean_registry._CURRENT_SOURCE == "builtin"
    later = clean_registry.add(_test_spec("zzlater@x"))
    assert later.source == "builtin"


def test_plugin_loaded_twice_is_imported_once(clean_registry, tmp_path):
    counter = tmp_path / "count.txt"
    plugin = tmp_path / "twice.py"
    vname = f"twice{abs(hash(str(tmp_path))) % 10**8}@k"
    plugin.write_text(textwrap.dedent(f"""
        import pathlib
        from attnbench.registry import AttnOutput, register
        p = pathlib.Path({str(counter)!r})
        p.write_text(p.read_text() + "x" if p.exists() else "x")

        @register({vname!r}, family="test", exact=False, time="O(1)", memory="O(1)")
        def k(q, k, v, **kw):
            return AttnOutput(out=q)
    """))
    clean_registry.load_plugin(plugin)
    clean_registry.load_plugin(str(plugin))
    assert counter.read_text() == "x"
    assert get(vname).source == f"plugin {plugin}"


def test_plugin_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        registry.load_plugin(tmp_path / "does_not_exist.py")


def test_entry_point_registers_variant(clean_registry, tmp_path, monkeypatch):
    vname = f"fakeep{abs(hash(str(tmp_path))) % 10**8}@kern"
    pkg = tmp_path / "fakepkg_attn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(f"""
        from attnbench.registry import AttnOutput, register

        @register({vname!r}, family="dense", exact=False, time="O(n^2 d)", memory="O(n^2)",
                  doc="from an entry point")
        def kern(q, k, v, *, causal=False, state=None, need_weights=False):
            return AttnOutput(out=q)
    """))
    dist = tmp_path / "fakepkg_attn-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg_attn\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[attnbench.variants]\nfake = fakepkg_attn\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    from importlib.metadata import entry_points
    assert "fake" in [ep.name for ep in entry_points(group=registry.ENTRY_POINT_GROUP)]
    assert vname not in clean_registry._REGISTRY
    clean_registry.load_entry_points()
    spec = get(vname)
    assert spec.source == "entry point fake"
    assert vname in names("all")
    assert clean_registry._CURRENT_SOURCE == "builtin"


def test_entry_point_can_be_a_register_function(clean_registry, tmp_path, monkeypatch):
    vname = f"fakefn{abs(hash(str(tmp_path))) % 10**8}@kern"
    pkg = tmp_path / "fakepkg_attn_fn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(f"""
        from attnbench.registry import AttnOutput, register

        def setup():
            @register({vname!r}, family="test", exact=False, time="O(1)", memory="O(1)")
            def kern(q, k, v, **kw):
                return AttnOutput(out=q)
    """))
    dist = tmp_path / "fakepkg_attn_fn-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg_attn_fn\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[attnbench.variants]\nfakefn = fakepkg_attn_fn:setup\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    clean_registry.load_entry_points()
    assert get(vname).source == "entry point fakefn"


# --------------------------------------------------------------------------- capability reasons

def _assert_reasons(reasons, *needles):
    assert reasons, "expected at least one reason"
    assert all(isinstance(r, str) and r.strip() for r in reasons)
    text = " | ".join(reasons)
    for n in needles:
        assert n in text, f"{n!r} not in {text!r}"


def test_supported_case_has_no_reasons():
    for n in ("full@naive", "full@sdpa", "full@math", "full@flash", "mqa@sdpa", "gqa@sdpa"):
        assert get(n).not_supported_reasons(_shape()) == [], n


def test_reason_device_not_supported():
    r = get("full@efficient").not_supported_reasons(_shape(device="cpu"))
    _assert_reasons(r, "device cpu not supported", "cuda")


def test_reason_dtype_not_supported():
    r = get("full@cudnn").not_supported_reasons(_shape(device="cuda", dtype="float32"))
    _assert_reasons(r, "dtype float32 not supported", "bfloat16")


def test_reason_flex_float64_on_cpu():
    spec = get("full@flex")
    _assert_reasons(spec.not_supported_reasons(_shape(dtype="float64")), "float64")
    assert spec.not_supported_reasons(_shape(dtype="float32")) == []


def test_reason_flex_no_cpu_backward():
    spec = get("full@flex")
    _assert_reasons(spec.not_supported_reasons(_shape(mode="fwd+bwd")), "no backward pass on cpu")
    _assert_reasons(spec.not_supported_reasons(_shape(mode="bwd")), "no backward pass on cpu")


def test_reason_causal_not_supported(clean_registry):
    spec = clean_registry.add(_test_spec("zznocausal@k", causal=False))
    _assert_reasons(spec.not_supported_reasons(_shape(causal=True)), "causal")
    assert spec.not_supported_reasons(_shape(causal=False)) == []


def test_reason_cross_and_kv_heads_not_supported(clean_registry):
    spec = clean_registry.add(_test_spec("zzselfonly@k", cross=False, kv_heads=False))
    _assert_reasons(spec.not_supported_reasons(_shape(seq_len=5, kv_len=9)), "N != M", "5 vs 9")
    # decode mode reads a cache longer than its queries by definition
    assert spec.not_supported_reasons(_shape(seq_len=1, kv_len=9, mode="decode")) == []
    _assert_reasons(spec.not_supported_reasons(_shape(kv_heads=2)), "kv_heads=2", "MQA/GQA")


def test_reason_heads_not_multiple_of_kv_heads():
    r = get("full@naive").not_supported_reasons(_shape(heads=8, kv_heads=3))
    _assert_reasons(r, "heads=8 is not a multiple of kv_heads=3")


def test_reason_missing_package(clean_registry):
    spec = clean_registry.add(_test_spec("zzneeds@k", needs=("surely_not_a_real_package_xyz",)))
    assert spec.missing_packages() == ["surely_not_a_real_package_xyz"]
    _assert_reasons(spec.not_supported_reasons(_shape()), "surely_not_a_real_package_xyz")


def test_extra_reasons_only_consulted_when_capabilities_allow(clean_registry):
    calls = []

    def extra(shape, params):
        calls.append(shape)
        return ["kernel says no"]

    spec = clean_registry.add(_test_spec("zzextra@k", devices=("cuda",), extra_reasons=extra))
    _assert_reasons(spec.not_supported_reasons(_shape(device="cpu")), "device cpu")
    assert calls == []
    assert spec.not_supported_reasons(_shape(device="cuda")) == ["kernel says no"]
    assert len(calls) == 1


def test_xformers_on_cpu_is_unsupported_with_its_own_reason():
    spec = get("full@xformers")
    reasons = spec.not_supported_reasons(_shape(device="cpu"))
    assert reasons and all(isinstance(r, str) and r for r in reasons)
    text = " ".join(reasons)
    if importlib.util.find_spec("xformers") is not None:
        assert "device=cpu" in text or "No operator found" in text, text
        # our input-shape echo is stripped from xformers' message
        assert "with inputs:" not in text
    else:
        assert "needs the 'xformers' package" in text


def test_xformers_missing_package_reason(monkeypatch):
    real = importlib.util.find_spec

    def fake_find_spec(name, *a, **kw):
        return None if name == "xformers" else real(name, *a, **kw)

    monkeypatch.setattr("attnbench.registry.importlib.util.find_spec", fake_find_spec)
    reasons = get("full@xformers").not_supported_reasons(_shape(device="cpu"))
    assert reasons == ["needs the 'xformers' package (pip install 'attnbench[xformers]')"]


# --------------------------------------------------------------------------- K/V-head rules

@pytest.mark.parametrize("heads", [1, 4, 8, 16, 32])
@pytest.mark.parametrize("asked_kv", [None, 1])
def test_mqa_gqa_fix_their_kv_heads(heads, asked_kv):
    shape = _shape(heads=heads, kv_heads=asked_kv or heads)
    for n in names("mqa@*"):
        resolved = get(n).resolve_shape(shape)
        assert resolved.kv_heads == 1
        assert replace(resolved, kv_heads=shape.kv_heads) == shape
    g = get("gqa@sdpa").resolve_shape(shape)
    assert g.kv_heads == max(1, heads // 4)
    if heads >= 4:
        assert g.kv_heads == heads // 4
    # a plain kernel runs what it is given
    assert get("full@sdpa").resolve_shape(shape) == shape


def test_mqa_ignores_unsupported_kv_heads_request():
    # heads=8, kv_heads=3 is invalid for full@*, but mqa fixes kv_heads=1 first
    bad = _shape(heads=8, kv_heads=3)
    assert get("full@sdpa").not_supported_reasons(bad)
    assert get("mqa@sdpa").not_supported_reasons(bad) == []
    assert get("gqa@sdpa").not_supported_reasons(bad) == []


# --------------------------------------------------------------------------- FLOPs

@pytest.mark.parametrize("n, m", [(1, 1), (7, 7), (37, 91), (91, 37), (1, 300), (300, 1)])
def test_dense_flops_non_causal(n, m):
    s = _shape(batch=3, heads=5, kv_heads=5, seq_len=n, kv_len=m, head_dim=24)
    assert dense_flops(s) == 4 * 3 * 5 * n * m * 24


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1023])
def test_dense_flops_causal_square(n):
    s = _shape(batch=2, heads=3, kv_heads=3, seq_len=n, kv_len=n, head_dim=16, causal=True)
    assert dense_flops(s) == 4 * 2 * 3 * 16 * n * (n + 1) // 2


@pytest.mark.parametrize("n, m", [(1, 300), (37, 91), (90, 91), (91, 37), (300, 1), (5, 5)])
def test_dense_flops_causal_matches_mask(n, m):
    s = _shape(batch=2, heads=4, kv_heads=1, seq_len=n, kv_len=m, head_dim=8, causal=True)
    pairs = int(reference.causal_mask(n, m).sum())
    assert s.attended_pairs() == pairs
    assert dense_flops(s) == pairs * 4 * 2 * 4 * 8
    if n <= m:
        # bottom-right: the first query already sees M - N + 1 keys
        assert pairs == sum(min(i + m - n + 1, m) for i in range(n))


def test_decode_query_sees_whole_cache():
    s = _shape(seq_len=1, kv_len=300, causal=True)
    assert s.attended_pairs() == 300
    assert dense_flops(s) == dense_flops(replace(s, causal=False))


@pytest.mark.parametrize("variant", ["full@naive", "full@sdpa", "mqa@sdpa", "gqa@sdpa", "full@flex"])
@pytest.mark.parametrize("causal", [False, True])
def test_spec_flops_mode_factors(variant, causal):
    spec = get(variant)
    base = _shape(batch=2, heads=8, kv_heads=8, seq_len=37, kv_len=91, head_dim=32, causal=causal)
    fwd = spec.flops(replace(base, mode="fwd"))
    assert fwd == dense_flops(spec.resolve_shape(base)) > 0
    assert spec.flops(replace(base, mode="fwd+bwd")) == 3.5 * fwd
    assert spec.flops(replace(base, mode="bwd")) == 2.5 * fwd
    assert spec.flops(replace(base, mode="decode")) == fwd
    assert MODE_FLOP_FACTOR == {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5, "decode": 1.0}


def test_kv_sharing_does_not_change_flops_but_reduces_bytes():
    s = _shape(batch=2, heads=8, kv_heads=8, seq_len=1, kv_len=4096, head_dim=64, mode="decode")
    full, mqa, gqa = get("full@sdpa"), get("mqa@sdpa"), get("gqa@sdpa")
    assert full.flops(s) == mqa.flops(s) == gqa.flops(s)
    assert mqa.bytes(s) < gqa.bytes(s) < full.bytes(s)
    e = 4
    kv = lambda hkv: 2 * 2 * hkv * 4096 * 64 * e  # noqa: E731
    q_o = 2 * 2 * 8 * 1 * 64 * e
    assert full.bytes(s) == q_o + kv(8)
    assert gqa.bytes(s) == q_o + kv(2)
    assert mqa.bytes(s) == q_o + kv(1)
