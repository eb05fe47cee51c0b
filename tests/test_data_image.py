"""Image task: LRA's grey formula by hand, CIFAR-10's pickle layout, the digits stand-in."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from attnbench.data import image
from attnbench.data.base import DataError


def _hand_grey(r: int, g: int, b: int) -> int:
    """tf.image.rgb_to_grayscale on one uint8 pixel, step by step in float32."""
    f = np.float32
    v = f(r) * f(1 / 255) * f(0.2989) + f(g) * f(1 / 255) * f(0.5870) + f(b) * f(1 / 255) * f(0.1140)
    return int(f(v) * f(255.5))  # TF's cast truncates


def _write_cifar(root, n_per_batch=4, pixels=None):
    base = root / image.CIFAR_DIR
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in image.TRAIN_BATCHES + (image.TEST_BATCH,):
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        if pixels is not None and name == "data_batch_1":
            for j, (r, g, b) in enumerate(pixels):  # image 0, pixel j: R, G, B planes
                data[0, j], data[0, 1024 + j], data[0, 2048 + j] = r, g, b
        batch = {b"data": data, b"labels": rng.integers(0, 10, n_per_batch).tolist()}
        (base / name).write_bytes(pickle.dumps(batch, protocol=2))
    return base


PIXELS = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 200, 30),
          (123, 45, 67)]
HAND = [0, 255, 76, 149, 29, 124, 70]  # 255.5 * (0.2989 r + 0.5870 g + 0.1140 b) / 255, truncated


def test_grey_matches_hand_computation(tmp_path):
    assert [_hand_grey(*p) for p in PIXELS] == HAND
    _write_cifar(tmp_path, pixels=PIXELS)
    task = image.build(root=tmp_path)
    assert task.train.x[0, :len(PIXELS)].tolist() == [h + 1 for h in HAND]  # token = grey + 1
    assert task.grid == (32, 32) and task.vocab_size == 257 and task.num_classes == 10


def test_cifar_split_is_last_tenth_of_train(tmp_path):
    base = _write_cifar(tmp_path, n_per_batch=4)  # 20 train images -> 18 / 2 / 4
    task = image.build(root=tmp_path)
    assert (len(task.train), len(task.val), len(task.test)) == (18, 2, 4)
    last = pickle.loads((base / "data_batch_5").read_bytes())
    grey = image.rgb_to_grey(last[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert task.val.x.tolist() == (grey[2:].reshape(2, -1).astype(int) + 1).tolist()
    assert task.val.y.tolist() == last[b"labels"][2:]


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        image.build(root=tmp_path)
    base = _write_cifar(tmp_path)
    (base / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch: missing"):
        image.build(root=tmp_path)
    (base / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a CIFAR-10 batch"):
        image.build(root=tmp_path)
    (base / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8),
                                                    b"labels": [0, 1]}))
    with pytest.raises(DataError, match="3072"):
        image.build(root=tmp_path)


def test_digits_default_split_and_tokens():
    task = image.build(side=16, seed=0)
    assert "scikit-learn digits" in task.name and task.grid == (16, 16) and task.seq_len == 256
    assert (len(task.train), len(task.val), len(task.test)) == (1259, 269, 269)
    assert int(task.train.x.min()) >= 1 and int(task.train.x.max()) <= 256
    assert sorted(set(task.test.y.tolist())) == list(range(10))
    again = image.build(side=16, seed=0)
    assert (again.test.x == task.test.x).all()
    assert not (image.build(side=16, seed=1).test.x.shape == task.test.x.shape
                and (image.build(side=16, seed=1).test.x == task.test.x).all())


def test_write_round_trip(tmp_path):
    image.write(tmp_path, seed=0)
    read = image.build(root=tmp_path)
    digits = image.build(side=32, seed=0)
    train_val = np.concatenate([digits.train.x.numpy(), digits.val.x.numpy()])
    got = np.concatenate([read.train.x.numpy(), read.val.x.numpy()])
    assert (got == train_val).all()  # grey planes copied to R, G, B read back unchanged
    assert (read.test.x == digits.test.x).all() and (read.test.y == digits.test.y).all()
