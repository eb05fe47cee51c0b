"""Byte-level LM windows: y is x shifted by one, consecutive samples continue the text, splits
hold whole, different pydoc topics (checked by searching the decoded text in the raw topics)."""
from __future__ import annotations

import pytest
import torch
from pydoc_data.topics import topics

from attnbench.data import corpus, lm
from attnbench.data.base import IGNORE


@pytest.fixture(scope="module")
def data():
    return lm.build(seq_len=64, max_train_bytes=20_000, seed=0)


def test_targets_are_the_next_byte_and_samples_continue(data):
    for split in data.splits().values():
        x, y = split.x, split.y
        assert x.shape == y.shape and x.shape[1] == 64 and not (y == IGNORE).any()
        assert torch.equal(y[:, :-1], x[:, 1:])  # shifted by one inside a window
        assert torch.equal(y[:-1, -1], x[1:, 0])  # the last target is the next sample's first byte
        stream = b"".join(corpus.decode(row) for row in x)
        assert len(stream) == x.numel() and (x > 0).all()  # no padding anywhere
    assert data.meta["stream"] is True and len(data.train) == (20_000 - 1) // 64


def test_stream_is_real_topic_text_in_order(data):
    stream = b"".join(corpus.decode(row) for row in data.train.x).decode("utf-8", "ignore")
    raw = "\n".join(topics.values())
    for start in range(0, len(stream) - 200, 997):  # consecutive samples read as one text
        piece = stream[start:start + 200]
        assert piece in raw or "\n\n" in piece, start  # a topic or paragraph seam may intervene


def test_splits_hold_different_topics_and_seed_only_moves_topics(data):
    streams = lm.streams(seed=0)
    names = {s: {n for n, t in corpus.pydoc_topics_distinct() if t.encode() in b} for s, b in streams.items()}
    assert not names["train"] & names["val"] and not names["train"] & names["test"]
    assert not names["val"] & names["test"] and sum(map(len, names.values())) == len(corpus.pydoc_topics_distinct())
    other = lm.streams(seed=1)
    assert sorted(map(len, other.values())) != sorted(map(len, streams.values()))
    assert lm.streams(seed=0) == streams
    assert data.meta["stream_bytes"] == {s: len(b) for s, b in streams.items()}
