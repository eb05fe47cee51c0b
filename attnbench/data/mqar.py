"""Zoology's multi-query associative recall (MQAR), generated vectorized over samples.

Follows ``_mqar`` in HazyResearch/zoology ``zoology/data/associative_recall.py``. With
V = ``vocab_size``, L = ``seq_len``, P = ``num_kv_pairs`` and C = 2P context tokens:

- Keys: P distinct ids from ``[1, V//2)``; values: P distinct ids from ``[V//2, V)``; the
  context is ``x[:, :C] = k1 v1 k2 v2 ...``.
- Queries: the query region ``C..L-1`` has ``(L - C) // 2`` slots at even offsets. Slot indices
  ``i`` are drawn without replacement with p(i) ∝ (i + 1)^(alpha - 1) (Zoology's power law:
  short gaps favoured; alpha = 1 is uniform), and key j goes to position ``C + 2 * i_j``.
- Targets: ``y[C + 2 i_j] = v_j``, the target sits at the key's own position (Zoology builds
  labels one step ahead and shifts them, so the model reads the key and predicts its value as
  the next token); the value never appears in the query region. Every other target is IGNORE.
  Accuracy is the mean over the P answer positions of each sample.
- Every other query-region token is noise, uniform over ``[1, V)``. Zoology's default
  (``random_non_queries=True``) draws it from ``[0, V)``; we skip 0 because PAD is reserved.
  Noise may repeat a context key at a position without a target, as in Zoology.
- Allowed knobs (Zoology's asserts): L even, 4P <= L (P distinct slots), and P <= V//2 - 1
  (distinct keys). Zoology also asserts V > L, which the construction does not need; not checked.
- Splits: each split has its own stream ``np.random.default_rng([seed, k])``, k = 0, 1, 2 for
  train, val, test (Zoology seeds train with ``seed``, test with ``seed + 10``), so changing
  ``n_train`` leaves val and test unchanged.
- Files: Zoology has no release format; :func:`write` saves each split as ``<split>.npz``
  (``inputs``, ``labels`` [S, L] int64, ``knobs`` JSON) and ``build(root=...)`` reads them back.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from attnbench.data.base import IGNORE, DataError, Split, TaskData

SPLITS = ("train", "val", "test")
# Zoology's paper uses V = 8192 at (L, P) = (64, 4), (128, 8), (256, 16); CPU-sized: V = 256.
DEFAULTS = dict(vocab_size=256, seq_len=64, num_kv_pairs=4, alpha=0.01,
                n_train=10_000, n_val=1_000, n_test=1_000)
LAYOUT = ("a directory holding train.npz, val.npz and test.npz as attnbench.data.mqar.write "
          "saves them (arrays inputs, labels [S, L] int64 and knobs, a JSON string)")


def check_knobs(*, vocab_size: int, seq_len: int, num_kv_pairs: int, alpha: float) -> None:
    """ValueError listing every knob that breaks the construction (all reasons at once)."""
    P = num_kv_pairs
    reasons = []
    if P < 1:
        reasons.append(f"num_kv_pairs {P}: must be >= 1")
    if seq_len % 2:
        reasons.append(f"seq_len {seq_len}: must be even (queries sit at even offsets)")
    if seq_len < 4 * P:
        reasons.append(f"seq_len {seq_len} too short for {P} pairs: need seq_len >= "
                       f"4 * num_kv_pairs = {4 * P} (2P context tokens, P distinct query slots)")
    if P > vocab_size // 2 - 1:
        reasons.append(f"vocab_size {vocab_size} too small for {P} pairs: need vocab_size >= "
                       f"2 * (num_kv_pairs + 1) = {2 * (P + 1)} (distinct keys from [1, V//2))")
    if not alpha > 0:
        reasons.append(f"alpha {alpha}: must be > 0 (p(gap) ∝ gap^(alpha-1))")
    if reasons:
        raise ValueError("; ".join(reasons))


def distinct_ints(rng: np.random.Generator, S: int, n: int, low: int, high: int) -> np.ndarray:
    """[S, n] ints, each row n distinct uniform draws from [low, high) in uniform random order.

    Floyd's algorithm vectorized over rows (the loop runs over the n draws, not over samples),
    then a per-row shuffle, since Floyd's order is not uniform.
    """
    K = high - low
    out = np.empty((S, n), dtype=np.int64)  # [S, n]
    for c, j in enumerate(range(K - n, K)):
        t = rng.integers(0, j + 1, size=S)  # [S]
        taken = (out[:, :c] == t[:, None]).any(axis=1)  # [S]
        out[:, c] = np.where(taken, j, t)
    order = np.argsort(rng.random((S, n)), axis=1)  # [S, n]
    return np.take_along_axis(out, order, axis=1) + low  # [S, n]


def power_law_slots(rng: np.random.Generator, S: int, n: int, space: int,
                    alpha: float) -> np.ndarray:
    """[S, n] slot indices in [0, space), drawn without replacement, p(i) ∝ (i + 1)^(alpha - 1).

    Gumbel top-k: sorting log p + Gumbel noise gives successive draws without replacement, the
    law of Zoology's ``np.random.choice(replace=False, p=p)``, draw order included.
    """
    log_p = (alpha - 1) * np.log(np.arange(1, space + 1))  # [space]
    scores = log_p + rng.gumbel(size=(S, space))  # [S, space]
    return np.argsort(-scores, axis=1)[:, :n]  # [S, n]


def generate(rng: np.random.Generator, n: int, *, vocab_size: int, seq_len: int,
             num_kv_pairs: int, alpha: float) -> Split:
    """``n`` samples: x [n, L] tokens, y [n, L] values at the query keys' positions, else IGNORE."""
    V, L, P = vocab_size, seq_len, num_kv_pairs
    C = 2 * P
    keys = distinct_ints(rng, n, P, 1, V // 2)  # [n, P]
    values = distinct_ints(rng, n, P, V // 2, V)  # [n, P]
    x = rng.integers(1, V, size=(n, L))  # [n, L] noise, overwritten below
    x[:, 0:C:2] = keys
    x[:, 1:C:2] = values
    pos = C + 2 * power_law_slots(rng, n, P, (L - C) // 2, alpha)  # [n, P]
    np.put_along_axis(x, pos, keys, axis=1)
    y = np.full((n, L), IGNORE, dtype=np.int64)  # [n, L]
    np.put_along_axis(y, pos, values, axis=1)
    return Split(torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y))


def generate_splits(*, vocab_size: int, seq_len: int, num_kv_pairs: int, alpha: float,
                    n_train: int, n_val: int, n_test: int, seed: int) -> dict[str, Split]:
    """Train, val and test, each from its own stream ``default_rng([seed, k])``."""
    check_knobs(vocab_size=vocab_size, seq_len=seq_len, num_kv_pairs=num_kv_pairs, alpha=alpha)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    return {split: generate(np.random.default_rng([seed, k]), sizes[split],
                            vocab_size=vocab_size, seq_len=seq_len,
                            num_kv_pairs=num_kv_pairs, alpha=alpha)
            for k, split in enumerate(SPLITS)}


def write(out_dir, *, vocab_size: int = DEFAULTS["vocab_size"],
          seq_len: int = DEFAULTS["seq_len"], num_kv_pairs: int = DEFAULTS["num_kv_pairs"],
          alpha: float = DEFAULTS["alpha"], n_train: int = DEFAULTS["n_train"],
          n_val: int = DEFAULTS["n_val"], n_test: int = DEFAULTS["n_test"],
          seed: int = 0) -> list[Path]:
    """Generate and save ``<split>.npz`` under ``out_dir`` (our format: Zoology has none)."""
    knobs = dict(vocab_size=vocab_size, seq_len=seq_len, num_kv_pairs=num_kv_pairs,
                 alpha=alpha, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)
    splits = generate_splits(**knobs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split in SPLITS:
        path = out / f"{split}.npz"
        np.savez(path, inputs=splits[split].x.numpy(), labels=splits[split].y.numpy(),
                 knobs=np.array(json.dumps(knobs)))
        paths.append(path)
    return paths


def read_split(path: Path) -> tuple[Split, dict]:
    """One saved split and the knobs it was generated with; DataError if missing or malformed."""
    if not path.is_file():
        raise DataError(f"{path}: missing; expected {LAYOUT}")
    with np.load(path) as f:
        missing = {"inputs", "labels", "knobs"} - set(f.files)
        if missing:
            raise DataError(f"{path}: lacks arrays {sorted(missing)}; expected {LAYOUT}")
        x, y, knobs = f["inputs"], f["labels"], json.loads(str(f["knobs"]))
    if x.dtype != np.int64 or y.dtype != np.int64 or x.shape != y.shape or x.ndim != 2:
        raise DataError(f"{path}: inputs {x.dtype} {x.shape}, labels {y.dtype} {y.shape}; "
                        f"expected {LAYOUT}")
    return Split(torch.from_numpy(x), torch.from_numpy(y)), knobs


def build(*, root=None, vocab_size: int = DEFAULTS["vocab_size"],
          seq_len: int = DEFAULTS["seq_len"], num_kv_pairs: int = DEFAULTS["num_kv_pairs"],
          alpha: float = DEFAULTS["alpha"], n_train: int = DEFAULTS["n_train"],
          n_val: int = DEFAULTS["n_val"], n_test: int = DEFAULTS["n_test"],
          seed: int = 0) -> TaskData:
    """MQAR as TaskData (kind ``tokens``, num_classes = vocab_size).

    ``root=None`` generates with the knobs; ``root=<dir>`` reads what :func:`write` saved there
    and takes every knob from the files (the arguments are then ignored).
    """
    if root is None:
        knobs = dict(vocab_size=vocab_size, seq_len=seq_len, num_kv_pairs=num_kv_pairs,
                     alpha=alpha, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)
        splits = generate_splits(**knobs)
        source = f"generated (seed {seed})"
    else:
        read = {split: read_split(Path(root) / f"{split}.npz") for split in SPLITS}
        splits = {split: s for split, (s, _) in read.items()}
        knobs = read["train"][1]
        source = str(root)
    V, L, P = knobs["vocab_size"], knobs["seq_len"], knobs["num_kv_pairs"]
    test_rows = {row.tobytes() for row in splits["test"].x.numpy()}
    leaked = len(test_rows & {row.tobytes() for row in splits["train"].x.numpy()})
    meta = {"knobs": knobs,
            "splits": "generated: one stream per split, default_rng([seed, k]), k = 0, 1, 2",
            "answers_per_sample": P,
            "test_in_train": leaked / max(len(test_rows), 1)}  # Zoology's leakage check
    return TaskData(name=f"MQAR (Zoology's generator), V={V}, N={L}, pairs={P}", source=source,
                    kind="tokens", vocab_size=V, num_classes=V, seq_len=L,
                    train=splits["train"], val=splits["val"], test=splits["test"], meta=meta)
