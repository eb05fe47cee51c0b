"""Byte-level causal language modelling on CPython's English documentation (kind "tokens").

Corpus: ``corpus.pydoc_topics_distinct`` ("pydoc topics, CPython's language-reference help
text, as bytes"; each repeated paragraph kept in its first topic only). Whole topics go to
train / val / test (10% / 10% of the bytes to val / test); ``seed`` only shuffles which topics
go where (seed 0 is the default; the stream order inside a split is topic-name order, whatever
the seed). Each split is one byte stream: its topics joined by a blank line, in name order.

Layout (``meta['stream']`` is True): a split's stream is cut into contiguous, non-overlapping
windows of ``seq_len`` bytes, in stream order, so sample i + 1 continues sample i exactly:
``x[i] = stream[i*N : (i+1)*N]``, ``y[i] = stream[i*N + 1 : (i+1)*N + 1]`` (the next byte).
A trainer with segment recurrence feeds consecutive samples; to batch B parallel streams, view
the first ``B * (S // B)`` samples as ``[B, S // B, N]`` (row b = a contiguous stretch).
The stream's tail that does not fill a window is dropped, so there is no padding and no
``IGNORE`` target. Tokens are byte + 1 (``corpus``); y uses the same ids (num_classes 257).
"""
from __future__ import annotations

import numpy as np
import torch

from attnbench.data import corpus
from attnbench.data.base import Split, TaskData

DOC_FRACS = (0.1, 0.1)  # (val, test) share of the bytes, whole topics


def streams(seed: int = 0) -> dict[str, bytes]:
    """split -> its byte stream (whole topics, name order, joined by a blank line)."""
    docs = corpus.pydoc_topics_distinct()
    parts = corpus.split_documents(docs, DOC_FRACS, seed)
    return {s: corpus.PARAGRAPH.join(text for _, text in d).encode("utf-8") for s, d in parts.items()}


def windows(stream: bytes, seq_len: int, max_bytes: int | None = None) -> Split:
    """Contiguous next-byte windows of one stream (its first ``max_bytes`` bytes, if given)."""
    data = stream if max_bytes is None else stream[:max_bytes]
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.int64) + corpus.BYTE_OFFSET  # [L]
    n = (len(ids) - 1) // seq_len  # windows whose next-byte targets all exist
    x = ids[: n * seq_len].reshape(n, seq_len)  # [S, N]
    y = ids[1: n * seq_len + 1].reshape(n, seq_len)  # [S, N], x shifted left by one
    return Split(torch.from_numpy(x.copy()), torch.from_numpy(y.copy()))


def build(*, seq_len: int = 256, max_train_bytes: int | None = None, seed: int = 0) -> TaskData:
    """The pydoc byte stream as consecutive windows; ``max_train_bytes`` keeps the train
    stream's first bytes (val and test stay whole)."""
    parts = streams(seed)
    splits = {s: windows(b, seq_len, max_train_bytes if s == "train" else None) for s, b in parts.items()}
    used = {s: len(sp) * seq_len for s, sp in splits.items()}
    meta = dict(corpus.corpus_meta(), stream=True,
                layout="sample i+1 continues sample i; y = x shifted by one byte; tail dropped",
                splits=f"whole pydoc topics to train/val/test by seeded shuffle (seed {seed}; "
                       f"{DOC_FRACS[0]:.0%}/{DOC_FRACS[1]:.0%} of bytes to val/test)",
                stream_bytes={s: len(b) for s, b in parts.items()}, window_bytes=used)
    return TaskData(name="pydoc topics, CPython's language-reference help text, as bytes",
                    source=f"generated (seed {seed}) from pydoc_data.topics", kind="tokens",
                    vocab_size=corpus.VOCAB_SIZE, num_classes=corpus.VOCAB_SIZE, seq_len=seq_len,
                    **splits, meta=meta)
