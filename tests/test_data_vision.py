"""Vision task data: pixels channels-first in raster order; the digits builder checked against
scikit-learn directly; CIFAR-10's pickle layout read in colour from fixture batches; missing files."""
from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest
import torch

from attnbench.data import image, vision
from attnbench.data.base import DataError


def _write_cifar(root, n_per_batch=4):
    base = root / image.CIFAR_DIR
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    raw = {}
    for name in image.TRAIN_BATCHES + (image.TEST_BATCH,):
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        (base / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
        raw[name] = (data, labels)
    return base, raw


def test_cifar_is_read_in_colour_in_its_own_layout(tmp_path):
    _, raw = _write_cifar(tmp_path)  # 20 train images -> 18 / 2 / 4
    task = vision.build(root=tmp_path)
    assert (len(task.train), len(task.val), len(task.test)) == (18, 2, 4)
    assert task.meta["image"] == [3, 32, 32] and task.seq_len == 3072 and task.kind == "classify"
    # channels first, each plane in raster order: CIFAR-10's own b'data' rows, unchanged
    train = np.concatenate([raw[n][0] for n in image.TRAIN_BATCHES])
    assert task.train.x.tolist() == train[:18].astype(int).tolist()
    assert task.val.x.tolist() == train[18:].astype(int).tolist()
    assert task.test.x.tolist() == raw[image.TEST_BATCH][0].astype(int).tolist()
    assert task.val.y.tolist() == raw["data_batch_5"][1][2:]
    assert "CIFAR-10's python-pickle layout" in task.name


def test_missing_cifar_files_are_one_line(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py: missing directory; expected CIFAR-10's python layout"):
        vision.build(root=tmp_path)
    base, _ = _write_cifar(tmp_path)
    (base / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: missing"):
        vision.build(root=tmp_path)


def test_digits_pixels_and_labels_are_scikit_learns():
    """An independent check: at side 8 (no upsampling) every (image, label) of the three splits is
    one of scikit-learn's digits scaled by 255/16, each used once."""
    from sklearn.datasets import load_digits

    d = load_digits()
    want = Counter((tuple(np.rint(im.reshape(-1) * 255 / 16).astype(int)), int(t)) for im, t in zip(d.images, d.target))
    task = vision.build(side=8, seed=0)
    got = Counter((tuple(x), int(y)) for s in task.splits().values() for x, y in zip(s.x.tolist(), s.y.tolist()))
    assert got == want
    assert task.meta["image"] == [1, 8, 8]


def test_digits_small_size_and_the_written_files_round_trip(tmp_path):
    task = vision.build()  # the small size: 32x32
    assert task.name == "scikit-learn digits (8x8, upsampled to 32x32), not CIFAR-10"
    assert (len(task.train), len(task.val), len(task.test)) == (1259, 269, 269)
    assert task.meta["image"] == [1, 32, 32] and task.grid == (32, 32) and task.seq_len == 1024
    assert task.train.x.dtype == torch.int64 and int(task.train.x.min()) == 0 and int(task.train.x.max()) == 255
    grey, labels = image.digits_grey(32)
    idx = image.stratified_split(labels, 0)
    assert task.test.x.tolist() == grey[idx["test"]].reshape(-1, 1024).astype(int).tolist()
    # `attnbench data vision` writes CIFAR-10's layout; read back, each channel holds the grey image
    vision.write(tmp_path, seed=0)
    back = vision.build(root=tmp_path)
    assert back.meta["image"] == [3, 32, 32]
    planes = back.test.x.view(-1, 3, 1024)  # [S, 3, H*W]
    assert (planes[:, 0] == planes[:, 1]).all() and (planes[:, 1] == planes[:, 2]).all()
    assert planes[:, 0].tolist() == task.test.x.tolist() and back.test.y.tolist() == task.test.y.tolist()
