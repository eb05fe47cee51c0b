"""Options and fixtures of the pytest-benchmark suite (tests/bench).

Shapes: ``--bench-size small`` (default: B=1 H=4 N=256 D=32, seconds for the whole registry)
or ``big`` (B=1 H=8 N=4096 D=64, the ``run`` default shape at a size where kernels differ);
``--bench-n N`` overrides N. Also ``--bench-modes``, ``--bench-device``, ``--bench-dtype``,
``--bench-causal``, ``--bench-variants`` (names or globs), ``--bench-threads`` and
``--bench-flex``. Every option
has an environment twin (``--bench-size`` -> ``ATTNBENCH_BENCH_SIZE``), which also works where
the options are not registered (below).

pytest registers command-line options only from *initial* conftests: the rootdir's and those
of the paths named on the command line. So ``pytest tests/bench --bench-size big`` works;
``pytest tests --bench-size big`` does not know the option (use the environment variable).

Timing runs only when benchmarks were asked for: a path inside tests/bench is on the command
line, or a timing option of pytest-benchmark is given (``--benchmark-enable``, ``-only``,
``-autosave``, ``-save``, ``-json``, ``-compare``). Collected as part of the whole tree
(``pytest``, ``pytest tests -m "not slow"``) each target runs once untimed, as with
``--benchmark-disable``: a smoke test that every variant executes and returns finite output.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent
SIZES = {  # (batch, heads, seq_len, head_dim)
    "small": (1, 4, 256, 32),
    "big": (1, 8, 4096, 64),
}
OPTIONS = {  # option -> (env var, default, help)
    "--bench-size": ("ATTNBENCH_BENCH_SIZE", "small",
                     "shape preset: small (B=1 H=4 N=256 D=32) or big (B=1 H=8 N=4096 D=64; includes @flex)"),
    "--bench-n": ("ATTNBENCH_BENCH_N", None, "sequence length N (= M), overriding the preset's"),
    "--bench-modes": ("ATTNBENCH_BENCH_MODES", "fwd", "comma list of fwd, bwd, fwd+bwd, decode"),
    "--bench-device": ("ATTNBENCH_BENCH_DEVICE", "auto", "cpu | cuda | auto (cuda when available)"),
    "--bench-dtype": ("ATTNBENCH_BENCH_DTYPE", "float32", "float32 | float64 | bfloat16 | float16"),
    "--bench-variants": ("ATTNBENCH_BENCH_VARIANTS", "all", "names or fnmatch globs, comma separated"),
    "--bench-threads": ("ATTNBENCH_BENCH_THREADS", "0",
                        "torch CPU threads while a target runs (0: torch's default; 1 is steadier "
                        "on a machine shared with other jobs)"),
}
FLAGS = {
    "--bench-causal": ("ATTNBENCH_BENCH_CAUSAL", "causal masking"),
    "--bench-flex": ("ATTNBENCH_BENCH_FLEX", "include @flex kernels at the small size too "
                                             "(each compiles per shape: ~10-20 s on CPU)"),
}
TIMING_OPTIONS = ("benchmark_enable", "benchmark_only", "benchmark_autosave", "benchmark_save",
                  "benchmark_json", "benchmark_compare")


def pytest_addoption(parser):
    group = parser.getgroup("attnbench", "attnbench benchmark suite (tests/bench)")
    for opt, (env, default, help_) in OPTIONS.items():
        group.addoption(opt, default=None, help=f"{help_} (env {env}; default {default})")
    for opt, (env, help_) in FLAGS.items():
        group.addoption(opt, action="store_true", default=None, help=f"{help_} (env {env}=1)")


def pytest_configure(config):
    config.addinivalue_line("markers", "bench: pytest-benchmark targets in tests/bench (timed only when "
                                       "tests/bench is named or a --benchmark-* timing option is given)")
    bench_settings(config)  # a bad --bench-* value stops here with one line, before collection


def _opt(config, opt: str):
    dest = opt.lstrip("-").replace("-", "_")
    value = config.getoption(dest, default=None)  # None where the option is not registered
    if value is not None:
        return value
    if opt in OPTIONS:
        env, default, _ = OPTIONS[opt]
        return os.environ.get(env, default)
    return os.environ.get(FLAGS[opt][0], "") not in ("", "0", "false", "no")


@dataclass(frozen=True)
class BenchSettings:
    size: str
    batch: int
    heads: int
    seq_len: int
    head_dim: int
    modes: tuple[str, ...]
    device: str
    dtype: str
    causal: bool
    variants: tuple[str, ...]
    flex: bool
    threads: int = 0


def bench_settings(config) -> BenchSettings:
    """The suite's settings from options / environment, validated with one clear message."""
    import torch

    from attnbench.case import DTYPES
    from attnbench.catalog import names
    from attnbench.registry import UnknownVariant
    from attnbench.vocab import MODES

    cached = getattr(config, "_attnbench_bench_settings", None)
    if cached is not None:
        return cached
    size = _opt(config, "--bench-size")
    if size not in SIZES:
        raise pytest.UsageError(f"--bench-size {size!r}: allowed: {', '.join(SIZES)}")
    batch, heads, n, d = SIZES[size]
    if _opt(config, "--bench-n") is not None:
        raw = _opt(config, "--bench-n")
        try:
            n = int(raw)
            assert n >= 1
        except (ValueError, AssertionError):
            raise pytest.UsageError(f"--bench-n {raw!r}: must be a positive integer") from None
    modes = tuple(m.strip() for m in str(_opt(config, "--bench-modes")).split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise pytest.UsageError(f"--bench-modes {bad[0] if bad else ''!r}: allowed: {', '.join(MODES)}")
    device = _opt(config, "--bench-device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise pytest.UsageError(f"--bench-device {device!r}: allowed: cpu, cuda, auto")
    if device == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda: CUDA is not available (torch.cuda.is_available() is False)")
    dtype = _opt(config, "--bench-dtype")
    if dtype not in DTYPES:
        raise pytest.UsageError(f"--bench-dtype {dtype!r}: allowed: {', '.join(DTYPES)}")
    raw = _opt(config, "--bench-threads")
    try:
        threads = int(raw)
        assert threads >= 0
    except (ValueError, AssertionError):
        raise pytest.UsageError(f"--bench-threads {raw!r}: must be an integer >= 0") from None
    try:
        variants = tuple(names(_opt(config, "--bench-variants")))
    except UnknownVariant as e:
        raise pytest.UsageError(str(e)) from None
    s = BenchSettings(size=size, batch=batch, heads=heads, seq_len=n, head_dim=d, modes=modes,
                      device=device, dtype=dtype, causal=bool(_opt(config, "--bench-causal")),
                      variants=variants, flex=bool(_opt(config, "--bench-flex")) or size == "big",
                      threads=threads)
    config._attnbench_bench_settings = s
    return s


def timing_requested(config) -> bool:
    """Time only when asked: tests/bench named on the command line, or a timing option given."""
    if any(config.getoption(o, default=None) for o in TIMING_OPTIONS):
        return True
    root = Path(config.invocation_params.dir)
    for arg in config.invocation_params.args:
        if arg.startswith("-"):
            continue
        p = (root / arg.split("::", 1)[0]).resolve()
        if p == BENCH_DIR or BENCH_DIR in p.parents:
            return True
    return False


def pytest_generate_tests(metafunc):
    """Parametrize ``mode, n, variant`` over the registry; ids like ``fwd-n256-full@sdpa``."""
    if not {"mode", "n", "variant"} <= set(metafunc.fixturenames):
        return
    s = bench_settings(metafunc.config)
    cases = [(m, s.seq_len, v) for m in s.modes for v in s.variants]
    metafunc.parametrize("mode,n,variant", cases, ids=[f"{m}-n{n}-{v}" for m, n, v in cases])


@pytest.fixture
def settings(request) -> BenchSettings:
    return bench_settings(request.config)


class _RunOnce:
    """Stand-in for pytest-benchmark's fixture where the plugin is absent: one untimed call."""

    disabled = True

    def __init__(self):
        self.extra_info: dict = {}
        self.group = None

    def __call__(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


@pytest.fixture
def attn_benchmark(request):
    """pytest-benchmark's ``benchmark``, disabled (one untimed call) unless timing was asked for."""
    if not request.config.pluginmanager.hasplugin("benchmark"):
        return _RunOnce()
    bm = request.getfixturevalue("benchmark")
    if not timing_requested(request.config):
        bm.disabled = True
    return bm
