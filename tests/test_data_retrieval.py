"""Document matching: the AAN TSV loader on fixture files in the release format, and the offline
pydoc pairs checked by searching both passages in the topic texts."""
from __future__ import annotations

import pytest
import torch

from attnbench.data import corpus, retrieval
from attnbench.data.base import PAD, DataError

LINES = {"train": [b"1\taan-1\taan-2\tattention is all\tyou need", b"0.0\taan-3\taan-4\tlong range\tarena"],
         "eval": [b"0\tx\ty\tfoo\tbar"], "test": [b"1.0\tx\ty\t\xc3\xa9t\xc3\xa9\tsummer"]}


def _aan(root, lines=LINES):
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in lines.items():
        (root / f"new_aan_pairs.{split}.tsv").write_bytes(b"\n".join(rows) + b"\n")
    return root


def test_aan_loader_reads_label_id1_id2_text1_text2(tmp_path):
    data = retrieval.build(root=_aan(tmp_path / "tsv_data"), seq_len=6)
    assert data.kind == "pair" and data.train.x.shape == (2, 2, 6) and data.train.y.tolist() == [1, 0]
    assert [len(s) for s in (data.train, data.val, data.test)] == [2, 1, 1]
    assert corpus.decode(data.train.x[0, 0]) == b"attent"  # truncated to seq_len bytes
    assert corpus.decode(data.train.x[0, 1]) == b"you ne"
    assert data.val.x[0, 1].tolist() == [b + 1 for b in b"bar"] + [PAD] * 3
    assert corpus.decode(data.test.x[0, 0]) == "été".encode()  # bytes, not characters


def test_aan_loader_missing_file_and_malformed_line(tmp_path):
    root = _aan(tmp_path / "tsv_data")
    (root / "new_aan_pairs.eval.tsv").unlink()
    with pytest.raises(DataError, match=str(root / "new_aan_pairs.eval.tsv")):
        retrieval.build(root=root)
    bad = dict(LINES, train=[LINES["train"][0], b"1\tonly\tthree"])
    root = _aan(tmp_path / "bad", bad)
    with pytest.raises(DataError, match=r"new_aan_pairs\.train\.tsv:2: 3 tab-separated"):
        retrieval.build(root=root)
    root = _aan(tmp_path / "label", dict(LINES, eval=[b"yes\tx\ty\ta\tb"]))
    with pytest.raises(DataError, match=r"eval\.tsv:1: label"):
        retrieval.build(root=root)


@pytest.fixture(scope="module")
def offline():
    return retrieval.build(seq_len=128, n_train=400, n_eval=100, seed=0)


def _topics_of(passage: bytes, topics: dict[str, bytes]) -> set[str]:
    return {name for name, body in topics.items() if passage in body}


def test_offline_pair_labels_agree_with_topic_search(offline):
    topics = {name: " ".join(text.split("\t")).replace("\n", " ").replace("\r", " ").encode()
              for name, text in corpus.pydoc_topics_distinct()}
    seen = {}
    for split_name, split in offline.splits().items():
        assert split.y.sum() * 2 == len(split)  # balanced
        seen[split_name] = set()
        for pair, y in zip(split.x, split.y.tolist()):
            a, b = corpus.decode(pair[0]), corpus.decode(pair[1])
            ta, tb = _topics_of(a, topics), _topics_of(b, topics)
            assert len(ta) == 1 and len(tb) == 1, (ta, tb)
            assert (ta == tb) == bool(y) and a != b
            seen[split_name] |= ta | tb
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"]
    assert not seen["val"] & seen["test"]  # whole topics per split: no passage shared


def test_offline_write_reads_back_identically(tmp_path, offline):
    out = retrieval.write(tmp_path / "aan", seq_len=128, n_train=400, n_eval=100, seed=0)
    back = retrieval.build(root=out, seq_len=128)
    for name, split in offline.splits().items():
        assert torch.equal(back.splits()[name].x, split.x) and torch.equal(back.splits()[name].y, split.y)
    assert offline.meta["python"] and "seeded" in offline.meta["splits"]
