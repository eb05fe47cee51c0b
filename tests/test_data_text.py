"""Byte-level document classification: the aclImdb folder loader on a fixture tree written here,
and the offline stdlib-docstring set checked against the raw source files (not through ``ast``)."""
from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from attnbench.data import corpus, text
from attnbench.data.base import PAD, DataError

PKGS = ("json", "concurrent")  # small stdlib packages: fast to parse and to write


def _imdb(root: Path) -> Path:
    """A tiny aclImdb tree: 6 pos / 6 neg train reviews, 2 / 2 test, plus the unsup folder."""
    for split, n in (("train", 6), ("test", 2)):
        for label in ("pos", "neg"):
            d = root / "aclImdb" / split / label
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i}_{7 if label == 'pos' else 2}.txt").write_bytes(f"{split} {label} review {i} <br />é".encode())
    (root / "aclImdb" / "train" / "unsup").mkdir()
    (root / "aclImdb" / "train" / "unsup" / "0_0.txt").write_bytes(b"unlabelled")
    (root / "aclImdb" / "train" / "labeledBow.feat").write_bytes(b"0 0:1\n")
    return root / "aclImdb"


def _texts(split) -> list[str]:
    return [corpus.decode(row).decode("utf-8") for row in split.x]


def test_imdb_loader_labels_bytes_and_dev_from_train(tmp_path):
    root = _imdb(tmp_path)
    data = text.build(root=root, seq_len=40, val_frac=1 / 3, seed=1)
    assert data.meta["classes"] == ["neg", "pos"] and data.kind == "classify" and data.vocab_size == 257
    assert [len(s) for s in (data.train, data.val, data.test)] == [8, 4, 4]
    for split in (data.train, data.val, data.test):
        for t, y in zip(_texts(split), split.y.tolist()):
            assert (" pos " in t) == (y == 1) and "unlabelled" not in t
    assert all(t.startswith("train ") for t in _texts(data.val))  # dev carved from train only
    assert all(t.startswith("test ") for t in _texts(data.test))
    assert data.val.y.tolist().count(1) == 2  # stratified: 1/3 of each class
    again = text.build(root=root, seq_len=40, val_frac=1 / 3, seed=1)
    assert torch.equal(again.val.x, data.val.x)  # deterministic by seed
    raw = (root / "train" / "neg" / "0_2.txt").read_bytes()
    row = text.build(root=root, seq_len=8, val_frac=0.0).train.x[0]
    assert row.tolist() == [b + 1 for b in raw[:8]]  # truncated, byte + 1
    padded = text.build(root=root, seq_len=64, val_frac=0.0).train.x[0]
    assert padded[len(raw):].eq(PAD).all() and "test" in data.meta["splits"]


@pytest.mark.parametrize("missing", ["root", "test_pos"])
def test_imdb_loader_missing_paths_name_the_path(tmp_path, missing):
    root = _imdb(tmp_path)
    if missing == "root":
        root, gone = tmp_path / "nowhere", tmp_path / "nowhere" / "train"
    else:
        gone = root / "test" / "pos"
        for f in gone.iterdir():
            f.unlink()
        gone.rmdir()
    with pytest.raises(DataError, match=str(gone)):
        text.build(root=root, seq_len=16)


@pytest.fixture(scope="module")
def offline():
    return text.build(seq_len=128, packages=PKGS, seed=0)


def _source(package: str) -> str:
    """The package's source files, every line stripped (docstrings appear there indented)."""
    root = Path(sysconfig.get_paths()["stdlib"]) / package
    return "\n".join(line.strip() for p in sorted(root.rglob("*.py"))
                     for line in p.read_text("utf-8").splitlines())


def test_offline_labels_match_the_package_whose_source_holds_the_passage(offline):
    """Each whole line of a passage is searched in every package's source text; the labelled
    package must hold the most, and nearly all lines overall (escapes such as ``\\t`` in
    non-raw docstrings differ from the source, hence not all)."""
    sources = [_source(p) for p in PKGS]
    found, total = 0, 0
    for split in offline.splits().values():
        for row, y in zip(split.x, split.y.tolist()):
            middle = [s.strip() for s in corpus.decode(row).decode("utf-8", "ignore").splitlines()[1:-1]]
            middle = [s for s in middle if len(s) >= 12]
            hits = [sum(s in src for s in middle) for src in sources]
            assert hits[y] == max(hits), (y, hits, middle)
            found, total = found + hits[y], total + len(middle)
    assert total > 500 and found >= 0.97 * total


def test_offline_splits_share_no_text(offline):
    def paragraphs(split):  # whole paragraphs: those between two blank lines of a passage
        return {p.strip() for row in split.x
                for p in corpus.decode(row).decode("utf-8", "ignore").split("\n\n")[1:-1]
                if len(p.strip()) >= 40}
    train, val, test = (paragraphs(offline.train), paragraphs(offline.val), paragraphs(offline.test))
    assert test and val and not train & test and not train & val and not val & test
    assert offline.meta["python"] and "seeded" in offline.meta["splits"]
    assert min(np.bincount(offline.test.y.numpy())) > 0


def test_offline_write_reads_back_identically(tmp_path, offline):
    out = text.write(tmp_path / "docs", seq_len=128, packages=PKGS, seed=0)
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(PKGS)
    back = text.build(root=out, seq_len=128)
    assert back.meta["classes"] == sorted(PKGS)
    order = [PKGS.index(c) for c in back.meta["classes"]]  # folder order -> offline label
    for name, split in offline.splits().items():
        got = back.splits()[name]
        assert sorted(map(tuple, got.x.tolist())) == sorted(map(tuple, split.x.tolist()))
        assert sorted(np.array(order)[got.y.numpy()].tolist()) == sorted(split.y.tolist())
