"""Task ``vision``: images as pixels for the vision skeletons (ViT, Swin, PVT), kind ``classify``.

Conventions:

- x [S, C*H*W] int64 pixel values 0..255, channels first, each plane in raster order (CIFAR-10's
  own ``b'data'`` layout); y [S] the classes. The values are intensities, not token ids: 0 is
  black, never padding (nothing is padded), and ``vocab_size`` 256 only states their range. The
  models normalize and cut patches themselves (``attnbench.models.patches``).
  ``meta['image']`` is [C, H, W]; ``TaskData.grid`` is the pixel grid (H, W): the patch grid
  belongs to the model (its patch side), so the data does not fix it.
- Small, offline: scikit-learn's digits (1,797 images 8x8, 0..16 scaled to 0..255) upsampled to
  ``side`` x ``side`` and split per class as :mod:`attnbench.data.image` does (its helpers):
  1,259 / 269 / 269 at seed 0, one channel. Named for what it is, never CIFAR-10.
- Paper: CIFAR-10 in colour from the python pickle batches at ``root`` (image.py's reader),
  45,000 / 5,000 / 10,000: validation is the last 5,000 training images in batch order (LRA's
  ``train[90%:]`` rule, as the Image task), test is ``test_batch``. Missing or malformed files:
  DataError, one line with the path and the layout.
- :func:`write` is image.py's: the digits at 32x32 in CIFAR-10's layout, each grey plane copied to
  R, G and B; read back with ``data.root=DIR`` they are 3 x 32 x 32 images (grey in colour).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attnbench.data import image
from attnbench.data.base import Split, TaskData

PIXEL_RANGE = 256  # values 0..255
SMALL_SIDE = 32  # digits 8x8 upsampled 4x: a 4x4 patch is one original pixel, CIFAR's side


def _split(planes: np.ndarray, labels: np.ndarray) -> Split:
    """uint8 images [S, C, H, W] -> Split(x int64 [S, C*H*W], y int64 [S])."""
    flat = planes.reshape(planes.shape[0], -1)  # [S, C*H*W], channels first, raster order
    return Split(torch.from_numpy(flat.astype(np.int64)), torch.from_numpy(labels.astype(np.int64)))


def load_digits(*, side: int = SMALL_SIDE, seed: int = 0) -> TaskData:
    """scikit-learn's digits upsampled to ``side`` x ``side``, one channel, stratified split."""
    grey, labels = image.digits_grey(side)  # [1797, side, side] uint8, [1797]
    idx = image.stratified_split(labels, seed)
    planes = grey[:, None]  # [1797, 1, side, side]
    splits = {k: _split(planes[v], labels[v]) for k, v in idx.items()}
    return TaskData(
        name=f"scikit-learn digits (8x8, upsampled to {side}x{side}), not CIFAR-10",
        source="scikit-learn digits", kind="classify", vocab_size=PIXEL_RANGE, num_classes=10,
        seq_len=side * side, grid=(side, side), **splits,
        meta={"image": [1, side, side], "pixels": "int64 0..255, channels first, raster order",
              "splits": f"stratified per class by default_rng({seed}): round(15%) test, round(15%) val, "
                        "the rest train",
              "upsampling": "Pillow bilinear on float grey (0..16 x 255/16), rounded",
              "class_counts": np.bincount(labels[idx['train']], minlength=10).tolist()})


def load_cifar10(root: str | Path) -> TaskData:
    """CIFAR-10 in colour, 45K / 5K / 10K (val = the last tenth of the training batches)."""
    base, rgb, labels, test_rgb, test_labels = image.read_cifar10(root)
    planes, test_planes = rgb.transpose(0, 3, 1, 2), test_rgb.transpose(0, 3, 1, 2)  # [N, 3, 32, 32], [T, 3, 32, 32]
    n_train = image.cifar_train_size(len(planes))
    side = image.CIFAR_SIDE
    return TaskData(
        name=(f"images in CIFAR-10's python-pickle layout at {base}, in colour (CIFAR-10 when these are "
              f"CIFAR-10's batches)"), source=str(base), kind="classify", vocab_size=PIXEL_RANGE,
        num_classes=10, seq_len=3 * side * side, grid=(side, side),
        train=_split(planes[:n_train], labels[:n_train]), val=_split(planes[n_train:], labels[n_train:]),
        test=_split(test_planes, test_labels),
        meta={"image": [3, side, side], "pixels": "int64 0..255, channels first, raster order",
              "splits": f"train = data_batch_1..5[:{n_train}], val = the last {len(planes) - n_train} in "
                        f"batch order, test = test_batch",
              "class_counts": np.bincount(labels[:n_train], minlength=10).tolist()})


def build(*, root: str | Path | None = None, side: int = SMALL_SIDE, seed: int = 0) -> TaskData:
    """CIFAR-10 from ``root`` (paper), else scikit-learn's digits at ``side`` (small)."""
    if root is not None:
        return load_cifar10(root)
    return load_digits(side=side, seed=seed)


def write(out_dir: str | Path, *, seed: int = 0) -> Path:
    """The digits at 32x32 in CIFAR-10's python layout (image.py's :func:`attnbench.data.image.write`)."""
    return image.write(out_dir, seed=seed)
