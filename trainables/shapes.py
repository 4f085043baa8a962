"""`shapes`: a generated 32x32 RGB dataset of ten shapes on cluttered backgrounds (SPEC §11).

Each image holds one shape whose kind is the class (`SHAPE_NAMES[label]`, fixed): radius 6-9 px,
random position, rotated by at most ±20°, antialiased, in a random colour whose luminance
contrasts with the background's: half the backgrounds are dark and carry a light shape, half
light with a dark one, at least `MIN_CONTRAST` (0.45) apart in luminance. (At 0.3, L-inf 8/255
PGD training of the small models stayed near chance for several epochs: docs/shapes_study/.)
The background mixes two similar random colours by 4-octave value noise, plus 15% coloured value
noise; under the shape lie 3 soft Gaussian blobs and 2 thin strokes; Gaussian pixel noise (sigma
0.03) goes on top.

Drawing is pure tensor code on a pixel grid, vectorised over the batch: every shape is a signed
distance field in its own rotated, radius-normalised frame, and its coverage of a pixel is the
distance clamped to a one-pixel ramp (antialiasing). Nothing is downloaded.

Determinism: images are generated in chunks of `CHUNK` (1000); chunk k draws from a torch
generator seeded by `SeedSequence([seed, k])` and always draws a whole chunk's parameters, so the
same seed gives bit-identical images and the first n images of a set do not depend on its size
(4,000 images are a prefix of 8,000). Labels cycle, `label[i] = i % 10`: every class has
`n // 10` or `n // 10 + 1` images. Train and test sets differ only by their seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from trainables.config import GENERATED_DATASETS, MAX_GENERATED_IMAGES
from trainables.errors import ConfigError

__all__ = ["SHAPE_NAMES", "IMAGE_SIZE", "CHUNK", "MAX_IMAGES", "TRAIN_SEED", "TEST_SEED",
           "N_TRAIN", "N_TEST", "MEAN", "STD", "GENERATOR_VERSION", "generate_shapes",
           "provenance", "shape_coverage"]

SHAPE_NAMES = ("disc", "square", "triangle", "plus", "ring", "star", "crescent", "bar", "L", "T")
IMAGE_SIZE = 32
CHUNK = 1000
MAX_IMAGES = MAX_GENERATED_IMAGES
# Bump whenever a change to the drawing code changes any image: it enters the data hash, so a
# model trained on other images is never compared with these. v2: dark/light backgrounds and
# luminance contrast >= 0.45 (v1: 0.3, background luminance anywhere in 0.1-0.9).
GENERATOR_VERSION = 2
TRAIN_SEED, TEST_SEED = 20261201, 20261202  # fixed: the sets never depend on any run's seed
N_TRAIN, N_TEST = GENERATED_DATASETS["shapes"]  # the default sizes (SPEC §11)
# Per-channel statistics of the default training set (the model's Normalize); constants, so a
# model's normalisation does not depend on n_train. tests/test_shapes.py checks they still fit.
MEAN, STD = (0.500, 0.500, 0.500), (0.260, 0.260, 0.266)
RADIUS = (6.0, 9.0)  # px
MAX_ROTATION = math.radians(20.0)
NOISE_SIGMA = 0.03
COLOUR_NOISE = 0.15  # share of the background that is coloured value noise
MIN_CONTRAST = 0.45  # |luminance(shape) - mean luminance(background)| at least this
BG_LUMA = ((0.08, 0.38), (0.62, 0.92))  # background luminance range: dark, light
N_BLOBS, N_STROKES = 3, 2
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights


# --- signed distance fields in the shape's frame (unit radius; < 0 inside) ----------------------


def _box(u: torch.Tensor, v: torch.Tensor, hx: float, hy: float,
         cx: float = 0.0, cy: float = 0.0) -> torch.Tensor:
    """Exact SDF of an axis-aligned box with half-sizes (hx, hy) centred at (cx, cy)."""
    qx, qy = (u - cx).abs() - hx, (v - cy).abs() - hy
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    return outside + torch.maximum(qx, qy).clamp(max=0)


def _disc(u, v, r=1.0, cx=0.0, cy=0.0):
    return torch.sqrt((u - cx) ** 2 + (v - cy) ** 2) - r


def _triangle(u, v):
    """Equilateral triangle, circumradius 1, apex up (v grows downwards on the image)."""
    # Max of the three edge half-planes: exact near the edges, which is all antialiasing needs.
    s3 = math.sqrt(3.0)
    e1 = v - 0.5  # bottom edge
    e2 = (s3 * u - v) / 2 - 0.5
    e3 = (-s3 * u - v) / 2 - 0.5
    return torch.maximum(torch.maximum(e1, e2), e3)


def _star(u, v, rf: float = 0.45):
    """Five-pointed star, outer radius 1, inner radius ~rf (Inigo Quilez's exact sdStar5)."""
    k1x, k1y = 0.809016994375, -0.587785252292
    k2x, k2y = -k1x, k1y
    x, y = u.abs(), -v  # point up
    d = 2 * (k1x * x + k1y * y).clamp(min=0)
    x, y = x - d * k1x, y - d * k1y
    d = 2 * (k2x * x + k2y * y).clamp(min=0)
    x, y = x - d * k2x, y - d * k2y
    x, y = x.abs(), y - 1.0
    bax, bay = rf * -k1y, rf * k1x - 1.0
    h = ((x * bax + y * bay) / (bax * bax + bay * bay)).clamp(0.0, 1.0)
    dist = torch.sqrt((x - bax * h) ** 2 + (y - bay * h) ** 2)
    return dist * torch.sign(y * bax - x * bay)


def _sdf(cls: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance (unit radius) of shape `cls` at frame coordinates (u, v)."""
    name = SHAPE_NAMES[cls]
    if name == "disc":
        return _disc(u, v)
    if name == "square":
        return _box(u, v, 0.72, 0.72)
    if name == "triangle":
        return _triangle(u, v - 0.15)  # centre the triangle's bounding box
    if name == "plus":
        return torch.minimum(_box(u, v, 0.95, 0.27), _box(u, v, 0.27, 0.95))
    if name == "ring":
        return (torch.sqrt(u * u + v * v) - 0.72).abs() - 0.24
    if name == "star":
        return _star(u, v + 0.05)
    if name == "crescent":
        return torch.maximum(_disc(u, v), -_disc(u, v, 0.78, cx=0.5, cy=-0.12))
    if name == "bar":
        return _box(u, v, 0.98, 0.25)
    if name == "L":
        return torch.minimum(_box(u, v, 0.24, 0.9, cx=-0.4),
                             _box(u, v, 0.7, 0.24, cx=0.06, cy=0.66))
    if name == "T":
        return torch.minimum(_box(u, v, 0.85, 0.24, cy=-0.62), _box(u, v, 0.24, 0.86, cy=0.1))
    raise AssertionError(name)


def shape_coverage(cls: int, cx: torch.Tensor, cy: torch.Tensor, radius: torch.Tensor,
                   angle: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Antialiased coverage in [0, 1] of one shape kind, for a batch of placements.

    Args:
        cls: class index into `SHAPE_NAMES`.
        cx, cy, radius, angle: (B,) centre (px, pixel centres at i + 0.5), radius (px), rotation.
        size: image side.

    Returns:
        float32 (B, size, size).
    """
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    dx = grid.view(1, 1, -1) - cx.view(-1, 1, 1)  # (B, 1, W)
    dy = grid.view(1, -1, 1) - cy.view(-1, 1, 1)  # (B, H, 1)
    c, s = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    r = radius.view(-1, 1, 1)
    u, v = (c * dx + s * dy) / r, (-s * dx + c * dy) / r  # rotate by -angle into the frame
    return (0.5 - _sdf(cls, u, v) * r).clamp(0.0, 1.0)  # distance in px -> 1-px ramp


# --- background ---------------------------------------------------------------------------------


def _value_noise(b: int, n: int, channels: int, cells: tuple[int, ...], gen: torch.Generator,
                 size: int) -> torch.Tensor:
    """Sum of bilinear value-noise octaves (amplitude halves per octave), rescaled to [0, 1].

    Draws lattices for b images (the chunk) and renders the first n.
    """
    out = torch.zeros(n, channels, size, size)
    amp, total = 1.0, 0.0
    for c in cells:
        lattice = torch.rand(b, channels, c + 1, c + 1, generator=gen)[:n]
        out += amp * F.interpolate(lattice, size=(size, size), mode="bilinear", align_corners=True)
        total += amp
        amp /= 2
    out /= total
    lo = out.amin(dim=(2, 3), keepdim=True)
    hi = out.amax(dim=(2, 3), keepdim=True)
    return (out - lo) / (hi - lo).clamp(min=1e-6)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """Luminance of (..., 3) colours or (B, 3, H, W) images along dim -1 / 1."""
    w = torch.tensor(_LUMA)
    return (x * w).sum(-1) if x.shape[-1] == 3 else (x * w.view(1, 3, 1, 1)).sum(1)


def _with_luma(colour: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Move (B, 3) colours towards black or white until their luminance is `target` (B,)."""
    lum = _luma(colour).clamp(1e-4, 1 - 1e-4)
    t = target.view(-1, 1)
    darker = colour * (t / lum.view(-1, 1))
    lighter = 1 - (1 - colour) * ((1 - t) / (1 - lum.view(-1, 1)))
    return torch.where(t < lum.view(-1, 1), darker, lighter).clamp(0, 1)


def _blend(img: torch.Tensor, alpha: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """img (B, 3, H, W) over-painted with colour (B, 3) at per-pixel alpha (B, H, W)."""
    a = alpha.unsqueeze(1)
    return img * (1 - a) + colour.view(-1, 3, 1, 1) * a


def _segment_distance(px, py, ax, ay, bx, by):
    """Distance (px) of pixel centres to segments a-b; inputs broadcast to (B, H, W)."""
    ex, ey = bx - ax, by - ay
    h = (((px - ax) * ex + (py - ay) * ey) / (ex * ex + ey * ey).clamp(min=1e-6)).clamp(0, 1)
    return torch.sqrt((px - ax - h * ex) ** 2 + (py - ay - h * ey) ** 2)


def _background(b: int, n: int, gen: torch.Generator,
                size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two similar colours mixed by 4-octave value noise, 15% coloured noise, blobs, strokes.

    Draws the parameters of b images (the chunk) and renders the first n. Half the backgrounds
    are dark, half light (luminance in `BG_LUMA`), so every shape can contrast strongly.

    Returns:
        (images (n, 3, H, W), light (n,) bool).
    """
    light = (torch.rand(b, generator=gen) < 0.5)[:n]
    (dlo, dhi), (llo, lhi) = BG_LUMA
    u = torch.rand(b, generator=gen)[:n]
    luma = torch.where(light, llo + (lhi - llo) * u, dlo + (dhi - dlo) * u)
    c1 = _with_luma(torch.rand(b, 3, generator=gen)[:n], luma)
    c2 = (c1 + (torch.rand(b, 3, generator=gen)[:n] - 0.5) * 0.3).clamp(0, 1)
    mix = _value_noise(b, n, 1, (2, 4, 8, 16), gen, size)
    img = c1.view(n, 3, 1, 1) * (1 - mix) + c2.view(n, 3, 1, 1) * mix
    img = (1 - COLOUR_NOISE) * img + COLOUR_NOISE * _value_noise(b, n, 3, (4, 8), gen, size)
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    px, py = grid.view(1, 1, -1), grid.view(1, -1, 1)
    blob = torch.rand(b, N_BLOBS, 4, generator=gen)[:n]  # x, y, sigma, alpha
    blob_colour = torch.rand(b, N_BLOBS, 3, generator=gen)[:n]
    for k in range(N_BLOBS):
        bx, by = (blob[:, k, 0] * size).view(-1, 1, 1), (blob[:, k, 1] * size).view(-1, 1, 1)
        sigma = (1.5 + 2.5 * blob[:, k, 2]).view(-1, 1, 1)
        alpha = (0.3 + 0.4 * blob[:, k, 3]).view(-1, 1, 1)
        g = torch.exp(-((px - bx) ** 2 + (py - by) ** 2) / (2 * sigma**2))
        img = _blend(img, alpha * g, blob_colour[:, k])
    stroke = torch.rand(b, N_STROKES, 6, generator=gen)[:n]  # x, y, length, angle, width, alpha
    stroke_colour = torch.rand(b, N_STROKES, 3, generator=gen)[:n]
    for k in range(N_STROKES):
        ax, ay = (stroke[:, k, 0] * size).view(-1, 1, 1), (stroke[:, k, 1] * size).view(-1, 1, 1)
        length = (8 + 12 * stroke[:, k, 2]).view(-1, 1, 1)
        theta = (stroke[:, k, 3] * 2 * math.pi).view(-1, 1, 1)
        bx, by = ax + length * torch.cos(theta), ay + length * torch.sin(theta)
        half = (0.4 + 0.35 * stroke[:, k, 4]).view(-1, 1, 1)  # half-width 0.4-0.75 px
        alpha = (0.5 + 0.4 * stroke[:, k, 5]).view(-1, 1, 1)
        cov = (half + 0.5 - _segment_distance(px, py, ax, ay, bx, by)).clamp(0, 1)
        img = _blend(img, alpha * cov, stroke_colour[:, k])
    return img.clamp(0, 1), light


# --- one chunk, then a whole set ----------------------------------------------------------------


def _chunk(seed: int, index: int, n: int, size: int) -> torch.Tensor:
    """Images of chunk `index` (its first n of CHUNK); labels are `arange(n) % 10`."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    b = CHUNK
    img, light = _background(b, n, gen, size)
    radius = RADIUS[0] + (RADIUS[1] - RADIUS[0]) * torch.rand(b, generator=gen)
    margin = radius + 1.0
    cx = margin + (size - 2 * margin) * torch.rand(b, generator=gen)
    cy = margin + (size - 2 * margin) * torch.rand(b, generator=gen)
    angle = (2 * torch.rand(b, generator=gen) - 1) * MAX_ROTATION
    raw = torch.rand(b, 3, generator=gen)
    shade = torch.rand(b, generator=gen)[:n]
    noise = torch.randn(b, 3, size, size, generator=gen) * NOISE_SIGMA
    radius, cx, cy, angle, raw = radius[:n], cx[:n], cy[:n], angle[:n], raw[:n]
    bg_luma = _luma(img).mean(dim=(1, 2))
    # Dark shape on a light background or the reverse, at least MIN_CONTRAST away in luminance
    # (where clutter has moved the background's mean too far, the extreme luminance).
    dark_top = (bg_luma - MIN_CONTRAST).clamp(min=0.02)
    light_bottom = (bg_luma + MIN_CONTRAST).clamp(max=0.98)
    target = torch.where(light, 0.02 + (dark_top - 0.02) * shade,
                         light_bottom + (0.98 - light_bottom) * shade)
    colour = _with_luma(raw, target)
    labels = torch.arange(n) % len(SHAPE_NAMES)
    for cls in range(len(SHAPE_NAMES)):
        idx = (labels == cls).nonzero().squeeze(1)
        if idx.numel():
            cov = shape_coverage(cls, cx[idx], cy[idx], radius[idx], angle[idx], size)
            img[idx] = _blend(img[idx], cov, colour[idx])
    return (img + noise[:n]).clamp(0, 1).contiguous()


def provenance(n_train: int, n_test: int) -> str:
    """What the images of a (train, test) pair of sets depend on, for the data hash."""
    return (f"shapes generator v{GENERATOR_VERSION} size {IMAGE_SIZE} n_train {n_train} "
            f"train_seed {TRAIN_SEED} n_test {n_test} test_seed {TEST_SEED}")


def generate_shapes(n: int, seed: int, *,
                    size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate n images of the shapes dataset.

    Args:
        n: number of images, in [1, MAX_IMAGES].
        seed: the set's seed (a non-negative integer); train and test use different ones.
        size: image side in px (32; the shapes' radii are fixed in px).

    Returns:
        (X float32 (n, 3, size, size) in [0, 1], y int64 (n,) with y[i] = i % 10).

    Raises:
        ConfigError: n or seed out of range.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise ConfigError(f"n must be an integer in [1, {MAX_IMAGES}], got n={n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got seed={seed!r}")
    # One thread: these small element-wise ops run 3-4x slower spread over 2 busy cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parts = [_chunk(seed, k, min(CHUNK, n - k * CHUNK), size)
                 for k in range(-(-n // CHUNK))]
    finally:
        torch.set_num_threads(threads)
    return torch.cat(parts), torch.arange(n, dtype=torch.int64) % len(SHAPE_NAMES)
