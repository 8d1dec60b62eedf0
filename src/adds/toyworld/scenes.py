"""Synthetic multi-label scenes: coloured shapes on noisy, textured backgrounds.

The vocabulary composes: every concept is a colour word and a shape word ("red circle"), so concepts that a
model never saw as training labels still exist as text and share words with seen ones -- the situation of
NUS-WIDE zero-shot, where CLIP has seen every word on the web but the decoder only the 925 seen tags.

* :func:`render_objects` -- single-object images (the tiny CLIP's "web" images and the single-label training
  set of the single-to-multi experiment).
* :func:`render_scenes` -- multi-object scenes (1-4 objects at random positions and scales), any resolution;
  the ground truth is the set of concepts present.

Everything is vectorised over the batch with signed-distance masks (soft 1-pixel edges), so thousands of images
render per second on a CPU, and is deterministic given a :class:`torch.Generator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["COLOURS", "SHAPES", "Vocabulary", "VOCABULARY", "render_objects", "render_scenes", "SceneConfig"]

#: Colour words and their RGB values (saturated, so they stand out from the desaturated backgrounds).
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.60, 0.15, 0.80),
    "orange": (1.00, 0.55, 0.05),
    "cyan": (0.10, 0.85, 0.90),
    "white": (0.98, 0.98, 0.98),
}
#: Shape words, each drawn by a signed-distance function in :func:`_shape_distance`.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "bar")


@dataclass(frozen=True)
class Vocabulary:
    """The concept vocabulary: ``colour x shape`` pairs, concept ``i`` = ``(colour_of[i], shape_of[i])``."""

    colours: tuple[str, ...]
    shapes: tuple[str, ...]

    @property
    def concepts(self) -> list[str]:
        """Label words, e.g. ``"red circle"``, in colour-major order."""
        return [f"{colour} {shape}" for colour in self.colours for shape in self.shapes]

    def __len__(self) -> int:
        return len(self.colours) * len(self.shapes)

    def split(self, index: int) -> tuple[int, int]:
        """Concept index -> (colour index, shape index)."""
        return divmod(index, len(self.shapes))

    def zero_shot_split(self) -> tuple[list[int], list[int]]:
        """A fixed seen / unseen split: concept (c, s) is unseen when ``(c + s) % 4 == 0``.

        A quarter of the concepts are unseen, and every colour word and every shape word still occurs in some
        seen concept: unseen labels are new *combinations* of known words, as NUS-WIDE's unseen concepts are new
        labels made of words CLIP knows.
        """
        seen, unseen = [], []
        for index in range(len(self)):
            colour, shape = self.split(index)
            (unseen if (colour + shape) % 4 == 0 else seen).append(index)
        return seen, unseen


VOCABULARY = Vocabulary(tuple(COLOURS), SHAPES)


@dataclass(frozen=True)
class SceneConfig:
    """How multi-object scenes look.

    Attributes:
        size: image side in pixels.
        grid: objects sit in distinct cells of a ``grid x grid`` layout (jittered), so they rarely hide each other.
        min_objects / max_objects: objects per scene (uniform; at most ``grid ** 2``).
        min_scale / max_scale: object radius as a fraction of the image side.
        noise: amplitude of the background texture.
    """

    size: int = 64
    grid: int = 3
    min_objects: int = 1
    max_objects: int = 4
    min_scale: float = 0.09
    max_scale: float = 0.16
    noise: float = 0.12

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= self.grid**2:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= grid**2, got {self}")


def _background(count: int, size: int, noise: float, generator: torch.Generator) -> Tensor:
    """Desaturated textured backgrounds ``(N, 3, S, S)``: a tinted grey, smooth blobs, stripes and pixel noise."""
    base = 0.35 + 0.25 * torch.rand(count, 1, 1, 1, generator=generator)
    tint = 0.06 * (torch.rand(count, 3, 1, 1, generator=generator) - 0.5)
    coarse = torch.rand(count, 1, 6, 6, generator=generator) - 0.5
    blobs = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    axis = torch.linspace(0, 1, size)
    angle = math.pi * torch.rand(count, 1, 1, generator=generator)
    frequency = 4 + 8 * torch.rand(count, 1, 1, generator=generator)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    stripes = torch.sin(2 * math.pi * frequency * (xs * torch.cos(angle) + ys * torch.sin(angle)))  # (N, S, S)
    pixels = torch.rand(count, 1, size, size, generator=generator) - 0.5
    image = base + tint + noise * (1.5 * blobs + 0.5 * stripes.unsqueeze(1) + 0.8 * pixels)
    return image.expand(count, 3, size, size).clamp(0.0, 1.0)


def _shape_distance(shape: Tensor, dx: Tensor, dy: Tensor, radius: Tensor) -> Tensor:
    """Signed distance (pixels, negative inside) of each pixel to each object's shape.

    ``shape`` (M,) shape indices; ``dx``, ``dy`` (M, S, S) pixel offsets from the object centre (y down);
    ``radius`` (M, 1, 1) in pixels.
    """
    r = radius
    ax, ay = dx.abs(), dy.abs()
    distance = torch.empty_like(dx)
    circle = torch.sqrt(dx**2 + dy**2) - r
    square = torch.maximum(ax, ay) - 0.8 * r
    # Upward triangle: below the apex line, above the base, within sides that widen downwards (y points down).
    triangle = torch.maximum(dy - 0.75 * r, 0.85 * (ax - 0.62 * (dy + 0.9 * r)))
    arm = 0.28 * r
    cross = torch.minimum(torch.maximum(ax - arm, ay - r), torch.maximum(ay - arm, ax - r))
    ring = (torch.sqrt(dx**2 + dy**2) - 0.72 * r).abs() - 0.28 * r
    bar = torch.maximum(ax - r, ay - 0.32 * r)
    for index, values in enumerate((circle, square, triangle, cross, ring, bar)):
        chosen = shape == index
        distance[chosen] = values[chosen]
    return distance


def _paint(images: Tensor, owner: Tensor, colours: Tensor, shapes: Tensor, centres: Tensor, radii: Tensor) -> None:
    """Draw objects into ``images`` in place. ``owner`` (M,) sorted image index of each object; ``colours`` (M, 3);
    ``shapes`` (M,) shape index; ``centres`` (M, 2) (y, x) pixels; ``radii`` (M,) pixels."""
    size = images.shape[-1]
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dy = coords.view(1, size, 1) - centres[:, 0].view(-1, 1, 1)  # (M, S, 1)
    dx = coords.view(1, 1, size) - centres[:, 1].view(-1, 1, 1)  # (M, 1, S)
    dy, dx = dy.expand(-1, size, size), dx.expand(-1, size, size)
    distance = _shape_distance(shapes, dx, dy, radii.view(-1, 1, 1))
    alpha = (0.5 - distance).clamp(0.0, 1.0).unsqueeze(1)  # (M, 1, S, S) soft 1-pixel edge
    paint = alpha * colours.view(-1, 3, 1, 1)  # (M, 3, S, S)
    # Objects of one image are painted in order (later on top): one vectorised pass per rank within an image.
    counts = torch.bincount(owner)  # owner is sorted
    rank = torch.arange(owner.shape[0]) - (torch.cumsum(counts, 0) - counts)[owner]
    for level in range(int(rank.max()) + 1 if rank.numel() else 0):
        chosen = rank == level
        who = owner[chosen]
        images[who] = images[who] * (1 - alpha[chosen]) + paint[chosen]


def _object_colours(colour_index: Tensor, generator: torch.Generator) -> Tensor:
    palette = torch.tensor(list(COLOURS.values()))
    jitter = 0.06 * (torch.rand(colour_index.shape[0], 3, generator=generator) - 0.5)
    return (palette[colour_index] + jitter).clamp(0.0, 1.0)


def render_objects(
    concepts: Tensor, size: int, generator: torch.Generator, vocabulary: Vocabulary = VOCABULARY,
    min_scale: float = 0.22, max_scale: float = 0.42, noise: float = 0.12,
) -> Tensor:
    """One object per image: concept ``concepts[i]`` centred (with jitter) at a random scale -> ``(N, 3, S, S)``."""
    count = concepts.shape[0]
    images = _background(count, size, noise, generator).clone()
    colour, shape = concepts // len(vocabulary.shapes), concepts % len(vocabulary.shapes)
    radius = size * (min_scale + (max_scale - min_scale) * torch.rand(count, generator=generator))
    slack = (size / 2 - radius).clamp(min=0)
    centres = size / 2 + slack.unsqueeze(1) * 0.8 * (2 * torch.rand(count, 2, generator=generator) - 1)
    _paint(images, torch.arange(count), _object_colours(colour, generator), shape, centres, radius)
    return images


def render_scenes(
    count: int, generator: torch.Generator, config: SceneConfig | None = None,
    concept_pool: list[int] | None = None, vocabulary: Vocabulary = VOCABULARY,
) -> tuple[Tensor, Tensor]:
    """``count`` multi-object scenes -> images ``(N, 3, S, S)`` in [0, 1] and targets ``(N, C)`` in {0, 1}.

    Objects are placed in distinct cells of a jittered grid (``config.grid``); each object's concept
    is drawn uniformly from ``concept_pool`` (default: all concepts). ``C`` is always the full vocabulary size.
    """
    config = config or SceneConfig()
    size = config.size
    pool = torch.tensor(concept_pool if concept_pool is not None else list(range(len(vocabulary))))
    images = _background(count, size, config.noise, generator).clone()
    targets = torch.zeros(count, len(vocabulary))
    span = config.max_objects - config.min_objects + 1
    per_image = config.min_objects + torch.randint(span, (count,), generator=generator)
    grid = config.grid
    cells = torch.argsort(torch.rand(count, grid * grid, generator=generator), dim=1)
    owner = torch.repeat_interleave(torch.arange(count), per_image)  # (M,)
    slot = torch.cat([cells[i, : int(n)] for i, n in enumerate(per_image)])  # (M,)
    concept = pool[torch.randint(len(pool), (owner.shape[0],), generator=generator)]
    colour, shape = concept // len(vocabulary.shapes), concept % len(vocabulary.shapes)
    cell = size / grid
    count_objects = owner.shape[0]
    scale = config.min_scale + (config.max_scale - config.min_scale) * torch.rand(count_objects, generator=generator)
    radius = size * scale
    offset = 2 * torch.rand(count_objects, 2, generator=generator) - 1
    jitter = (cell / 2 - radius).clamp(min=0).unsqueeze(1) * offset
    centres = torch.stack([(slot // grid).float(), (slot % grid).float()], dim=1) * cell + cell / 2 + jitter
    _paint(images, owner, _object_colours(colour, generator), shape, centres, radius)
    targets[owner, concept] = 1.0
    return images, targets
