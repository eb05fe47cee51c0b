"""Pathfinder after Long Range Arena: a contour generator, LRA's release layout, and its loader.

Conventions:

- Task (Linsley et al. 2018, the ``drewlinsley/pathfinder`` ``snakes2`` generator LRA used): two
  target contours grow from seeds ``seed_distance`` apart, each a chain of ``contour_length``
  straight *paddles* of ``paddle_length`` px separated by a ``gap``; each turn is drawn from
  ``p(turn) ∝ cos(min(|turn|·continuity, π/2))²`` (snakes2's ``get_coords_cmf``), on a 10° grid.
  Two circular markers: label 1 puts them on the two ends of one target contour, label 0 on the
  origin of one and the far end of the other (snakes2's rule), so both classes draw the same
  two equal-length contours. ``distractors`` shorter contours (``contour_length // 3`` paddles,
  LRA's rule) are placed elsewhere; one that finds no room after ``DISTRACTOR_TRIES`` is dropped
  (snakes2's ``allow_incomplete``) and ``meta['distractors_dropped']`` counts them.
- Difficulties, as LRA named the release folders: easy = ``curv_baseline`` (6 paddles),
  intermediate = ``curv_contour_length_9``, hard = ``curv_contour_length_14``, at every size;
  larger images get longer, thicker paddles and bigger markers (:data:`GEOMETRY`, from the
  parameters in LRA's ``lra_benchmarks/data/pathfinder.py`` docstrings).
- Ours, so that the label can be read off the image: distinct contours (and the marker discs)
  keep a centre-line distance of at least :func:`clearance`, which is wider than the reach of
  any non-zero antialiased pixel plus one pixel, so two contours never share or touch a non-zero
  pixel (8-connectivity); and the gap between paddles is short enough that one contour's
  non-zero pixels are 8-connected. The original paddles' gap is about twice LRA's margin and
  contours may come closer; we use gap = margin (1, 1, 2 px) and the clearance.
- Rendering: coverage of each paddle (a capsule of width ``thickness``) on an ``ANTIALIAS``x
  canvas, maximum over paddles (snakes2 takes ``np.maximum``), times the line contrast
  (snake 2 x paddle 0.75 = 1.5 at 32 px), clipped to 1; marker discs at contrast 1; the canvas
  is averaged down in ``ANTIALIAS`` x ``ANTIALIAS`` blocks (Pillow's BOX) and rounded to grey
  0-255. Coordinates are (row, col) with pixel centres at integers.
- Tokens: grey + 1 (``image.pixels_to_tokens``, vocab 257), raster order, no padding.
- Release layout (LRA's ``lra_release/pathfinder{S}/<folder>/``): ``imgs/<k>/sample_<i>.png``
  (8-bit grey) and ``metadata/<k>.npy``, a TEXT file despite its suffix, one line per image
  ending in ``\\n``, fields separated by one space: snakes2's ``accumulate_meta`` order
  ``imgs/<k> sample_<i>.png <i> <label> <continuity> <contour_length> <distractor_length>
  <paddle_length> <paddle_thickness> <margin> <n_contrasts>``; LRA's reader uses fields 0, 1, 3.
- Release split (LRA's ``get_pathfinder_base_datasets``): ``[:80%]``, ``[80%:90%]``, ``[90%:]``
  of one difficulty (TFDS rounds boundaries to the nearest example), *then* empty images are
  filtered out. LRA's order was TFDS's stored order (examples shuffled by a hash of their key at
  build time), which cannot be reproduced without TFDS; we take metadata files in numeric order
  of ``k`` and their lines in file order. Skipped: zero-byte PNGs (LRA's filter, e.g. the
  release's pathfinder32 curv_baseline ``imgs/0/sample_172.png``) and all-black images (ours);
  ``meta['skipped']`` counts both.
"""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attnbench.data.base import DataError, Split, TaskData
from attnbench.data.image import PIXEL_VOCAB, pixels_to_tokens

DIFFICULTIES = {"easy": ("curv_baseline", 6), "intermediate": ("curv_contour_length_9", 9),
                "hard": ("curv_contour_length_14", 14)}  # LRA split name: (release folder, paddles)
ANTIALIAS = 2  # LRA's antialias_scale at every size
TURNS = np.deg2rad(np.arange(-180, 180, 10))  # every turn between paddles is tried, then drawn
TARGET_TRIES = 200  # fresh target pairs before giving up
MAX_DEAD_ENDS = 20  # per target pair, each taking back BACKTRACK paddles
DISTRACTOR_DEAD_ENDS = 4  # per distractor try
BACKTRACK = 2
DISTRACTOR_TRIES = 4  # snakes2's max_distractor_contour_retrial
ORIGIN_DRAWS = 32  # random starts drawn at once; a distractor starts at the first free one
SAMPLE_SPACING = 0.5  # px between the points of a candidate paddle looked up on the board
LAYOUT = ("LRA's release layout: <root>/pathfinder{S}/<folder>/imgs/<k>/sample_<i>.png with "
          "<root>/pathfinder{S}/<folder>/metadata/<k>.npy (text, one 'imgs/<k> sample_<i>.png "
          "<i> <label> ...' line per image), folder one of curv_baseline, "
          "curv_contour_length_9, curv_contour_length_14")


@dataclass(frozen=True)
class Geometry:
    """One image size's drawing parameters (px); LRA's values except where marked."""
    paddle_length: float
    gap: float  # ours: LRA's paddle margin taken as the gap between paddles
    thickness: float
    marker_radius: float
    seed_distance: float
    padding: float
    continuity: float
    distractor_paddles: int  # LRA: num_distractor_snakes = this // distractor_length
    line_contrast: float  # snake contrast x paddle contrast


GEOMETRY = {
    32: Geometry(2, 1, 0.5, 1.5, 7, 1, 1.0, 20, 2 * 0.75),
    64: Geometry(5, 1, 1.0, 2.5, 12, 1, 1.8, 22, 0.8),  # paddle_length: snakes2's default 5
    128: Geometry(5, 2, 1.5, 3.0, 20, 1, 1.8, 35, 0.9),  # LRA margins [2, 3]: we take 2
}

# Measured on this shared 2-core CPU (load ~3): 32 px length 14 ~50 ms/image, length 6 ~22 ms,
# 64 px ~120 ms, 128 px ~0.5 s. Small: 2,000 images at 32 px, ~100 s (easy: ~45 s). Paper: LRA's
# release has 200,000 images per difficulty (80/10/10), ~3 h to generate here: read the release
# with root= when it is at hand.
SMALL_KNOBS = dict(size=32, difficulty="hard", n_train=1_600, n_val=200, n_test=200)
LRA_KNOBS = dict(size=32, difficulty="hard", n_train=160_000, n_val=20_000, n_test=20_000)


def clearance(g: Geometry) -> float:
    """Least centre-line distance between distinct contours (marker discs add their radius).

    A pixel is non-zero only if one of its sub-pixel centres lies within ``thickness/2 + s/2``
    of a paddle (``s = 1/ANTIALIAS``), so its centre lies within ``reach = thickness/2 + s/2 +
    (1 - s)/√2`` of it; two contours' non-zero pixels are 8-adjacent only if their centre lines
    come within ``2·reach + √2``. We add 0.5 px for the point sampling of paddles."""
    s = 1.0 / ANTIALIAS
    reach = g.thickness / 2 + s / 2 + (1 - s) / math.sqrt(2)
    return 2 * reach + math.sqrt(2) + 0.5


def difficulty_length(difficulty: str) -> int:
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty {difficulty!r}; allowed: {', '.join(DIFFICULTIES)}")
    return DIFFICULTIES[difficulty][1]


def geometry(size: int) -> Geometry:
    if size not in GEOMETRY:
        raise ValueError(f"size {size}; allowed: {', '.join(map(str, GEOMETRY))} (128 is Path-X)")
    return GEOMETRY[size]


# ----------------------------------------------------------------------------- growing contours

class _Board:
    """Points standing for every paddle drawn so far: where, whose, which paddle, what radius.
    Marker zones are points of paddle index -1 with the marker radius."""

    def __init__(self):
        self.pts = np.zeros((0, 2))  # [M, 2]
        self.owner = np.zeros(0, dtype=int)  # [M] contour id
        self.paddle = np.zeros(0, dtype=int)  # [M] paddle index within its contour
        self.radius = np.zeros(0)  # [M] 0 for paddles, the marker radius for marker zones

    def add(self, pts: np.ndarray, owner: int, paddle: int, radius: float = 0.0) -> None:
        n = len(pts)
        self.pts = np.concatenate([self.pts, pts])
        self.owner = np.concatenate([self.owner, np.full(n, owner)])
        self.paddle = np.concatenate([self.paddle, np.full(n, paddle)])
        self.radius = np.concatenate([self.radius, np.full(n, radius)])

    def remove(self, owner: int, from_paddle: int) -> None:
        keep = ~((self.owner == owner) & (self.paddle >= from_paddle))  # [M]
        self.pts, self.owner = self.pts[keep], self.owner[keep]
        self.paddle, self.radius = self.paddle[keep], self.radius[keep]

    def fits(self, cand: np.ndarray, owner: int, paddle: int, clear: float) -> np.ndarray:
        """Which candidate paddles ``cand`` [K, P, 2] (all starting at one point) keep ``clear``
        from other contours and ``clear / 2`` from their own older paddles (not the previous)."""
        other = self.owner != owner
        own_old = (self.owner == owner) & (self.paddle < paddle - 1)
        need = np.where(other, clear + self.radius, clear / 2)  # [M]
        centre = cand[0, 0]
        span = np.sqrt(((cand[0] - centre) ** 2).sum(-1)).max()
        near = np.sqrt(((self.pts - centre) ** 2).sum(-1)) < need + span + 1e-9  # [M]
        keep = (own_old | other) & near
        if not keep.any():
            return np.ones(len(cand), dtype=bool)
        diff = cand[:, :, None, :] - self.pts[keep][None, None]  # [K, P, M', 2]
        dist = np.sqrt((diff ** 2).sum(-1))  # [K, P, M']
        return (dist >= need[keep]).all(axis=(1, 2))  # [K]


class _Contour:
    """A contour being grown: its id, origin, paddles [(a, b)] and the heading of each."""

    def __init__(self, owner: int, origin: np.ndarray):
        self.owner, self.origin = owner, origin
        self.paddles: list[tuple[np.ndarray, np.ndarray]] = []
        self.headings: list[float] = []


def _points(a: np.ndarray, b: np.ndarray, length: float) -> np.ndarray:
    """Points every ~SAMPLE_SPACING px along paddles a -> b: a, b [K, 2] -> [K, P, 2]."""
    t = np.linspace(0.0, 1.0, int(math.ceil(length / SAMPLE_SPACING)) + 1)  # [P]
    return a[:, None, :] + t[None, :, None] * (b - a)[:, None, :]  # [K, P, 2]


def _turn_probs(continuity: float) -> np.ndarray:
    w = np.cos(np.minimum(np.abs(TURNS) * continuity, np.pi / 2)) ** 2  # [T]
    return w / w.sum()


def _extend(rng, board: _Board, c: _Contour, g: Geometry, size: int, clear: float,
            end_marker: bool) -> bool:
    """Add one paddle to ``c``: the first from its origin at a uniform heading, later ones after
    a ``gap`` along the last heading, turned by a draw from the continuity pmf. Every heading on
    the grid is tried; one of those in bounds and clear is drawn ∝ its weight (snakes2 masks its
    pmf the same way). With ``end_marker`` the paddle is the last: its end, rounded to a pixel,
    gets a marker zone that must keep its clearance too. False if none fits."""
    if c.paddles:
        h = c.headings[-1]
        start = c.paddles[-1][1] + g.gap * np.array([math.sin(h), math.cos(h)])  # [2]
        probs = _turn_probs(g.continuity)
        angles, weights = h + TURNS[probs > 0], probs[probs > 0]  # [K], [K]
    else:
        start = c.origin
        angles, weights = rng.uniform(-np.pi, np.pi) + TURNS, np.ones(len(TURNS))
    a = np.broadcast_to(start, (len(angles), 2))  # [K, 2]
    b = a + g.paddle_length * np.stack([np.sin(angles), np.cos(angles)], axis=1)  # [K, 2]
    cand = _points(a, b, g.paddle_length)  # [K, P, 2]
    ok = ((cand >= g.padding) & (cand <= size - 1 - g.padding)).all(axis=(1, 2))  # [K]
    if end_marker:
        ok &= _end_ok(board, c, np.rint(b), g, clear)
    if ok.any():
        ok[ok] = board.fits(cand[ok], c.owner, len(c.paddles), clear)
    if not ok.any():
        return False
    k = int(rng.choice(len(angles), p=np.where(ok, weights, 0.0) / weights[ok].sum()))
    board.add(cand[k], c.owner, len(c.paddles))
    if end_marker:
        board.add(np.rint(b[k])[None], c.owner, len(c.paddles), radius=g.marker_radius)
    c.paddles.append((start, b[k]))
    c.headings.append(float(angles[k]))
    return True


def _end_ok(board: _Board, c: _Contour, ends: np.ndarray, g: Geometry, clear: float):
    """Which end markers ``ends`` [K, 2] keep ``clear`` (plus radii) from other contours and
    ``2·radius + 2`` from their own origin, so the two markers never merge."""
    other = board.owner != c.owner
    d = np.sqrt(((ends[:, None, :] - board.pts[other][None]) ** 2).sum(-1))  # [K, M']
    need = clear + g.marker_radius + board.radius[other]  # [M']
    apart = np.sqrt(((ends - c.origin) ** 2).sum(-1)) >= 2 * g.marker_radius + 2  # [K]
    return (d >= need).all(axis=1) & apart  # [K]


def _grow(rng, board: _Board, contours: list[_Contour], length: int, g: Geometry, size: int,
          clear: float, end_markers: bool = False, max_dead_ends: int = MAX_DEAD_ENDS) -> bool:
    """Grow ``contours`` in turn (the shortest next) to ``length`` paddles each. A dead end
    takes back the contour's last BACKTRACK paddles; False after ``max_dead_ends`` of them."""
    dead_ends = 0
    while True:
        c = min(contours, key=lambda c: len(c.paddles))
        if len(c.paddles) >= length:
            return True
        last = end_markers and len(c.paddles) == length - 1
        if _extend(rng, board, c, g, size, clear, last):
            continue
        dead_ends += 1
        if dead_ends > max_dead_ends or not c.paddles:  # no first paddle: try another origin
            return False
        keep = max(len(c.paddles) - BACKTRACK, 0)
        board.remove(c.owner, keep)
        del c.paddles[keep:], c.headings[keep:]


def _targets(rng, board: _Board, length: int, g: Geometry, size: int, clear: float):
    """Two contours of ``length`` paddles from integer seeds ``seed_distance`` apart (snakes2
    keeps the first seed ``2·seed_distance`` from the border); None on failure. Returns the
    contours and their tips [2 (origin, end), 2 (contour), 2] on integer pixels."""
    lo, hi = 2 * g.seed_distance, size - 2 * g.seed_distance
    o0 = rng.integers(int(lo), int(hi), size=2).astype(float)  # [2]
    phi = rng.uniform(0, 2 * np.pi)
    o1 = o0 + np.rint(g.seed_distance * np.array([math.sin(phi), math.cos(phi)]))  # [2]
    contours = [_Contour(0, o0), _Contour(1, o1)]
    for c in contours:
        board.add(c.origin[None], c.owner, -1, radius=g.marker_radius)
    if not _grow(rng, board, contours, length, g, size, clear, end_markers=True):
        return None
    ends = np.rint(np.stack([c.paddles[-1][1] for c in contours]))  # [2, 2]
    return contours, np.stack([np.stack([o0, o1]), ends])  # [2, 2, 2]


def _distractor(rng, board: _Board, owner: int, length: int, g: Geometry, size: int,
                clear: float) -> _Contour | None:
    """One distractor contour from a random free start, or None after DISTRACTOR_TRIES."""
    for _ in range(DISTRACTOR_TRIES):
        starts = rng.uniform(g.padding, size - 1 - g.padding, size=(ORIGIN_DRAWS, 2))  # [D, 2]
        d = np.sqrt(((starts[:, None] - board.pts[None]) ** 2).sum(-1))  # [D, M]
        free = np.flatnonzero((d >= clear + board.radius).all(axis=1))  # the start's clearance
        if len(free) == 0:
            return None
        c = _Contour(owner, starts[free[0]])
        if _grow(rng, board, [c], length, g, size, clear, max_dead_ends=DISTRACTOR_DEAD_ENDS):
            return c
        board.remove(owner, 0)
    return None


def sample(rng, label: int, *, size: int = 32, contour_length: int = 14,
           distractors: int | None = None) -> tuple[np.ndarray, dict]:
    """One image: uint8 [size, size] and what was drawn (marker centres, distractors)."""
    g, clear = geometry(size), clearance(geometry(size))
    d_len = max(contour_length // 3, 1)  # LRA: distractor_length = contour_length // 3
    n_dis = g.distractor_paddles // d_len if distractors is None else distractors
    for _ in range(TARGET_TRIES):
        board = _Board()
        found = _targets(rng, board, contour_length, g, size, clear)
        if found is not None:
            break
    else:
        raise RuntimeError(f"no room for two {contour_length}-paddle contours in {size} px "
                           f"after {TARGET_TRIES} tries; use a shorter contour_length")
    contours, tips = found
    placed = [_distractor(rng, board, 2 + i, d_len, g, size, clear) for i in range(n_dis)]
    contours += [c for c in placed if c is not None]
    first = int(rng.integers(0, 2))  # snakes2: origin marker on a random target contour
    markers = np.stack([tips[0, first], tips[1, first if label else 1 - first]])  # [2, 2]
    segs = np.array([[a, b] for c in contours for a, b in c.paddles])  # [n, 2 (a, b), 2]
    return render(segs, markers, g, size), {
        "markers": markers, "distractors": len(placed),
        "distractors_dropped": sum(c is None for c in placed)}


# ----------------------------------------------------------------------------------- rendering

def _segment_distance(p: np.ndarray, segs: np.ndarray) -> np.ndarray:
    """Distance from points p [Q, 2] to segments segs [n, 2, 2]: [Q, n]."""
    a, b = segs[:, 0], segs[:, 1]  # [n, 2]
    ab = b - a  # [n, 2]
    ap = p[:, None, :] - a[None]  # [Q, n, 2]
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab ** 2).sum(-1), 1e-12), 0.0, 1.0)  # [Q, n]
    return np.sqrt(((ap - t[..., None] * ab) ** 2).sum(-1))  # [Q, n]


def render(segs: np.ndarray, markers: np.ndarray, g: Geometry, size: int) -> np.ndarray:
    """Paddles segs [n, 2, 2] and marker centres [m, 2] -> uint8 [size, size] (see module doc)."""
    s = 1.0 / ANTIALIAS
    sub = (np.arange(size * ANTIALIAS) + 0.5) * s - 0.5  # sub-pixel centres in pixel units
    rr, cc = np.meshgrid(sub, sub, indexing="ij")  # [SA, SA] each
    p = np.stack([rr.ravel(), cc.ravel()], axis=1)  # [SA*SA, 2]
    lines = np.clip((g.thickness / 2 - _segment_distance(p, segs).min(1)) / s + 0.5, 0, 1)
    lines = np.minimum(lines * g.line_contrast, 1.0)  # [SA*SA]
    dm = np.sqrt(((p[:, None, :] - markers[None]) ** 2).sum(-1)).min(1)  # [SA*SA]
    discs = np.clip((g.marker_radius - dm) / s + 0.5, 0, 1)  # [SA*SA]
    fine = np.maximum(lines, discs).reshape(size, ANTIALIAS, size, ANTIALIAS)  # [S, A, S, A]
    return np.rint(fine.mean(axis=(1, 3)) * 255).astype(np.uint8)  # [S, S]


def generate(n: int, *, size: int = 32, contour_length: int = 14, distractors: int | None = None,
             seed: int = 0, stream: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """``n`` images uint8 [n, size, size], labels int64 [n] (exactly half 1 when n is even, in
    random order), and the distractors dropped; ``np.random.default_rng((seed, stream))``."""
    rng = np.random.default_rng((seed, stream))
    labels = rng.permutation(np.arange(n) % 2)  # [n]
    images = np.zeros((n, size, size), dtype=np.uint8)  # [n, S, S]
    dropped = 0
    for i in range(n):
        images[i], info = sample(rng, int(labels[i]), size=size, contour_length=contour_length,
                                 distractors=distractors)
        dropped += info["distractors_dropped"]
    return images, labels.astype(np.int64), dropped


# ----------------------------------------------------------------------------- release layout

def _folder(root: Path, size: int, difficulty: str) -> Path:
    difficulty_length(difficulty)
    return Path(root) / f"pathfinder{size}" / DIFFICULTIES[difficulty][0]


def write(out_dir: str | Path, *, size: int = 32, difficulty: str = "hard", n: int = 200,
          per_dir: int = 100, seed: int = 0, distractors: int | None = None) -> Path:
    """``n`` generated images in LRA's release layout (module doc); returns the folder."""
    folder, length = _folder(Path(out_dir), size, difficulty), difficulty_length(difficulty)
    images, labels, _ = generate(n, size=size, contour_length=length, distractors=distractors,
                                 seed=seed)
    g = geometry(size)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    for k in range(math.ceil(n / per_dir)):
        sub = folder / "imgs" / str(k)
        sub.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(min(per_dir, n - k * per_dir)):
            j = k * per_dir + i
            Image.fromarray(images[j], mode="L").save(sub / f"sample_{i}.png")
            lines.append(f"imgs/{k} sample_{i}.png {i} {labels[j]} {g.continuity} {length} "
                         f"{max(length // 3, 1)} {g.paddle_length} {g.thickness} {g.gap} 1\n")
        (folder / "metadata" / f"{k}.npy").write_text("".join(lines))
    return folder


def read_metadata(folder: Path) -> list[tuple[Path, int]]:
    """(image path, label) for every line of ``metadata/<k>.npy``, k in numeric order."""
    meta = folder / "metadata"
    if not meta.is_dir():
        raise DataError(f"{meta}: missing directory; expected {LAYOUT}")
    files = sorted(meta.glob("*.npy"), key=lambda p: (not p.stem.isdigit(), int(p.stem)
                                                      if p.stem.isdigit() else 0, p.stem))
    if not files:
        raise DataError(f"{meta}: no <k>.npy metadata files; expected {LAYOUT}")
    rows = []
    for f in files:
        for num, line in enumerate(f.read_text().split("\n")[:-1], 1):  # LRA drops the last
            fields = line.split(" ")
            if len(fields) < 4 or fields[3] not in ("0", "1"):
                raise DataError(f"{f}:{num}: {line[:60]!r} is not 'imgs/<k> sample_<i>.png <i> "
                                f"<label 0|1> ...'; expected {LAYOUT}")
            rows.append((folder / fields[0] / fields[1], int(fields[3])))
    return rows


def _read_png(path: Path, size: int) -> np.ndarray | None:
    """uint8 [size, size], or None for a zero-byte file (LRA's 'empty image')."""
    if not path.is_file():
        raise DataError(f"{path}: missing image named in the metadata; expected {LAYOUT}")
    data = path.read_bytes()
    if not data:
        return None
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except OSError as e:
        raise DataError(f"{path}: not a PNG ({e}); expected {LAYOUT}") from None
    if im.mode != "L" or im.size != (size, size):
        raise DataError(f"{path}: {im.mode} {im.size[0]}x{im.size[1]}; expected 8-bit grey "
                        f"(mode L) {size}x{size}")
    return np.asarray(im, dtype=np.uint8)


def _tfds_cut(n: int, pct: int) -> int:
    return int(round(pct * n / 100))  # TFDS's 'closest' rounding of a percent boundary


def load_release(root: str | Path, *, size: int = 32, difficulty: str = "hard") -> TaskData:
    """One difficulty of LRA's Pathfinder release, split 80/10/10 then filtered (module doc)."""
    folder = _folder(Path(root), size, difficulty)
    if not folder.is_dir():
        raise DataError(f"{folder}: missing directory; expected {LAYOUT}")
    rows = read_metadata(folder)
    a, b = _tfds_cut(len(rows), 80), _tfds_cut(len(rows), 90)
    splits, skipped = {}, {"empty_files": 0, "all_black": 0}
    for name, part in (("train", rows[:a]), ("val", rows[a:b]), ("test", rows[b:])):
        images, labels = [], []
        for path, label in part:
            im = _read_png(path, size)
            if im is None or not im.any():
                skipped["empty_files" if im is None else "all_black"] += 1
                continue
            images.append(im)
            labels.append(label)
        grey = np.stack(images) if images else np.zeros((0, size, size), dtype=np.uint8)
        splits[name] = Split(pixels_to_tokens(grey), torch.tensor(labels, dtype=torch.int64))
    return TaskData(
        name=f"LRA Pathfinder release ({size}x{size}, {DIFFICULTIES[difficulty][0]})",
        source=str(folder), kind="classify", vocab_size=PIXEL_VOCAB, num_classes=2,
        seq_len=size * size, grid=(size, size), **splits,
        meta={"splits": f"metadata order (files by k, lines in order): [:{a}] train, [{a}:{b}] "
                        f"val, [{b}:] test (TFDS percent rounding), then empty images dropped",
              "skipped": skipped, "rows": len(rows)})


def build(*, root: str | Path | None = None, size: int = 32, difficulty: str = "hard",
          contour_length: int | None = None, n_train: int = SMALL_KNOBS["n_train"],
          n_val: int = SMALL_KNOBS["n_val"], n_test: int = SMALL_KNOBS["n_test"], seed: int = 0,
          distractors: int | None = None) -> TaskData:
    """The release from ``root``, else contours generated in memory (each split its own stream
    ``(seed, 0|1|2)``, labels exactly balanced when its size is even)."""
    if root is not None:
        return load_release(root, size=size, difficulty=difficulty)
    length = difficulty_length(difficulty) if contour_length is None else contour_length
    splits, dropped = {}, 0
    for stream, (name, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        grey, labels, d = generate(n, size=size, contour_length=length, distractors=distractors,
                                   seed=seed, stream=stream)
        splits[name] = Split(pixels_to_tokens(grey), torch.from_numpy(labels))
        dropped += d
    g = geometry(size)
    return TaskData(
        name=f"Pathfinder-like contours, generated after LRA's builder ({size}x{size}, "
             f"length {length})",
        source=f"generated (seed {seed})", kind="classify", vocab_size=PIXEL_VOCAB,
        num_classes=2, seq_len=size * size, grid=(size, size), **splits,
        meta={"splits": "generated separately: streams (seed, 0/1/2) for train/val/test",
              "geometry": asdict(g), "clearance": clearance(g), "contour_length": length,
              "distractors_dropped": dropped, "difficulty": difficulty})
