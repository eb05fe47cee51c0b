"""LRA's Image task: CIFAR-10 in grey as 1,024 pixel tokens, and an offline stand-in of digits.

Conventions:

- Pixel tokens: LRA feeds 8-bit grey values 0..255 as tokens (vocab 256); our contract keeps id
  ``PAD`` = 0, so token = grey + 1 and the vocabulary is :data:`PIXEL_VOCAB` = 257. Images are
  read in raster order (row by row) and never padded. ``TaskData.grid`` is (H, W).
- Grey (LRA's ``lra_benchmarks/image/input_pipeline.py``: ``tf.image.rgb_to_grayscale``, then a
  cast to int32): TF converts uint8 to float32 by ``x * (1/255)``, sums ``r·0.2989 + g·0.5870 +
  b·0.1140`` in float32, and converts back by ``cast(v · 255.5)``, a truncation. :func:`rgb_to_grey`
  does the same in float32 (TF may sum in another order: a value within one float32 ulp of an
  integer could land one grey level apart).
- CIFAR-10 files: ``<root>/cifar-10-batches-py/data_batch_1..5`` and ``test_batch``, Python
  pickles of dicts with ``b'data'`` uint8 [10000, 3072] (the R plane, G plane, B plane of a
  32x32 image, each in raster order) and ``b'labels'``. Unpickling is restricted to numpy arrays.
- CIFAR split (LRA: ``train[:90%]``, ``train[90%:]``, ``test``): validation is the last 10% of the
  50,000 training images, 5,000. TFDS stored its train split in an order shuffled by a hash of
  each example's key, which cannot be reproduced without TFDS; we take the last 5,000 in batch
  order (``data_batch_5``), the same size drawn from an already random order.
- Offline stand-in: scikit-learn's digits (1,797 images 8x8, values 0..16, 10 classes), scaled
  to grey by ``v · 255/16``, upsampled to ``side`` x ``side`` with Pillow's bilinear filter on
  float values and rounded. Split per class: the class's indices are permuted by
  ``np.random.default_rng(seed)``; the first ``round(0.15·n_c)`` go to test, the next
  ``round(0.15·n_c)`` to val, the rest to train (1,259 / 269 / 269 at seed 0).
- :func:`write` stores the digits at 32x32 in CIFAR-10's layout, each grey plane copied to R, G
  and B; the grey formula maps (g, g, g) back to g (0.9999 · 255.5/255 · g lies in [g, g + 1)),
  so :func:`load_cifar10` reads the same pixels. Train and val go to the data batches in that
  order (split in five), test to ``test_batch``.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attnbench.data.base import DataError, Split, TaskData

PIXEL_VOCAB = 257  # grey 0..255 -> token 1..256; 0 is PAD
GREY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)  # tf.image.rgb_to_grayscale
CIFAR_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CIFAR_SIDE = 32
VAL_FRACTION = 0.1  # LRA: train[90%:]
DIGITS_FRACTIONS = (0.15, 0.15)  # digits: test, val shares per class
LAYOUT = (f"CIFAR-10's python layout: <root>/{CIFAR_DIR}/data_batch_1..5 and test_batch, each a "
          "pickled dict with b'data' uint8 [N, 3072] (R, G, B planes of 32x32) and b'labels'")

# Small: digits at 16x16 (256 tokens), 1,259 train images: a 1-2 layer d=64 transformer trains
# an epoch in a few seconds on this CPU. Paper: CIFAR-10 from root (45K/5K/10K, 1,024 tokens).
SMALL_KNOBS = dict(side=16)
LRA_KNOBS = dict(root="<dir holding cifar-10-batches-py>")


def pixels_to_tokens(grey: np.ndarray) -> torch.Tensor:
    """uint8 grey images [S, H, W] -> int64 tokens [S, H*W] in raster order, token = grey + 1."""
    if grey.dtype != np.uint8:
        raise TypeError(f"grey images are uint8, got {grey.dtype}")
    flat = grey.reshape(grey.shape[0], -1)  # [S, H*W]
    return torch.from_numpy(flat.astype(np.int64) + 1)


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> uint8 [...] exactly as ``tf.image.rgb_to_grayscale`` (see module doc)."""
    flt = rgb.astype(np.float32) * np.float32(1.0 / 255)  # [..., 3]
    grey = (flt[..., 0] * GREY_WEIGHTS[0] + flt[..., 1] * GREY_WEIGHTS[1]
            + flt[..., 2] * GREY_WEIGHTS[2])  # [...] float32
    return (grey * np.float32(255.5)).astype(np.uint8)  # truncation, as TF's cast


def _split(grey: np.ndarray, labels: np.ndarray) -> Split:
    return Split(pixels_to_tokens(grey), torch.from_numpy(labels.astype(np.int64)))


# ------------------------------------------------------------------------------------ CIFAR-10

class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays (protocol 2 stores bytes via
    ``_codecs.encode``); anything else is a DataError."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file -> RGB uint8 [N, 32, 32, 3] and labels int64 [N]."""
    if not path.is_file():
        raise DataError(f"{path}: missing; expected {LAYOUT}")
    try:
        with open(path, "rb") as f:
            batch = _NumpyUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError,
            IndexError) as e:
        raise DataError(f"{path}: not a CIFAR-10 batch ({type(e).__name__}: {e}); "
                        f"expected {LAYOUT}") from None
    n = CIFAR_SIDE * CIFAR_SIDE
    if data.ndim != 2 or data.shape[1] != 3 * n or len(labels) != len(data):
        raise DataError(f"{path}: b'data' {data.shape} with {len(labels)} labels; expected "
                        f"[N, {3 * n}] and N labels ({LAYOUT})")
    rgb = data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)  # [N, 32, 32, 3]
    return rgb, labels


def read_cifar10(root: str | Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(batch dir, train RGB uint8 [N, 32, 32, 3], train labels [N], test RGB [T, 32, 32, 3],
    test labels [T]): the five data batches in order, then test_batch (DataError if missing)."""
    base = Path(root) / CIFAR_DIR
    if not base.is_dir():
        raise DataError(f"{base}: missing directory; expected {LAYOUT}")
    parts = [read_batch(base / name) for name in TRAIN_BATCHES]
    rgb = np.concatenate([p[0] for p in parts])  # [N, 32, 32, 3]
    labels = np.concatenate([p[1] for p in parts])  # [N]
    test_rgb, test_labels = read_batch(base / TEST_BATCH)
    return base, rgb, labels, test_rgb, test_labels


def cifar_train_size(n: int) -> int:
    """Training images of ``n``: the rest (the last round(10%)) is validation, as LRA's train[90%:]."""
    return n - int(round(VAL_FRACTION * n))  # TFDS rounds to the closest


def load_cifar10(root: str | Path) -> TaskData:
    """CIFAR-10 from its python batches, grey as LRA, 45K/5K/10K (val = last 10% of train)."""
    base, rgb, labels, test_rgb, test_labels = read_cifar10(root)
    grey, test_grey = rgb_to_grey(rgb), rgb_to_grey(test_rgb)  # [N, 32, 32], [T, 32, 32]
    n_train = cifar_train_size(len(grey))
    return TaskData(
        name=(f"images in CIFAR-10's python-pickle layout at {base}, in grey "
              f"(LRA's Image task when these are CIFAR-10's batches)"), source=str(base), kind="classify",
        vocab_size=PIXEL_VOCAB, num_classes=10, seq_len=CIFAR_SIDE * CIFAR_SIDE,
        train=_split(grey[:n_train], labels[:n_train]), val=_split(grey[n_train:], labels[n_train:]),
        test=_split(test_grey, test_labels), grid=(CIFAR_SIDE, CIFAR_SIDE),
        meta={"splits": f"train = data_batch_1..5[:{n_train}], val = the last "
                        f"{len(grey) - n_train} in batch order, test = test_batch",
              "grey": "tf.image.rgb_to_grayscale: trunc(255.5 * sum(w_c * x_c / 255)), float32",
              "class_counts": np.bincount(labels[:n_train], minlength=10).tolist()})


# ------------------------------------------------------------------------- scikit-learn digits

def digits_grey(side: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 grey [1797, side, side] and labels int64 [1797]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    grey = d.images.astype(np.float32) * np.float32(255 / 16)  # [1797, 8, 8]
    if side != 8:
        grey = np.stack([np.asarray(Image.fromarray(im, mode="F").resize(
            (side, side), Image.BILINEAR)) for im in grey])  # [1797, side, side]
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8), d.target.astype(np.int64)


def stratified_split(labels: np.ndarray, seed: int,
                     fractions: tuple[float, float] = DIGITS_FRACTIONS) -> dict[str, np.ndarray]:
    """Indices per split: per class, permute by ``default_rng(seed)``; test first, then val."""
    rng = np.random.default_rng(seed)
    out = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test, n_val = (int(round(f * len(idx))) for f in fractions)
        out["test"].append(idx[:n_test])
        out["val"].append(idx[n_test:n_test + n_val])
        out["train"].append(idx[n_test + n_val:])
    return {k: np.sort(np.concatenate(v)) for k, v in out.items()}


def load_digits_task(*, side: int = SMALL_KNOBS["side"], seed: int = 0) -> TaskData:
    grey, labels = digits_grey(side)
    idx = stratified_split(labels, seed)
    splits = {k: _split(grey[v], labels[v]) for k, v in idx.items()}
    return TaskData(
        name=f"scikit-learn digits, 8x8 (0-16 scaled to 0-255) upsampled to {side}x{side}",
        source="scikit-learn digits", kind="classify", vocab_size=PIXEL_VOCAB, num_classes=10,
        seq_len=side * side, grid=(side, side), **splits,
        meta={"splits": f"stratified per class by default_rng({seed}): round(15%) test, "
                        "round(15%) val, the rest train",
              "side": side, "upsampling": "Pillow bilinear on float grey, rounded",
              "class_counts": np.bincount(labels[idx['train']], minlength=10).tolist()})


def build(*, root: str | Path | None = None, side: int = SMALL_KNOBS["side"], seed: int = 0
          ) -> TaskData:
    """CIFAR-10 from ``root`` (LRA's Image task), else the digits stand-in at ``side``."""
    if root is not None:
        return load_cifar10(root)
    return load_digits_task(side=side, seed=seed)


def write(out_dir: str | Path, *, seed: int = 0) -> Path:
    """The digits at 32x32 in CIFAR-10's python layout (see module doc); returns the batch dir."""
    grey, labels = digits_grey(CIFAR_SIDE)
    idx = stratified_split(labels, seed)
    base = Path(out_dir) / CIFAR_DIR
    base.mkdir(parents=True, exist_ok=True)
    train = np.concatenate([idx["train"], idx["val"]])
    for name, part in zip(TRAIN_BATCHES, np.array_split(train, len(TRAIN_BATCHES))):
        _write_batch(base / name, grey[part], labels[part])
    _write_batch(base / TEST_BATCH, grey[idx["test"]], labels[idx["test"]])
    return base


def _write_batch(path: Path, grey: np.ndarray, labels: np.ndarray) -> None:
    planes = np.repeat(grey[:, None], 3, axis=1)  # [N, 3, 32, 32]
    data = planes.reshape(len(grey), -1)  # [N, 3072]
    batch = {b"batch_label": path.name.encode(), b"labels": labels.tolist(), b"data": data,
             b"filenames": [f"digit_{i}.png".encode() for i in range(len(grey))]}
    buf = io.BytesIO()
    pickle.dump(batch, buf, protocol=2)
    path.write_bytes(buf.getvalue())
