"""Pathfinder: labels read back from the pixels alone, balance, markers, and the release layout.

The evaluator knows nothing of the generator: marker cores are pixels >= 240 whose four
neighbours are >= 240 too; the label is 1 iff a flood fill over non-zero pixels (8-connected)
from one marker reaches the other."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attnbench.data import pathfinder
from attnbench.data.base import DataError


def _dilate(mask: np.ndarray) -> np.ndarray:
    """8-neighbourhood dilation of a bool [H, W] mask."""
    p = np.pad(mask, 1)  # [H+2, W+2]
    h, w = mask.shape
    return np.stack([p[1 + dr:1 + dr + h, 1 + dc:1 + dc + w]
                     for dr in (-1, 0, 1) for dc in (-1, 0, 1)]).any(0)  # [H, W]


def _fill(seed: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    region = seed & allowed
    while True:
        grown = _dilate(region) & allowed
        if (grown == region).all():
            return region
        region = grown


def _markers(img: np.ndarray) -> list[np.ndarray]:
    bright = img >= 240
    p = np.pad(bright, 1)
    core = bright & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]  # plus-shaped
    blobs, left = [], core.copy()
    while left.any():
        seed = np.zeros_like(left)
        seed[tuple(np.argwhere(left)[0])] = True
        blob = _fill(seed, core)
        blobs.append(blob)
        left &= ~blob
    return blobs


def read_label(img: np.ndarray) -> int | None:
    """1 if the two markers are joined by non-zero pixels, 0 if not, None without 2 markers."""
    blobs = _markers(img)
    if len(blobs) != 2:
        return None
    return int((_fill(blobs[0], img > 0) & blobs[1]).any())


@pytest.fixture(scope="module")
def generated():
    return pathfinder.generate(100, size=32, contour_length=14, seed=7)  # ~50 ms each


def test_labels_read_from_pixels_agree(generated):
    images, labels, _ = generated
    read = [read_label(im) for im in images]
    agree = np.mean([r == y for r, y in zip(read, labels)])
    assert agree >= 0.98, f"evaluator agrees on {agree:.1%}"


def test_balanced_and_two_markers(generated):
    images, labels, _ = generated
    assert labels.sum() == len(labels) // 2
    assert all(len(_markers(im)) == 2 for im in images)


def test_build_generated_contract():
    task = pathfinder.build(n_train=6, n_val=2, n_test=2, seed=1)
    assert task.grid == (32, 32) and task.seq_len == 1024 and task.vocab_size == 257
    assert task.train.x.shape == (6, 1024) and int(task.train.x.min()) >= 1
    assert int(task.train.y.sum()) == 3
    assert "generated after LRA's builder (32x32, length 14)" in task.name


def test_release_round_trip_skips_empty(tmp_path):
    folder = pathfinder.write(tmp_path, n=20, per_dir=8, seed=3, difficulty="easy")
    (folder / "imgs" / "0" / "sample_5.png").write_bytes(b"")  # LRA's empty image
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "imgs" / "2" / "sample_1.png")
    line = (folder / "metadata" / "0.npy").read_text().split("\n")[0].split(" ")
    assert line[:2] == ["imgs/0", "sample_0.png"] and len(line) == 11
    task = pathfinder.build(root=tmp_path, difficulty="easy")
    assert (len(task.train), len(task.val), len(task.test)) == (15, 1, 2)  # 16/2/2 minus 2
    assert task.meta["skipped"] == {"empty_files": 1, "all_black": 1}
    images, labels, _ = pathfinder.generate(20, size=32, contour_length=6, seed=3)
    assert task.train.x[0].tolist() == (images[0].ravel().astype(int) + 1).tolist()
    assert task.val.y.tolist() == labels[16:17].tolist()  # sample 17 was black


def test_missing_release_names_path(tmp_path):
    with pytest.raises(DataError, match="pathfinder32/curv_contour_length_14"):
        pathfinder.build(root=tmp_path)
    (tmp_path / "pathfinder32" / "curv_contour_length_14").mkdir(parents=True)
    with pytest.raises(DataError, match="metadata"):
        pathfinder.build(root=tmp_path)


def test_bad_metadata_line(tmp_path):
    folder = pathfinder.write(tmp_path, n=2, per_dir=2, seed=0)
    (folder / "metadata" / "0.npy").write_text("imgs/0 sample_0.png\n")
    with pytest.raises(DataError, match="0.npy:1"):
        pathfinder.build(root=tmp_path)
