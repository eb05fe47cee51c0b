"""ListOps as the Long Range Arena released it: the generator, its TSV files, and their loader.

Conventions, all following google-research/long-range-arena:

- Generator (``lra_benchmarks/data/listops.py``): a node is a leaf with probability 1 - 0.25
  while ``depth < max_depth`` (the root has depth 1), else an operator over
  ``randint(2, max_args)`` children, drawn children first, operator last, from MIN, MAX, MED
  (median, then ``int``) and SM (sum mod 10); FIRST and LAST exist but LRA disabled them. The
  draws are made from ``random.Random(seed)`` in LRA's order. An expression's length counts
  values, operators and closing brackets (not parentheses); only lengths strictly between
  ``min_length`` and ``max_length`` are kept, all distinct. LRA slices the first ``n_train``
  unique expressions into train, the next ``n_val`` into val, the rest into test; so do we, in
  generation order (LRA iterated a Python set, so its order was not reproducible).
- Files: ``basic_train.tsv``, ``basic_val.tsv``, ``basic_test.tsv`` written by Python's
  ``csv.writer(delimiter='\\t')`` with header ``Source\\tTarget`` and ``\\r\\n`` line ends
  (csv's default, which LRA's GFile kept). Sources look like ``( ( ( [MAX 2 ) 9 ) ] )``.
- Tokens (``lra_benchmarks/listops/input_pipeline.py``): ``]`` becomes ``X``, ``(`` and ``)``
  are deleted, the rest is split on whitespace. Ids come from the fixed :data:`VOCAB` (LRA built
  its vocabulary from a set, so its ids were not reproducible). A sequence longer than
  ``seq_len`` keeps its first ``seq_len`` tokens (LRA's ``[:max_length]``) and its label, so a
  truncated sample may be unanswerable: ``meta['truncated']`` counts them per split.
"""
from __future__ import annotations

import csv
import random
from collections import Counter
from pathlib import Path

import torch

from attnbench.data.base import PAD, DataError, Split, TaskData

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")  # LRA's; "[FIRST", "[LAST" are defined but disabled
END = "]"
VALUE_P = 0.25  # LRA: a node below max_depth is an operator with this probability
VOCAB = ("<pad>",) + tuple(str(d) for d in range(10)) + (
    "[MIN", "[MAX", "[MED", "[SM", "[FIRST", "[LAST", "X")  # id = index; PAD = 0
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
VOCAB_SIZE = len(VOCAB)  # 18
NUM_CLASSES = 10
SPLITS = ("train", "val", "test")
HEADER = ["Source", "Target"]
LAYOUT = ("a directory holding basic_train.tsv, basic_val.tsv and basic_test.tsv "
          "(LRA's listops-1000 layout), each a TSV with header 'Source<TAB>Target'")

# Paper knobs: LRA's flags; 1.5 ms per kept expression on an idle 2-core CPU (4 ms shared), so
# 2.5-7 min for all 100,000. Small knobs: 3,000 expressions of 51..199 tokens (median ~107) in
# 1 s (2 s shared); LRA's max_depth 10 takes 20-44 s for the same lengths (only 1.8% of its
# trees land in 51..199 and the big ones cost), so the small knobs cut the depth to 6.
LRA_KNOBS = dict(n_train=96_000, n_val=2_000, n_test=2_000, min_length=500, max_length=2_000,
                 max_depth=10, max_args=10)
SMALL_KNOBS = dict(n_train=2_000, n_val=500, n_test=500, min_length=50, max_length=200,
                   max_depth=6, max_args=10)
LRA_SEQ_LEN = 2_000  # LRA's config.max_length: every release expression fits


def _reduce(op: str, args: list[int]) -> int:
    """LRA's ``to_value`` for one operator; MED is ``int(np.median(args))``, a floor here."""
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[SM":
        return sum(args) % 10
    s = sorted(args)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2


def generate_tree(rng: random.Random, depth: int, max_depth: int,
                  max_args: int) -> tuple[str, int, int]:
    """One expression as (source in LRA's text form, value, length), drawn as LRA draws it."""
    r = rng.random() if depth < max_depth else 1.0
    if r > VALUE_P:
        value = rng.choice(range(10))
        return str(value), value, 1
    children = [generate_tree(rng, depth + 1, max_depth, max_args)
                for _ in range(rng.randint(2, max_args))]
    op = rng.choice(OPERATORS)
    # LRA nests ((op, c0), c1), ..., END) and prints each pair as "( a b )".
    text = "( " * (len(children) + 1) + op + "".join(f" {c[0]} )" for c in children) + " ] )"
    length = 2 + sum(c[2] for c in children)
    return text, _reduce(op, [c[1] for c in children]), length


def generate(*, n: int, min_length: int, max_length: int, max_depth: int, max_args: int,
             seed: int) -> list[tuple[str, int]]:
    """``n`` distinct (source, value) rows with min_length < length < max_length, in draw order."""
    if not 0 <= min_length < max_length - 1:
        raise ValueError(f"min_length {min_length}, max_length {max_length}: need "
                         "0 <= min_length and at least one length strictly between them")
    if max_args < 2 or max_depth < 2:
        raise ValueError(f"max_args {max_args}, max_depth {max_depth}: both must be >= 2 "
                         "(an operator takes 2..max_args children; the root has depth 1)")
    longest = 1  # the longest expression the depth and fan-out allow: 2 + max_args * child's
    for _ in range(max_depth - 1):
        longest = 2 + max_args * longest
    if longest <= min_length:
        raise ValueError(f"min_length {min_length}: max_depth {max_depth} and max_args "
                         f"{max_args} allow lengths up to {longest} only")
    rng = random.Random(seed)
    rows: dict[str, int] = {}
    while len(rows) < n:
        text, value, length = generate_tree(rng, 1, max_depth, max_args)
        if min_length < length < max_length:
            rows.setdefault(text, value)
    return list(rows.items())


def generate_splits(*, n_train: int, n_val: int, n_test: int, seed: int,
                    **knobs) -> dict[str, list[tuple[str, int]]]:
    """LRA's rule: one pool of unique expressions, sliced train | val | test."""
    rows = generate(n=n_train + n_val + n_test, seed=seed, **knobs)
    return {"train": rows[:n_train], "val": rows[n_train:n_train + n_val],
            "test": rows[n_train + n_val:]}


def write(out_dir, *, n_train: int = SMALL_KNOBS["n_train"], n_val: int = SMALL_KNOBS["n_val"],
          n_test: int = SMALL_KNOBS["n_test"], min_length: int = SMALL_KNOBS["min_length"],
          max_length: int = SMALL_KNOBS["max_length"], max_depth: int = SMALL_KNOBS["max_depth"],
          max_args: int = SMALL_KNOBS["max_args"], seed: int = 0) -> list[Path]:
    """Generate and write ``basic_{train,val,test}.tsv`` under ``out_dir`` as LRA writes them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = generate_splits(n_train=n_train, n_val=n_val, n_test=n_test, seed=seed,
                             min_length=min_length, max_length=max_length,
                             max_depth=max_depth, max_args=max_args)
    paths = []
    for split in SPLITS:
        path = out / f"basic_{split}.tsv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t")  # lineterminator "\r\n", as LRA's files
            writer.writerow(HEADER)
            writer.writerows(splits[split])
        paths.append(path)
    return paths


def tokenize(source: str) -> list[str]:
    """LRA's tokenizer: ``]`` -> ``X``, drop ``(`` and ``)``, split on whitespace."""
    return source.replace("]", "X").replace("(", "").replace(")", "").split()


def read_tsv(path: Path) -> list[tuple[str, int]]:
    """(source, label) rows of one release file; DataError names the file and line if malformed."""
    if not path.is_file():
        raise DataError(f"{path}: missing; expected {LAYOUT}")
    with open(path, newline="") as f:
        lines = list(csv.reader(f, delimiter="\t"))
    if not lines or lines[0] != HEADER:
        raise DataError(f"{path}:1: header {lines[0] if lines else 'missing'}, expected "
                        f"'Source<TAB>Target'")
    rows = []
    for lineno, fields in enumerate(lines[1:], start=2):
        label = fields[1].strip() if len(fields) == 2 else ""
        if not (label.isdigit() and int(label) < NUM_CLASSES):
            raise DataError(f"{path}:{lineno}: expected 'source<TAB>label' with label 0..9, "
                            f"got {fields!r:.80}")
        unknown = set(tokenize(fields[0])) - TOKEN_ID.keys()
        if unknown:
            raise DataError(f"{path}:{lineno}: unknown tokens {sorted(unknown)}; "
                            f"vocabulary {' '.join(VOCAB[1:])}")
        rows.append((fields[0], int(label)))
    return rows


def load(root) -> dict[str, list[tuple[str, int]]]:
    """The three release splits under ``root`` (the ``listops-1000`` directory)."""
    root = Path(root)
    return {split: read_tsv(root / f"basic_{split}.tsv") for split in SPLITS}


def encode(rows: list[tuple[str, int]], seq_len: int) -> tuple[Split, int]:
    """Rows -> Split with x [S, seq_len] (PAD after the end, head kept on truncation), y [S]."""
    x = torch.full((len(rows), seq_len), PAD, dtype=torch.int64)  # [S, N]
    truncated = 0
    for i, (source, _) in enumerate(rows):
        ids = [TOKEN_ID[tok] for tok in tokenize(source)]
        truncated += len(ids) > seq_len
        ids = ids[:seq_len]
        x[i, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
    y = torch.tensor([label for _, label in rows], dtype=torch.int64)  # [S]
    return Split(x, y), truncated


def build(*, root=None, seq_len: int | None = None,
          n_train: int = SMALL_KNOBS["n_train"], n_val: int = SMALL_KNOBS["n_val"],
          n_test: int = SMALL_KNOBS["n_test"], min_length: int = SMALL_KNOBS["min_length"],
          max_length: int = SMALL_KNOBS["max_length"], max_depth: int = SMALL_KNOBS["max_depth"],
          max_args: int = SMALL_KNOBS["max_args"], seed: int = 0) -> TaskData:
    """ListOps as TaskData (kind ``classify``, 10 classes, vocabulary :data:`VOCAB`).

    ``root=None`` generates in memory with the knobs and ``seed``; ``root=<dir>`` reads LRA's
    release files there and ignores the generator knobs and seed. ``seq_len=None`` means
    ``max_length`` when generating (nothing is truncated) and :data:`LRA_SEQ_LEN` when reading.
    Both paths go through the same text -> tokens step, so ``write`` then ``build(root=...)``
    gives the tensors ``build()`` gives.
    """
    if root is None:
        knobs = dict(n_train=n_train, n_val=n_val, n_test=n_test, min_length=min_length,
                     max_length=max_length, max_depth=max_depth, max_args=max_args, seed=seed)
        rows = generate_splits(**knobs)
        seq_len = max_length if seq_len is None else seq_len
        name = f"ListOps, generated by LRA's released rules (lengths {min_length + 1}.."\
               f"{max_length - 1})"
        source = f"generated (seed {seed})"
    else:
        knobs = None
        rows = load(root)
        seq_len = LRA_SEQ_LEN if seq_len is None else seq_len
        name = f"ListOps (LRA release files at {root})"
        source = str(root)
    if seq_len < 1:
        raise ValueError(f"seq_len {seq_len}: must be >= 1")
    encoded = {split: encode(rows[split], seq_len) for split in SPLITS}
    meta = {"knobs": knobs,
            "splits": "generated: one pool of unique expressions sliced train|val|test (LRA's "
                      "rule)" if root is None else "the release's train/val/test files",
            "class_counts": {s: dict(sorted(Counter(y for _, y in rows[s]).items()))
                             for s in SPLITS},
            "truncated": {s: encoded[s][1] for s in SPLITS},
            "max_tokens": {s: max((len(tokenize(t)) for t, _ in rows[s]), default=0)
                           for s in SPLITS}}
    return TaskData(name=name, source=source, kind="classify", vocab_size=VOCAB_SIZE,
                    num_classes=NUM_CLASSES, seq_len=seq_len, train=encoded["train"][0],
                    val=encoded["val"][0], test=encoded["test"][0], meta=meta)
