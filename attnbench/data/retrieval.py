"""Document matching for a dual encoder: LRA's AAN pairs, or an offline stand-in (kind "pair").

``build(root=None)`` gives the offline set "pydoc topics: do two passages come from the same
topic?"; ``build(root=path)`` reads LRA's release ``<root>/new_aan_pairs.{train,eval,test}.tsv``
(eval is our val). Each line, no header, tab-separated: ``label id1 id2 text1 text2`` — the column
order of LRA's ``lra_benchmarks/matching/input_pipeline.py`` (label read as a float: "0", "1",
"0.0", "1.0" all accepted). Files are read as bytes; each text becomes byte + 1 tokens (``corpus``)
truncated or padded to ``seq_len`` (LRA: 4000). x ``[S, 2, N]`` (text1, text2), y ``[S]``.

Offline set: ``corpus.pydoc_topics_distinct`` (each paragraph kept in one topic only; tabs and
newlines made spaces, as AAN texts are one field each); whole
topics go to train / val / test by a seeded shuffle (10% / 10% of the bytes), so no passage is
shared across splits. Each topic is cut into non-overlapping ``seq_len``-byte passages (a short
last one kept, padded, if it holds ``seq_len // 4`` bytes). A pair is positive (1) when both
passages come from one topic (two different passages), negative (0) otherwise; labels alternate
1, 0, 1, ... so every split is balanced. Pairs reuse passages, within their split only.
Measured at seq_len 256, seed 0 (Python 3.11.7), 4000/500/500 pairs (test topics: 7, val: 5):
majority share 0.5; cosine of byte uni+bigram counts, threshold fit on train, 0.60 test;
logistic regression on [|u-v|, u*v] of those counts 0.69 test.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attnbench.data import corpus
from attnbench.data.base import DataError, Split, TaskData

FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv",
         "test": "new_aan_pairs.test.tsv"}
FIELDS = ("label", "id1", "id2", "text1", "text2")
TOPIC_FRACS = (0.1, 0.1)  # (val, test) share of the bytes, whole topics
ONE_LINE = str.maketrans("\t\n\r", "   ")


def build(*, root: str | Path | None = None, seq_len: int = 512, n_train: int | None = None,
          n_eval: int | None = None, seed: int = 0) -> TaskData:
    """``root=None``: offline pydoc pairs (``n_train`` default 4000, ``n_eval`` val/test 500 each);
    else the AAN TSVs at ``root`` (``n_train`` keeps the first n train lines, ``n_eval`` the first n
    of val and test)."""
    if root is None:
        pairs = offline_pairs(seq_len=seq_len, n_train=n_train or 4000, n_eval=n_eval or 500, seed=seed)
        name, source = ("pydoc topics: do two passages come from the same topic?",
                        f"generated (seed {seed}) from pydoc_data.topics")
        meta = dict(corpus.corpus_meta(), splits="whole pydoc topics to train/val/test by seeded "
                    f"shuffle ({TOPIC_FRACS[0]:.0%}/{TOPIC_FRACS[1]:.0%} of bytes to val/test)")
    else:
        pairs = {s: _cap(read_tsv(Path(root) / f), n_train if s == "train" else n_eval)
                 for s, f in FILES.items()}
        name = (f"document pairs in LRA's AAN TSV format at {root}, bytes "
                f"(LRA's Retrieval when these are the AAN release files)")
        source = str(root)
        meta = {"splits": "train / eval / test TSVs as released; eval is val"}
    splits = {s: _split(p, seq_len) for s, p in pairs.items()}
    meta["class_counts"] = {s: np.bincount(sp.y.numpy(), minlength=2).tolist() for s, sp in splits.items()}
    meta["tokenizer"] = "bytes, token = byte + 1, PAD 0"
    return TaskData(name=name, source=source, kind="pair", vocab_size=corpus.VOCAB_SIZE,
                    num_classes=2, seq_len=seq_len, **splits, meta=meta)


def _cap(rows: list, n: int | None) -> list:
    return rows if n is None else rows[:n]


def _split(rows: list[tuple[int, bytes, bytes]], seq_len: int) -> Split:
    one = corpus.encode([r[1] for r in rows], seq_len)  # [S, N]
    two = corpus.encode([r[2] for r in rows], seq_len)  # [S, N]
    x = torch.stack([one, two], dim=1)  # [S, 2, N]
    return Split(x, torch.tensor([r[0] for r in rows], dtype=torch.int64))


def read_tsv(path: Path) -> list[tuple[int, bytes, bytes]]:
    """``(label, text1, text2)`` per line of one AAN TSV; DataError names file:line when malformed."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected <root>/new_aan_pairs.{{train,eval,test}}.tsv, "
                        f"no header, tab-separated {' '.join(FIELDS)}")
    rows = []
    for n, line in enumerate(path.read_bytes().splitlines(), start=1):
        fields = line.split(b"\t")
        if len(fields) != len(FIELDS):
            raise DataError(f"{path}:{n}: {len(fields)} tab-separated fields, expected {len(FIELDS)} "
                            f"({' '.join(FIELDS)})")
        try:
            label = float(fields[0])
        except ValueError:
            label = None
        if label not in (0.0, 1.0):
            raise DataError(f"{path}:{n}: label {fields[0][:20]!r}, expected 0 or 1")
        rows.append((int(label), fields[3], fields[4]))
    return rows


def offline_pairs(*, seq_len: int, n_train: int = 4000, n_eval: int = 500, seed: int = 0
                  ) -> dict[str, list[tuple[int, bytes, bytes]]]:
    """split -> ``(label, passage1, passage2)``; see the module docstring."""
    docs = corpus.pydoc_topics_distinct()
    out = {}
    for k, (split, split_docs) in enumerate(corpus.split_documents(docs, TOPIC_FRACS, seed).items()):
        topics = [_passages(_one_line(text), seq_len) for _, text in split_docs]
        n = n_train if split == "train" else n_eval
        out[split] = _pairs([t for t in topics if t], n, np.random.default_rng([seed, k]))
    return out


def _one_line(text: str) -> bytes:
    """Tabs, newlines and carriage returns become spaces: AAN texts are one TSV field each."""
    return text.translate(ONE_LINE).encode("utf-8")


def _passages(data: bytes, seq_len: int) -> list[bytes]:
    """Non-overlapping ``seq_len``-byte passages; a short last one kept if >= seq_len // 4 bytes."""
    cut = [data[i:i + seq_len] for i in range(0, len(data), seq_len)]
    return [p for p in cut if len(p) >= seq_len // 4]


def _pairs(topics: list[list[bytes]], n: int, rng: np.random.Generator) -> list[tuple[int, bytes, bytes]]:
    """``n`` pairs, labels alternating 1, 0: a positive draws a topic with >= 2 passages (by its
    passage count) and two distinct passages of it; a negative draws two distinct topics the same way."""
    sizes = np.array([len(t) for t in topics], dtype=float)
    multi = np.where(sizes >= 2, sizes, 0.0)
    if multi.sum() == 0 or len(topics) < 2:
        raise DataError(f"{len(topics)} topics, {int((sizes >= 2).sum())} with two passages: too few "
                        "for pairs; lower seq_len")
    rows = []
    for i in range(n):
        if i % 2 == 0:
            t = rng.choice(len(topics), p=multi / multi.sum())
            a, b = rng.choice(len(topics[t]), size=2, replace=False)
            rows.append((1, topics[t][a], topics[t][b]))
        else:
            s, t = rng.choice(len(topics), size=2, replace=False, p=sizes / sizes.sum())
            rows.append((0, topics[s][rng.integers(len(topics[s]))], topics[t][rng.integers(len(topics[t]))]))
    return rows


def write(out_dir: str | Path, *, seq_len: int = 512, n_train: int = 4000, n_eval: int = 500,
          seed: int = 0) -> Path:
    """Write the offline set as AAN TSVs (ids ``<split>-<row>-<1|2>``), readable by
    ``build(root=out_dir, seq_len=seq_len)`` with identical tensors. Passages holding a tab or
    newline byte cannot be written in this format: DataError, never a silent edit."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = offline_pairs(seq_len=seq_len, n_train=n_train, n_eval=n_eval, seed=seed)
    for split, rows in pairs.items():
        lines = [b"\t".join([str(y).encode(), f"{split}-{i}-1".encode(), f"{split}-{i}-2".encode(), a, b])
                 for i, (y, a, b) in enumerate(rows)]
        if any(line.count(b"\t") != 4 or b"\n" in line or b"\r" in line for line in lines):
            raise DataError(f"{split}: a passage holds a tab or newline; the AAN TSV format cannot carry it")
        (out_dir / FILES[split]).write_bytes(b"\n".join(lines) + b"\n")
    return out_dir
