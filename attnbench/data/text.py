"""Document classification at byte level: IMDB reviews (LRA Text) or an offline stand-in.

``build(root=None)`` gives the offline set "stdlib docstrings: which package a passage comes
from" (``PACKAGES``: asyncio, email, importlib, xml); ``build(root=path)`` reads the IMDB
release layout. Bytes become tokens as in ``corpus`` (byte + 1, PAD 0, vocab 257), truncated or
padded to ``seq_len`` (LRA: 1000 in the released code, 4000 in the paper).

Folder layout read by ``load_folders`` (aclImdb's, generalised to K classes):
``<root>/{train,test}/<class>/*.txt``, one document per file, files in sorted name order.
Classes are the sub-folders of ``train`` in sorted order (aclImdb: neg = 0, pos = 1); ``unsup``
(aclImdb's unlabelled reviews) is skipped; ``test`` must hold the same classes. A ``val``
folder, when present (``write`` makes one), is the dev split; without one (aclImdb) the dev split
is carved from train, stratified per class, by ``seed`` — never from test, unlike LRA's released
code, which validates on the IMDB test set (TASKS.md trap 2).

Offline set: each package's docstrings (documents, repeated paragraphs dropped) go whole to
train / val / test by a seeded shuffle (20% / 20% of the bytes to val / test), so no text is
shared across splits. Each split's docstrings of a package, joined in source order, are cut into
``seq_len``-byte passages: val/test without overlap, train every ``seq_len // 4`` bytes (4x the
samples; they overlap only each other). A short last passage is kept, padded, when it holds at
least ``seq_len // 4`` bytes.
Measured at seq_len 256, seed 0 (Python 3.11.7): 2,533 / 220 / 218 passages, majority share
0.30 (test); logistic regression on byte-unigram counts 0.63 test, on byte bigrams 0.78 — a byte
count alone is far from solving it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attnbench.data import corpus
from attnbench.data.base import DataError, Split, TaskData

PACKAGES = ("asyncio", "email", "importlib", "unittest", "xml")
SPLITS = ("train", "val", "test")
SKIP_CLASSES = ("unsup",)  # aclImdb/train/unsup: unlabelled reviews
LAYOUT = "<root>/{train,test}/<class>/*.txt (aclImdb: <root>/{train,test}/{neg,pos}/*.txt)"
DOC_FRACS = (0.2, 0.2)  # (val, test) share of each package's bytes, whole modules
TRAIN_OVERLAP = 4  # train windows every seq_len // 4 bytes: 4x the samples, shifted copies


def build(*, root: str | Path | None = None, seq_len: int = 512, n_train: int | None = None,
          val_frac: float = 0.1, packages: tuple[str, ...] = PACKAGES, seed: int = 0) -> TaskData:
    """``root=None``: the offline docstring set; else the folder layout at ``root`` (IMDB).
    ``val_frac`` only applies when a release has no ``val`` folder; ``n_train`` keeps a seeded,
    stratified subset of train."""
    if root is None:
        docs = offline_passages(seq_len=seq_len, packages=packages, seed=seed)
        data = _task(docs, list(packages), seq_len, n_train, seed,
                     name="stdlib docstrings: which package a passage comes from",
                     source=f"generated (seed {seed}) from the Python standard library")
        data.meta.update(corpus.corpus_meta(), packages=list(packages),
                         splits="whole docstrings per package to train/val/test by seeded shuffle "
                                f"({DOC_FRACS[0]:.0%}/{DOC_FRACS[1]:.0%} of bytes to val/test)")
        return data
    docs, classes, rule = load_folders(root, val_frac=val_frac, seed=seed)
    data = _task(docs, classes, seq_len, n_train, seed, source=str(root),
                 name="IMDB movie reviews (aclImdb), sentiment, bytes" if classes == ["neg", "pos"]
                 else f"documents by folder class from {root}")
    data.meta["splits"] = rule
    return data


def _task(docs: dict[str, tuple[list[bytes], list[int]]], classes: list[str], seq_len: int,
          n_train: int | None, seed: int, *, name: str, source: str) -> TaskData:
    splits = {}
    for split, (texts, labels) in docs.items():
        y = np.asarray(labels, dtype=np.int64)  # [S]
        keep = np.arange(len(y)) if split != "train" or n_train is None else _subset(y, n_train, seed)
        splits[split] = Split(corpus.encode([texts[i] for i in keep], seq_len), torch.from_numpy(y[keep]))
    counts = {s: np.bincount(sp.y.numpy(), minlength=len(classes)).tolist() for s, sp in splits.items()}
    return TaskData(name=name, source=source, kind="classify", vocab_size=corpus.VOCAB_SIZE,
                    num_classes=len(classes), seq_len=seq_len, **splits,
                    meta={"classes": classes, "class_counts": counts,
                          "tokenizer": "bytes, token = byte + 1, PAD 0"})


def _subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded subset of ``n`` indices keeping class shares (sorted, so order stays stable)."""
    if n >= len(y):
        return np.arange(len(y))
    order = np.random.default_rng(seed).permutation(len(y))
    take = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = order[y[order] == c]
        take[idx[: round(n * len(idx) / len(y))]] = True
    return np.flatnonzero(take)


def offline_passages(*, seq_len: int, packages: tuple[str, ...] = PACKAGES, seed: int = 0
                     ) -> dict[str, tuple[list[bytes], list[int]]]:
    """split -> (passages, labels); label = index of the passage's package in ``packages``.
    Per package and split, the split's docstrings are joined in source order and windowed."""
    out = {s: ([], []) for s in SPLITS}
    for label, package in enumerate(packages):
        docs = corpus.distinct_paragraphs(corpus.stdlib_docstrings(package))
        for split, split_docs in corpus.split_documents(docs, DOC_FRACS, seed).items():
            stream = corpus.PARAGRAPH.join(text for _, text in split_docs).encode("utf-8")
            stride = seq_len // TRAIN_OVERLAP if split == "train" else seq_len
            passages = _windows(stream, seq_len, stride)
            out[split][0].extend(passages)
            out[split][1].extend([label] * len(passages))
    return out


def _windows(data: bytes, seq_len: int, stride: int) -> list[bytes]:
    """``seq_len``-byte windows every ``stride`` bytes until one reaches the end; a short
    (last) window is kept only with at least ``seq_len // 4`` bytes."""
    out = []
    for start in range(0, len(data), stride):
        window = data[start:start + seq_len]
        if len(window) >= seq_len // 4:
            out.append(window)
        if start + seq_len >= len(data):
            break
    return out


def load_folders(root: str | Path, *, val_frac: float = 0.1, seed: int = 0
                 ) -> tuple[dict[str, tuple[list[bytes], list[int]]], list[str], str]:
    """Read the folder layout (see module docstring): split -> (texts, labels), classes, rule."""
    root = Path(root)
    classes = _classes(root / "train")
    read = {s: _read_split(root / s, classes) for s in SPLITS if s != "val" or (root / "val").is_dir()}
    if "val" in read:
        return read, classes, "val, train and test folders as released"
    texts, labels = read["train"]
    dev = _dev_mask(np.asarray(labels), val_frac, seed)  # [S] bool
    read["train"] = ([t for t, d in zip(texts, dev) if not d], [y for y, d in zip(labels, dev) if not d])
    read["val"] = ([t for t, d in zip(texts, dev) if d], [y for y, d in zip(labels, dev) if d])
    rule = (f"val = {val_frac:.0%} of train per class, seeded (seed {seed}); "
            "test = the release's test folder, never used for selection")
    return {s: read[s] for s in SPLITS}, classes, rule


def _classes(train: Path) -> list[str]:
    if not train.is_dir():
        raise DataError(f"{train}: no such folder; expected {LAYOUT}")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir() and p.name not in SKIP_CLASSES)
    if len(classes) < 2:
        raise DataError(f"{train}: found classes {classes}, need at least 2; expected {LAYOUT}")
    return classes


def _read_split(folder: Path, classes: list[str]) -> tuple[list[bytes], list[int]]:
    texts, labels = [], []
    for label, name in enumerate(classes):
        cdir = folder / name
        if not cdir.is_dir():
            raise DataError(f"{cdir}: no such folder (classes from train: {classes}); expected {LAYOUT}")
        files = sorted(cdir.glob("*.txt"))
        texts.extend(f.read_bytes() for f in files)
        labels.extend([label] * len(files))
    return texts, labels


def _dev_mask(y: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Seeded, per-class choice of ``round(frac * count)`` samples for the dev split."""
    rng = np.random.default_rng(seed)
    dev = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        dev[rng.permutation(idx)[: round(frac * len(idx))]] = True
    return dev


def write(out_dir: str | Path, *, seq_len: int = 512, packages: tuple[str, ...] = PACKAGES,
          seed: int = 0) -> Path:
    """Write the offline set as ``<out_dir>/{train,val,test}/<package>/<i>.txt`` (raw bytes),
    readable by ``build(root=out_dir, seq_len=seq_len)`` with identical tensors."""
    out_dir = Path(out_dir)
    for split, (texts, labels) in offline_passages(seq_len=seq_len, packages=packages, seed=seed).items():
        for i, (text, label) in enumerate(zip(texts, labels)):
            path = out_dir / split / packages[label] / f"{i:06d}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text)
    return out_dir
