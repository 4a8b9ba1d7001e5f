"""Offline synthetic images: a CIFAR-100 stand-in (ID) and three OOD sets, generated in seconds.

The book's default data need no download. ``make_id`` draws 32x32 RGB images from a procedural family of
classes; ``make_ood`` draws the OOD sets that mirror the real ones:

* ``"near"``: held-out classes of the same family (class ids 1000+), as CIFAR-10 is for CIFAR-100;
* ``"digits"``: rendered house-number digits with neighbours at the sides (SVHN stand-in);
* ``"textures"``: clouds, checkerboards, stripes, dots and cracked cells (Textures/DTD stand-in).

A class c is a prototype built from discrete factors, a shape (c mod 5: ellipse, polygon, flower, ring, blobs),
a fill pattern (c mod 4: solid, stripes, checker, concentric rings) and a background (c mod 3: flat, gradient,
faint grating), plus seeded factors: four colours from a shared 12-colour palette, size, aspect,
orientation, position, number of sides or petals and pattern frequency. By the Chinese remainder theorem the
60 classes 0..59 have 60 different (shape, fill, background) triples, and any 5 consecutive ids already show
every value of every factor, so a small ID set (the smoke profile's K = 20) still varies in all three; the
near-OOD ids 1000..1009 repeat the triples of 40..49, new combinations of known factors for K <= 40.
Each image applies nuisance to its prototype: rotation (+-20 degrees), scale (0.8-1.2), shift (+-9 px),
mirroring, colour shifts of background and foreground, a clutter disc, contrast, brightness, channel gains, an
occluding patch and Gaussian noise. Classes share every factor with other classes, so neither the mean colour
nor any single factor separates them, and the within-class spread leaves neural collapse something to collapse.

Randomness: every generator is ``np.random.default_rng([seed, stream, class_id, part])`` with a fixed-length
key (SeedSequence maps ``[a, b]`` and ``[a, b, 0]`` to the same state). A class's prototype depends on
(seed, class) only, its images on (seed, split, class), and each random array is drawn in one call, so
generating fewer classes or fewer images per class returns a prefix of the larger set, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

OOD_KINDS: tuple[str, ...] = ("digits", "near", "textures")
SPLITS: dict[str, int] = {"train": 1, "test": 2}
_PROTO, _NEAR, _DIGITS, _TEXTURES = 0, 3, 4, 5          # stream ids of the seed key
NEAR_FIRST_CLASS, NEAR_CLASSES = 1000, 10
SIZE = 32

# Shared palette (P, 3): each class draws its background, foreground, accent and second background colour from it.
_PALETTE = np.array([
    [0.85, 0.20, 0.20], [0.95, 0.55, 0.15], [0.95, 0.85, 0.25], [0.30, 0.70, 0.30], [0.15, 0.60, 0.60],
    [0.20, 0.35, 0.80], [0.55, 0.30, 0.70], [0.90, 0.50, 0.70], [0.90, 0.90, 0.85], [0.20, 0.20, 0.22],
    [0.55, 0.35, 0.20], [0.60, 0.65, 0.70],
], dtype=np.float32)

# 5x7 bitmap font for the digits 0-9, one string of 7 rows per digit.
_FONT_ROWS = (
    (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
)


def make_id(split: str, num_classes: int = 100, per_class: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """In-distribution images (N, 32, 32, 3) uint8 and labels (N,) int64, N = num_classes * per_class.

    Class c's images come from prototype c with per-image nuisance; ``split`` is "train" or "test" (same
    prototypes, different draws). Images are ordered by class.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLITS)}.")
    _check_positive(num_classes=num_classes, per_class=per_class)
    _check_seed(seed)
    if num_classes > NEAR_FIRST_CLASS:
        raise ValueError(f"num_classes={num_classes} overlaps the near-OOD classes; use at most {NEAR_FIRST_CLASS}.")
    x = np.concatenate([_class_images(c, per_class, SPLITS[split], seed) for c in range(num_classes)])
    y = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)      # (N,)
    return x, y


def make_ood(kind: str, n: int = 1000, seed: int = 0) -> np.ndarray:
    """OOD images (n, 32, 32, 3) uint8; ``kind`` is one of ``OOD_KINDS`` ("digits", "near", "textures")."""
    makers = {"digits": _digits, "near": _near, "textures": _textures}
    if kind not in makers:
        raise ValueError(f"unknown OOD kind {kind!r}; use one of {list(OOD_KINDS)}.")
    _check_positive(n=n)
    _check_seed(seed)
    return makers[kind](n, seed)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value <= 0:
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")


def _check_seed(seed: int) -> None:
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}.")


def _rng(seed: int, stream: int, class_id: int, part: int) -> np.random.Generator:
    """The generator of one (seed, stream, class, part); streams: prototypes, train, test, near, digits, textures."""
    return np.random.default_rng([seed, stream, class_id, part])


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates X, Y in [-1, 1], each (1, 32, 32); one pixel is 1/16."""
    t = ((np.arange(SIZE, dtype=np.float32) + 0.5) / (SIZE / 2) - 1).astype(np.float32)
    return t[None, None, :].repeat(SIZE, 1), t[None, :, None].repeat(SIZE, 2)


def _rotate(x: np.ndarray, y: np.ndarray, angle: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates rotated by -angle (the frame of an object rotated by +angle)."""
    angle = np.asarray(angle, dtype=np.float32)                       # keeps float32 images float32
    c, s = np.cos(angle), np.sin(angle)
    return c * x + s * y, -s * x + c * y


def _soft(x: np.ndarray, sharpness: float = 3.0) -> np.ndarray:
    """Smooth square wave in [0, 1] from a signal in [-1, 1]."""
    return 0.5 + 0.5 * np.tanh(sharpness * x)


def _e3(t: np.ndarray) -> np.ndarray:
    """Per-image scalars (n,) as (n, 1, 1), to broadcast over (n, 32, 32) maps."""
    return t[:, None, None]


def _e4(t: np.ndarray) -> np.ndarray:
    """Per-image scalars (n,) as (n, 1, 1, 1), to broadcast over whole images."""
    return t[:, None, None, None]


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] (clipped) to uint8 pixels."""
    img = np.clip(img, 0, 1) * 255
    return np.rint(img, out=img).astype(np.uint8)


# ---------------------------------------------------------------- ID family


def _prototype(class_id: int, seed: int) -> dict:
    """Factors of class ``class_id``: shape, fill and background from the id, colours and geometry seeded.

    The discrete factors are (c mod 5, c mod 4, c mod 3), distinct for the 60 ids 0..59; every ID class shares
    each factor with other classes, and the near-OOD classes 1000+ are new draws of the same factors.
    """
    r = _rng(seed, _PROTO, class_id, 0)
    colours = _PALETTE[r.choice(len(_PALETTE), 4, replace=False)] + r.uniform(-0.07, 0.07, (4, 3))
    return dict(
        shape=class_id % 5, fill=class_id % 4, background=class_id % 3,
        colours=np.clip(colours, 0, 1).astype(np.float32),        # bg, fg, accent, bg2: (4, 3)
        radius=r.uniform(0.45, 0.7), aspect=r.uniform(0.45, 0.85), angle=r.uniform(0, np.pi),
        centre=r.uniform(-0.12, 0.12, 2).tolist(), sides=int(r.integers(3, 7)), amp=r.uniform(0.25, 0.45),
        width=r.uniform(0.12, 0.22), blobs=r.uniform(-0.45, 0.45, (3, 2)).tolist(),
        blob_r=r.uniform(0.2, 0.32, 3).tolist(),
        freq=r.uniform(1.5, 3.2), fill_angle=r.uniform(0, np.pi), bg_angle=r.uniform(0, 2 * np.pi),
    )


def _shape_sdf(p: dict, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Signed distance (approximate, negative inside) to the class shape in its own frame (a, b)."""
    R, r, ang = p["radius"], np.hypot(a, b), np.arctan2(b, a)
    if p["shape"] == 0:                                               # ellipse
        rx, ry = R, R * p["aspect"]
        return (np.hypot(a / rx, b / ry) - 1) * ry
    if p["shape"] == 1:                                               # regular polygon
        sector = 2 * np.pi / p["sides"]
        return r * np.cos(np.mod(ang, sector) - sector / 2) - R * math.cos(sector / 2)
    if p["shape"] == 2:                                               # flower with `sides` petals
        return r - R * (1 + p["amp"] * np.cos(p["sides"] * ang)) / (1 + p["amp"])
    if p["shape"] == 3:                                               # ring
        return np.abs(r - R * 0.8) - p["width"]
    d = [np.hypot(a - cx, b - cy) - rb for (cx, cy), rb in zip(p["blobs"], p["blob_r"], strict=True)]
    return np.minimum.reduce(d)                                       # two or three blobs


def _fill(p: dict, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Accent weight in [0, 1] of the fill pattern (solid, stripes, checker, concentric) in frame (a, b)."""
    a2, b2 = _rotate(a, b, p["fill_angle"])
    w = 2 * np.pi * p["freq"]
    if p["fill"] == 0:
        return np.zeros_like(a)
    if p["fill"] == 1:
        return _soft(np.sin(w * a2))
    if p["fill"] == 2:
        return _soft(2 * np.sin(w / 2 * a2) * np.sin(w / 2 * b2))
    return _soft(np.sin(w * np.hypot(a, b)))


def _background(p: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Weight in [0, 1] of the second background colour (flat, gradient, faint grating)."""
    u2, _ = _rotate(u, v, p["bg_angle"])
    if p["background"] == 0:
        return np.zeros_like(u)
    if p["background"] == 1:
        return np.clip(0.5 + 0.5 * u2, 0, 1)
    return 0.35 * _soft(np.sin(2 * np.pi * 1.5 * u2), 1.0)


# Columns of the per-image uniform draws U (n, 32) of an ID image.
_ROT, _SCALE, _SHIFT, _CONTRAST, _BRIGHT, _GAINS, _NOISE = 0, 1, slice(2, 4), 4, 5, slice(6, 9), 9
_OCC, _OCC_POS, _OCC_SIZE, _OCC_RGB = 10, slice(11, 13), slice(13, 15), slice(15, 18)
_BG_RGB, _FG_RGB, _DIS, _DIS_POS, _DIS_R, _DIS_RGB = slice(18, 21), slice(21, 24), 24, slice(25, 27), 27, slice(28, 31)
_FLIP = 31


def _class_images(class_id: int, n: int, split_id: int, seed: int) -> np.ndarray:
    """n images (n, 32, 32, 3) uint8 of class ``class_id``, drawn with the (seed, split, class) generators.

    Rendering runs channel-first, (n, 3, 32, 32), so numpy's inner loops run over pixels, not over 3 channels.
    """
    p = _prototype(class_id, seed)
    U = _rng(seed, split_id, class_id, 0).random((n, 32), dtype=np.float32)                       # (n, 32)
    noise = _rng(seed, split_id, class_id, 1).standard_normal((n, 3, SIZE, SIZE), dtype=np.float32)
    u, v = _sample_frame(U)                                                                       # (n, 32, 32)
    a, b = _rotate(u - p["centre"][0], v - p["centre"][1], p["angle"])
    mask = _inside(_shape_sdf(p, a, b))[:, None]                                                  # (n, 1, 32, 32)
    bg, fg, accent, bg2 = p["colours"]
    back = _mix(bg, bg2, _background(p, u, v)) + _ch(U[:, _BG_RGB] - 0.5) * 0.3                   # (n, 3, 32, 32)
    back = _distractor(back, U)
    front = _mix(fg, accent, _fill(p, a, b)) + _ch(U[:, _FG_RGB] - 0.5) * 0.3
    front -= back
    front *= mask
    front += back
    return _to_uint8(_nuisance(front, U, noise)).transpose(0, 2, 3, 1).copy()


def _ch(t: np.ndarray) -> np.ndarray:
    """Per-image colours (n, 3) as (n, 3, 1, 1), to broadcast over channel-first images."""
    return t[:, :, None, None]


def _inside(sdf: np.ndarray, edge: float = 0.035) -> np.ndarray:
    """Soft inside mask in [0, 1] from a signed distance (negative inside); ``edge`` about half a pixel."""
    return 1 / (1 + np.exp(np.clip(sdf / edge, -30, 30)))


def _sample_frame(U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image object frame (u, v), each (n, 32, 32): rotation +-0.35 rad, scale 0.8-1.2, shift +-9 px, mirror."""
    X, Y = _grid()
    theta, scale = _e3((U[:, _ROT] - 0.5) * 0.7), _e3(0.8 + 0.4 * U[:, _SCALE])
    tx, ty = (_e3(t) for t in ((U[:, _SHIFT] - 0.5) * 1.1).T)
    u, v = _rotate(X - tx, Y - ty, theta)
    mirror = _e3(np.where(U[:, _FLIP] < 0.5, -1, 1).astype(np.float32))
    return mirror * u / scale, v / scale


def _distractor(back: np.ndarray, U: np.ndarray) -> np.ndarray:
    """Background clutter: with probability 0.5, a disc of random colour and radius 3-6 px at a random place."""
    X, Y = _grid()
    x0, y0 = (_e3(t) for t in (U[:, _DIS_POS] * 2 - 1).T)
    disc = _inside(np.hypot(X - x0, Y - y0) - _e3(0.2 + 0.2 * U[:, _DIS_R])) * _e3(U[:, _DIS] < 0.5)
    return back + disc[:, None] * (_ch(U[:, _DIS_RGB]) - back)


def _mix(c0: np.ndarray, c1: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Colour c0 + w (c1 - c0) per pixel: colours (3,), weight (n, 32, 32) -> (n, 3, 32, 32)."""
    return c0[:, None, None] + w[:, None] * (c1 - c0)[:, None, None]


def _nuisance(img: np.ndarray, U: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Contrast k about the image mean m, channel gains g and brightness b, (m + k (img - m)) g + b; then an
    occluding patch (probability 0.2) and Gaussian noise. Works in place on ``img`` and ``noise``, (n, 3, 32, 32)."""
    m = img.mean(axis=(1, 2, 3), keepdims=True)                                                    # (n, 1, 1, 1)
    k, g = 0.7 + 0.5 * _e4(U[:, _CONTRAST]), 0.8 + 0.4 * _ch(U[:, _GAINS])
    img *= k * g
    img += (1 - k) * m * g + (_e4(U[:, _BRIGHT]) - 0.5) * 0.24
    X, Y = _grid()
    (x0, y0), (hw, hh) = (U[:, _OCC_POS] * 1.6 - 0.8).T, (0.1 + 0.1 * U[:, _OCC_SIZE]).T           # 3-6 px patch
    patch = (np.abs(X - _e3(x0)) < _e3(hw)) & (np.abs(Y - _e3(y0)) < _e3(hh)) & _e3(U[:, _OCC] < 0.2)
    np.copyto(img, _ch(U[:, _OCC_RGB]), where=patch[:, None])
    noise *= 0.02 + 0.05 * _e4(U[:, _NOISE])
    img += noise
    return img


def _near(n: int, seed: int) -> np.ndarray:
    """Near OOD: classes 1000..1009 of the ID family, interleaved (image i belongs to held-out class i mod 10)."""
    out = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for k in range(min(n, NEAR_CLASSES)):
        out[k::NEAR_CLASSES] = _class_images(NEAR_FIRST_CLASS + k, len(range(k, n, NEAR_CLASSES)), _NEAR, seed)
    return out


# ---------------------------------------------------------------- digits (SVHN stand-in)


def _font() -> np.ndarray:
    """Bitmap font with a zero border, (10, 9, 7) float32."""
    glyphs = np.array([[[ch == "#" for ch in row] for row in rows] for rows in _FONT_ROWS], dtype=np.float32)
    return np.pad(glyphs, ((0, 0), (1, 1), (1, 1)))


def _bilinear(table: np.ndarray, idx: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear lookup table[idx, rows, cols] at fractional positions, clamped to the edges; (n, H, W)."""
    H, W = table.shape[1:]
    rows, cols = np.clip(rows, 0, H - 1), np.clip(cols, 0, W - 1)
    r0, c0 = np.minimum(rows.astype(np.int64), H - 2), np.minimum(cols.astype(np.int64), W - 2)
    fr, fc = rows - r0, cols - c0
    i = idx[:, None, None]
    top = table[i, r0, c0] * (1 - fc) + table[i, r0, c0 + 1] * fc
    bottom = table[i, r0 + 1, c0] * (1 - fc) + table[i, r0 + 1, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def _glyph(digit: np.ndarray, cx: np.ndarray, cy: np.ndarray, h: np.ndarray, w: np.ndarray,
           shear: np.ndarray, thickness: np.ndarray) -> np.ndarray:
    """Ink in [0, 1], (n, 32, 32), of one digit per image centred at pixel (cx, cy) with height h, width w."""
    X = np.arange(SIZE, dtype=np.float32)[None, None, :] + 0.5
    Y = np.arange(SIZE, dtype=np.float32)[None, :, None] + 0.5
    row = (Y - _e3(cy)) / _e3(h / 7) + 3.5 + 0.5                        # padded-bitmap row of the pixel centre
    col = (X - _e3(cx) - _e3(shear) * (Y - _e3(cy))) / _e3(w / 5) + 2.5 + 0.5
    val = _bilinear(_font(), digit, row, col)
    return 1 / (1 + np.exp(-12 * (val - _e3(thickness))))


def _digits(n: int, seed: int) -> np.ndarray:
    """SVHN stand-in: a centred digit 0-9 with partial neighbours, coloured background, lighting, blur, noise."""
    U = _rng(seed, _DIGITS, 0, 0).random((n, 24)).astype(np.float32)                              # (n, 24)
    noise = _rng(seed, _DIGITS, 0, 1).standard_normal((n, SIZE, SIZE, 3), dtype=np.float32)
    d = (U[:, :3] * 10).astype(np.int64)                            # centre, left, right digits (n, 3)
    h = 15 + 9 * U[:, 3]
    w = h * 5 / 7 * (0.75 + 0.35 * U[:, 4])
    cx, cy = 16 + (U[:, 5] - 0.5) * 5, 16 + (U[:, 6] - 0.5) * 4
    shear, gap, thick = (U[:, 7] - 0.5) * 0.4, w * (1.15 + 0.3 * U[:, 8]), 0.35 + 0.25 * U[:, 9]
    ink = _glyph(d[:, 0], cx, cy, h, w, shear, thick)
    for j, sign, present in ((1, -1, U[:, 10] < 0.7), (2, 1, U[:, 11] < 0.7)):
        ink = np.maximum(ink, present[:, None, None] * _glyph(d[:, j], cx + sign * gap, cy, h, w, shear, thick))
    bg = U[:, 12:15]
    lum = bg.mean(1, keepdims=True)
    target = np.where(lum < 0.5, 0.85 + 0.15 * U[:, 15:18], 0.15 * U[:, 15:18])   # light ink on dark, and vice versa
    fg = bg + (0.45 + 0.45 * U[:, 18:19]) * (target - bg)                              # (n, 3)
    img = bg[:, None, None] + ink[..., None] * (fg - bg)[:, None, None]
    X, Y = _grid()
    light = 1 + 0.25 * ((U[:, 19, None, None] - 0.5) * X + (U[:, 20, None, None] - 0.5) * Y)  # (n, 32, 32)
    img = _blur(img * light[..., None], U[:, 21] < 0.5)
    return _to_uint8(img + (0.01 + 0.05 * U[:, 22, None, None, None]) * noise)


def _blur(img: np.ndarray, which: np.ndarray) -> np.ndarray:
    """[1, 2, 1] / 4 separable blur of the images selected by the boolean ``which`` (n,); edges replicated."""
    sub = img[which]
    for axis in (1, 2):
        pad = np.pad(sub, [(1, 1) if ax == axis else (0, 0) for ax in range(4)], mode="edge")
        lo, hi = np.take(pad, range(0, SIZE), axis), np.take(pad, range(2, SIZE + 2), axis)
        sub = 0.25 * lo + 0.5 * sub + 0.25 * hi
    out = img.copy()
    out[which] = sub
    return out


# ---------------------------------------------------------------- textures (DTD stand-in)

_OCTAVES = (4, 8, 16)


def _upsample(grid: np.ndarray) -> np.ndarray:
    """Smooth value-noise upsampling of (n, g, g) grids to (n, 32, 32)."""
    g = grid.shape[1]
    pos = np.clip((np.arange(SIZE, dtype=np.float32) + 0.5) * g / SIZE - 0.5, 0, g - 1)
    i0 = np.minimum(pos.astype(np.int64), g - 2)
    f = pos - i0
    f = f * f * (3 - 2 * f)                                           # smoothstep weights
    rows = grid[:, i0] * (1 - f)[None, :, None] + grid[:, i0 + 1] * f[None, :, None]               # (n, 32, g)
    return rows[:, :, i0] * (1 - f) + rows[:, :, i0 + 1] * f


def _fbm(G: np.ndarray) -> np.ndarray:
    """Fractal value noise from the octave grids packed in G (n, 336), normalised to [0, 1] per image."""
    total, start = 0.0, 0
    for o, g in enumerate(_OCTAVES):
        total = total + 0.5**o * _upsample(G[:, start:start + g * g].reshape(-1, g, g))
        start += g * g
    lo, hi = total.min(axis=(1, 2), keepdims=True), total.max(axis=(1, 2), keepdims=True)
    return (total - lo) / (hi - lo + 1e-6)


def _texture_pattern(kind: int, U: np.ndarray, clouds: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Pattern in [0, 1], (m, 32, 32): 0 clouds, 1 checkerboard, 2 stripes, 3 dots, 4 cracked cells."""
    X, Y = _grid()
    u, v = _rotate(X * 16, Y * 16, _e3(U[:, 0] * np.pi))               # pixel units, random orientation
    period = _e3(3 + 9 * U[:, 1])
    if kind == 0:
        return clouds
    if kind == 1:
        return _soft(2 * np.sin(np.pi * u / period) * np.sin(np.pi * v / period), 2.0)
    if kind == 2:
        warp = _e3(U[:, 2] * 4) * (clouds - 0.5)
        return _soft(np.sin(2 * np.pi * u / period + warp), 1 + _e3(U[:, 3]) * 4)
    if kind == 3:
        shift = _e3(np.floor(U[:, 2] * 2)) * 0.5 * np.floor(v / period)   # half the images on a hexagonal lattice
        du, dv = np.mod(u / period + shift, 1) - 0.5, np.mod(v / period, 1) - 0.5
        return _soft((_e3(0.2 + 0.2 * U[:, 3]) - np.hypot(du, dv)) * 10, 2.0)
    return _cells(cells, _e3(0.5 + 1.5 * U[:, 2]))


def _cells(cells: np.ndarray, crack: np.ndarray) -> np.ndarray:
    """Voronoi cells with dark cracks: points and cell shades in ``cells`` (m, 16, 3), crack width in px."""
    X, Y = _grid()
    px, py = (cells[..., i, None, None] for i in range(2))              # each (m, 16, 1, 1)
    dist = np.hypot(X[:, None] * 16 - (px * 40 - 20), Y[:, None] * 16 - (py * 40 - 20))        # (m, 16, 32, 32)
    order = np.argsort(dist, axis=1)[:, :2]
    d1, d2 = np.take_along_axis(dist, order[:, :1], 1)[:, 0], np.take_along_axis(dist, order[:, 1:], 1)[:, 0]
    nearest = order[:, 0].reshape(len(cells), -1)                                             # (m, 1024)
    fill = 0.3 + 0.7 * np.take_along_axis(cells[..., 2], nearest, 1).reshape(-1, SIZE, SIZE)
    return fill * _soft((d2 - d1 - crack) / 1.0, 2.0)


def _textures(n: int, seed: int) -> np.ndarray:
    """DTD stand-in: one of five procedural patterns per image, random colours, lighting by fBm, noise."""
    U = _rng(seed, _TEXTURES, 0, 0).random((n, 16)).astype(np.float32)                            # (n, 16)
    G = _rng(seed, _TEXTURES, 0, 1).random((n, sum(g * g for g in _OCTAVES))).astype(np.float32)  # (n, 336)
    cells = _rng(seed, _TEXTURES, 0, 2).random((n, 16, 3)).astype(np.float32)                      # (n, 16, 3)
    noise = _rng(seed, _TEXTURES, 0, 3).standard_normal((n, SIZE, SIZE, 3), dtype=np.float32)
    clouds = _fbm(G)                                                                               # (n, 32, 32)
    kind = (U[:, 4] * 5).astype(np.int64)
    pattern = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for k in range(5):
        sel = kind == k
        pattern[sel] = _texture_pattern(k, U[sel], clouds[sel], cells[sel])
    c0, c1 = U[:, None, None, 5:8], U[:, None, None, 8:11]
    img = c0 + pattern[..., None] * (c1 - c0)
    light = 1 + 0.5 * _e4(U[:, 11]) * (clouds[..., None] - 0.5) * (kind[:, None, None, None] != 0)
    return _to_uint8(img * light + (0.01 + 0.04 * _e4(U[:, 12])) * noise)


