"""Offline English text that ships with CPython, and the byte tokenizer the text tasks share.

Tokenization (every text task: ``text``, ``retrieval``, ``lm``): one token per byte,
``token = byte + 1`` so that id 0 stays ``PAD``; ``VOCAB_SIZE`` = 257. LRA's byte encoder
(tfds ``ByteTextEncoder``) reserves two ids instead of one; only the offset differs.

Two sources, both read from the running interpreter's standard library and nothing else, so the
same Python minor version gives the same bytes on any machine (``corpus_meta`` records it):

- ``pydoc_topics``: ``pydoc_data.topics.topics``, the 79 (3.11) help topics of the language
  reference, ~465 KB. Topics repeat each other's paragraphs (``compound`` holds ``if``,
  ``while``, ``try``...; ``specialnames`` holds ``customization``...): ``distinct_paragraphs``
  keeps each paragraph only in the first document, in name order, that has it.
- ``stdlib_docstrings``: the docstrings of one stdlib package's modules, read with ``ast``
  (nothing is imported), one document per docstring, in sorted path and line order.

A document is ``(name, text)``; lists are always sorted by name, never in dict order.
"""
from __future__ import annotations

import ast
import sys
import sysconfig
from pathlib import Path

import numpy as np
import torch
from pydoc_data.topics import topics as _PYDOC_TOPICS

from attnbench.data.base import PAD, DataError

VOCAB_SIZE = 257  # 256 byte values shifted by one, plus PAD = 0
BYTE_OFFSET = 1
PARAGRAPH = "\n\n"
MIN_PARAGRAPH = 40  # shorter paragraphs ("Note:", headings) may repeat across documents


def encode(texts: list[bytes], seq_len: int) -> torch.Tensor:
    """Byte strings -> ``[S, seq_len]`` int64 tokens (byte + 1), truncated, right-padded with PAD."""
    clipped = [t[:seq_len] for t in texts]
    lens = np.array([len(t) for t in clipped], dtype=np.int64)  # [S]
    flat = np.frombuffer(b"".join(clipped), dtype=np.uint8).astype(np.int64) + BYTE_OFFSET  # [sum(lens)]
    out = np.full((len(texts), seq_len), PAD, dtype=np.int64)  # [S, N]
    out[np.arange(seq_len)[None, :] < lens[:, None]] = flat  # row-major fill = concatenation order
    return torch.from_numpy(out)


def decode(row: torch.Tensor) -> bytes:
    """One ``[N]`` token row -> its bytes (PAD dropped)."""
    ids = row[row != PAD] - BYTE_OFFSET  # [n]
    return ids.to(torch.uint8).numpy().tobytes()


def pydoc_topics() -> list[tuple[str, str]]:
    """All pydoc help topics as ``(topic, text)``, sorted by topic name."""
    return [(name, _PYDOC_TOPICS[name]) for name in sorted(_PYDOC_TOPICS)]


def distinct_paragraphs(docs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop every paragraph of at least ``MIN_PARAGRAPH`` chars already seen in an earlier
    document (in the given order); documents left empty are dropped."""
    seen: set[str] = set()
    out = []
    for name, text in docs:
        kept = []
        for para in text.split(PARAGRAPH):
            key = para.strip()
            if len(key) >= MIN_PARAGRAPH:
                if key in seen:
                    continue
                seen.add(key)
            kept.append(para)
        body = PARAGRAPH.join(kept).strip()
        if body:
            out.append((name, body))
    return out


def pydoc_topics_distinct() -> list[tuple[str, str]]:
    """``pydoc_topics`` with repeated paragraphs kept only in the first topic by name."""
    return distinct_paragraphs(pydoc_topics())


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _module_docstrings(path: Path) -> list[tuple[int, str]]:
    """``(line, docstring)`` for the module, class and function docstrings of one file."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    nodes = [n for n in ast.walk(tree)
             if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    docs = [(getattr(n, "lineno", 0), ast.get_docstring(n)) for n in nodes]  # the module is line 0
    return sorted((line, d.strip()) for line, d in docs if d and d.strip())


def stdlib_docstrings(package: str) -> list[tuple[str, str]]:
    """One document per docstring of ``package``'s ``.py`` files (``test``/``tests`` folders
    skipped), named ``<path relative to the stdlib>:<line, 5 digits>``, sorted by that name,
    which is source order."""
    root = stdlib_root()
    pkg = root / package
    if not pkg.is_dir():
        raise DataError(f"{pkg}: no such stdlib package (expected <stdlib>/{package}/*.py)")
    files = sorted(p for p in pkg.rglob("*.py")
                   if not {"test", "tests"} & set(p.relative_to(pkg).parts[:-1]))
    return [(f"{p.relative_to(root).as_posix()}:{line:05d}", doc)
            for p in files for line, doc in _module_docstrings(p)]


def corpus_meta() -> dict:
    """What a generated set depends on: the interpreter's version (the texts change with it)."""
    return {"python": f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}",
            "tokenizer": f"bytes, token = byte + {BYTE_OFFSET}, PAD = {PAD}, vocab {VOCAB_SIZE}"}


def split_documents(docs: list[tuple[str, str]], fracs: tuple[float, float], seed: int
                    ) -> dict[str, list[tuple[str, str]]]:
    """Assign whole documents to test, then val, then train, after a seeded shuffle:
    test takes documents until it holds ``fracs[1]`` of the bytes, val until ``fracs[0]``.
    Each split keeps name order. ``fracs`` = (val, test)."""
    order = np.random.default_rng(seed).permutation(len(docs))
    total = sum(len(t) for _, t in docs)
    goals = {"test": fracs[1] * total, "val": fracs[0] * total}
    got = {"train": [], "val": [], "test": []}
    filled = {"test": 0, "val": 0}
    for i in order:
        split = next((s for s in ("test", "val") if filled[s] < goals[s]), "train")
        got[split].append(docs[i])
        if split != "train":
            filled[split] += len(docs[i][1])
    return {s: sorted(d) for s, d in got.items()}
