"""Toy world v2: multi-object scenes of coloured, textured shapes, their labels and partial captions (issue 9).

The vocabulary composes three kinds of words: 8 colours x 3 textures x 6 shapes = 144 object concepts
("red striped circle"; the solid texture is left unsaid: "red circle") plus 16 attribute-word labels (every
colour, shape, and the words "striped" and "dotted"): 160 labels. A label is positive for a scene when an object
of the scene has it (an attribute label: any object with that attribute).

Two unseen sets, always reported separately (:meth:`WorldVocabulary.splits`):

* **U_comb** -- held-out *recombinations* of seen words: solid / striped concepts with ``(c + s + 2t) % 4 == 0``.
  Every word of them is labelled in training, only not in this combination.
* **U_word** -- every label containing a word never labelled in training: all 48 "dotted" concepts and the label
  "dotted". Dotted objects still appear (unlabelled) in the training scenes, and the toy CLIP's captions name them,
  as real CLIP saw every NUS-WIDE word on the web.

Scenes (:func:`render_scenes`) hold 2-6 objects (configurable) of varying size in the cells of a jittered grid on
desaturated textured backgrounds; :func:`captions` names 1-3 of a scene's objects in random order with a random
template ("a photo of a red striped circle and a blue square."), the toy CLIP's "web text". Everything is
vectorised over the batch (signed-distance masks, soft 1-pixel edges) and deterministic given a generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "COLOURS", "SHAPES", "TEXTURES", "CAPTION_TEMPLATES", "WorldVocabulary", "VOCABULARY", "Splits", "SceneConfig",
    "Scenes", "render_scenes", "render_single", "sample_objects", "captions", "targets_of",
]

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
#: Texture words; "solid" is never said in a label (``"red circle"`` is the solid red circle).
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted")
#: Shape words, each drawn by a signed-distance function in :func:`_shape_distance`.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "bar")
#: The word never labelled in training (U_word).
UNSEEN_WORD = "dotted"
#: Caption templates of the toy "web"; the paper's two prompts are among them.
#: ``{}`` takes the named objects with articles ("a red circle and a blue bar"), ``{bare}`` without them.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of {}.",
    "{}.",
    "{bare}",
    "This photo contains {}.",
    "This is a {bare} photo.",
    "a picture of {} on a textured background.",
    "there is {} here.",
    "we see {}.",
)
#: Texture pattern: period (pixels) of stripes and dots, dot radius, and the darkening of the pattern's ink.
_PERIOD, _DOT_RADIUS, _INK = 3.6, 1.05, 0.22


@dataclass(frozen=True)
class Splits:
    """Label indices (into :attr:`WorldVocabulary.labels`) of the seen labels and the two unseen sets."""

    seen: list[int]
    u_comb: list[int]
    u_word: list[int]

    def as_dict(self) -> dict[str, list[int]]:
        return {"seen": self.seen, "U_comb": self.u_comb, "U_word": self.u_word}


@dataclass(frozen=True)
class WorldVocabulary:
    """Concept ``i = (c * T + t) * S + s`` is colour ``c``, texture ``t``, shape ``s``; labels = concepts + words."""

    colours: tuple[str, ...] = tuple(COLOURS)
    textures: tuple[str, ...] = TEXTURES
    shapes: tuple[str, ...] = SHAPES

    @property
    def num_concepts(self) -> int:
        return len(self.colours) * len(self.textures) * len(self.shapes)

    def words(self, concept: int) -> tuple[int, int, int]:
        """Concept index -> (colour, texture, shape) indices."""
        colour_texture, shape = divmod(concept, len(self.shapes))
        colour, texture = divmod(colour_texture, len(self.textures))
        return colour, texture, shape

    def phrase(self, concept: int, say_solid: bool = False) -> str:
        colour, texture, shape = self.words(concept)
        parts = [self.colours[colour]]
        if texture or say_solid:
            parts.append(self.textures[texture])
        return " ".join(parts + [self.shapes[shape]])

    @property
    def concepts(self) -> list[str]:
        """Concept labels, e.g. ``"red circle"``, ``"red striped circle"``, in index order."""
        return [self.phrase(i) for i in range(self.num_concepts)]

    @property
    def attributes(self) -> list[str]:
        """Attribute-word labels: every colour, the textures but "solid", every shape."""
        return list(self.colours) + [t for t in self.textures if t != "solid"] + list(self.shapes)

    @property
    def labels(self) -> list[str]:
        return self.concepts + self.attributes

    def __len__(self) -> int:
        return self.num_concepts + len(self.attributes)

    def attribute_matrix(self) -> Tensor:
        """``(num_concepts, num_attributes)`` in {0, 1}: which attribute labels an object of each concept carries."""
        attributes = self.attributes
        matrix = torch.zeros(self.num_concepts, len(attributes))
        for concept in range(self.num_concepts):
            colour, texture, shape = self.words(concept)
            for word in (self.colours[colour], self.textures[texture], self.shapes[shape]):
                if word in attributes:
                    matrix[concept, attributes.index(word)] = 1.0
        return matrix

    def splits(self) -> Splits:
        """Seen labels, U_comb (held-out recombinations of seen words) and U_word (labels with "dotted")."""
        seen, u_comb, u_word = [], [], []
        for index, label in enumerate(self.labels):
            if UNSEEN_WORD in label.split():
                u_word.append(index)
            elif index < self.num_concepts and sum(self.words(index)[i] * w for i, w in enumerate((1, 2, 1))) % 4 == 0:
                u_comb.append(index)
            else:
                seen.append(index)
        return Splits(seen, u_comb, u_word)


VOCABULARY = WorldVocabulary()


@dataclass(frozen=True)
class SceneConfig:
    """How scenes look.

    Attributes:
        size: image side in pixels (the v2 tower's own size is 48).
        grid: objects sit in distinct cells of a ``grid x grid`` layout (jittered), so they rarely hide each other.
        min_objects / max_objects: objects per scene (uniform; at most ``grid ** 2``).
        min_scale / max_scale: object radius as a fraction of the image side.
        large_fraction / large_scale: a share of objects drawn at ``large_scale`` instead (Table 7's objects that
            straddle crop borders); the cell limit does not apply to them.
        noise: amplitude of the background texture.
    """

    size: int = 48
    grid: int = 3
    min_objects: int = 2
    max_objects: int = 6
    min_scale: float = 0.085
    max_scale: float = 0.15
    large_fraction: float = 0.0
    large_scale: float = 0.3
    noise: float = 0.12

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= self.grid**2:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= grid**2, got {self}")


@dataclass
class Scenes:
    """Rendered scenes: ``images`` ``(N, 3, S, S)`` in [0, 1], ``targets`` ``(N, L)`` over every label, and the
    objects: ``owner`` ``(M,)`` (sorted image index), ``concept`` ``(M,)``, ``radius`` ``(M,)`` pixels."""

    images: Tensor
    targets: Tensor
    owner: Tensor
    concept: Tensor
    radius: Tensor

    def objects_per_image(self) -> Tensor:
        return torch.bincount(self.owner, minlength=self.images.shape[0])


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
    distance = torch.empty_like(dx)
    for index in range(len(SHAPES)):
        chosen = torch.nonzero(shape == index).flatten()
        if chosen.numel():
            distance[chosen] = _one_shape(index, dx[chosen], dy[chosen], radius[chosen])
    return distance


def _one_shape(index: int, dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    """Signed distance of shape ``SHAPES[index]`` (``(m, S, S)`` offsets, ``(m, 1, 1)`` radii)."""
    ax, ay = dx.abs(), dy.abs()
    if index == 0:  # circle
        return torch.sqrt(dx**2 + dy**2) - r
    if index == 1:  # square
        return torch.maximum(ax, ay) - 0.8 * r
    if index == 2:  # upward triangle (y points down)
        return torch.maximum(dy - 0.75 * r, 0.85 * (ax - 0.62 * (dy + 0.9 * r)))
    if index == 3:  # cross
        arm = 0.3 * r
        return torch.minimum(torch.maximum(ax - arm, ay - r), torch.maximum(ay - arm, ax - r))
    if index == 4:  # ring
        return (torch.sqrt(dx**2 + dy**2) - 0.7 * r).abs() - 0.3 * r
    return torch.maximum(ax - r, ay - 0.38 * r)  # bar


def _texture_ink(texture: Tensor, dx: Tensor, dy: Tensor, angle: Tensor) -> Tensor:
    """``(M, S, S)`` in [0, 1]: where an object's pattern darkens its colour (0 for solid objects)."""
    u = dx * torch.cos(angle) + dy * torch.sin(angle)
    v = -dx * torch.sin(angle) + dy * torch.cos(angle)
    stripes = (torch.sin(2 * math.pi * u / _PERIOD) * 2.0).clamp(0.0, 1.0)
    du = torch.remainder(u, _PERIOD) - _PERIOD / 2
    dv = torch.remainder(v, _PERIOD) - _PERIOD / 2
    dots = (_DOT_RADIUS + 0.5 - torch.sqrt(du**2 + dv**2)).clamp(0.0, 1.0)
    ink = torch.zeros_like(dx)
    ink = torch.where((texture == 1).view(-1, 1, 1), stripes, ink)
    return torch.where((texture == 2).view(-1, 1, 1), dots, ink)


def _paint(images: Tensor, owner: Tensor, concept: Tensor, centres: Tensor, radii: Tensor,
           generator: torch.Generator, vocabulary: WorldVocabulary) -> None:
    """Draw objects into ``images`` in place (objects of one image in order, later on top)."""
    size = images.shape[-1]
    count = owner.shape[0]
    n_shapes, n_textures = len(vocabulary.shapes), len(vocabulary.textures)
    shape = concept % n_shapes
    texture = (concept // n_shapes) % n_textures
    colour = concept // (n_shapes * n_textures)
    palette = torch.tensor([COLOURS[c] for c in vocabulary.colours])
    rgb = (palette[colour] + 0.06 * (torch.rand(count, 3, generator=generator) - 0.5)).clamp(0.0, 1.0)  # (M, 3)
    angle = math.pi * torch.rand(count, generator=generator).view(-1, 1, 1)
    phase = _PERIOD * torch.rand(count, 2, generator=generator)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dy = (coords.view(1, size, 1) - centres[:, 0].view(-1, 1, 1)).expand(-1, size, size)  # (M, S, S)
    dx = (coords.view(1, 1, size) - centres[:, 1].view(-1, 1, 1)).expand(-1, size, size)
    distance = _shape_distance(shape, dx, dy, radii.view(-1, 1, 1))
    alpha = (0.5 - distance).clamp(0.0, 1.0).unsqueeze(1)  # (M, 1, S, S)
    ink = _texture_ink(texture, dx + phase[:, 1].view(-1, 1, 1), dy + phase[:, 0].view(-1, 1, 1), angle)
    shade = 1.0 - (1.0 - _INK) * ink.unsqueeze(1)  # (M, 1, S, S)
    paint = alpha * shade * rgb.view(-1, 3, 1, 1)  # (M, 3, S, S)
    counts = torch.bincount(owner)
    rank = torch.arange(count) - (torch.cumsum(counts, 0) - counts)[owner]
    for level in range(int(rank.max()) + 1 if count else 0):
        chosen = rank == level
        who = owner[chosen]
        images[who] = images[who] * (1 - alpha[chosen]) + paint[chosen]


def targets_of(owner: Tensor, concept: Tensor, count: int, vocabulary: WorldVocabulary = VOCABULARY) -> Tensor:
    """``(N, L)`` ground truth over every label from the objects (concept labels and their attribute words)."""
    targets = torch.zeros(count, len(vocabulary))
    targets[owner, concept] = 1.0
    attributes = vocabulary.attribute_matrix()[concept]  # (M, A)
    per_image = torch.zeros(count, attributes.shape[1]).index_add_(0, owner, attributes)
    targets[:, vocabulary.num_concepts:] = (per_image > 0).float()
    return targets


def render_scenes(
    count: int, generator: torch.Generator, config: SceneConfig | None = None,
    concept_pool: list[int] | None = None, vocabulary: WorldVocabulary = VOCABULARY,
) -> Scenes:
    """``count`` scenes; each object's concept is drawn uniformly from ``concept_pool`` (default: all 144)."""
    config = config or SceneConfig()
    size, grid = config.size, config.grid
    pool = torch.tensor(concept_pool if concept_pool is not None else list(range(vocabulary.num_concepts)))
    images = _background(count, size, config.noise, generator).clone()
    span = config.max_objects - config.min_objects + 1
    per_image = config.min_objects + torch.randint(span, (count,), generator=generator)
    cells = torch.argsort(torch.rand(count, grid * grid, generator=generator), dim=1)
    owner = torch.repeat_interleave(torch.arange(count), per_image)  # (M,)
    slot = torch.cat([cells[i, : int(n)] for i, n in enumerate(per_image)]) if count else torch.zeros(0)
    objects = owner.shape[0]
    concept = pool[torch.randint(len(pool), (objects,), generator=generator)]
    scale = config.min_scale + (config.max_scale - config.min_scale) * torch.rand(objects, generator=generator)
    large = torch.rand(objects, generator=generator) < config.large_fraction
    scale = torch.where(large, torch.full_like(scale, config.large_scale), scale)
    radius = size * scale
    cell = size / grid
    offset = 2 * torch.rand(objects, 2, generator=generator) - 1
    jitter = (cell / 2 - radius).clamp(min=0).unsqueeze(1) * offset
    centres = torch.stack([(slot // grid).float(), (slot % grid).float()], dim=1) * cell + cell / 2 + jitter
    centres = torch.where(large.unsqueeze(1), centres.clamp(radius.unsqueeze(1) * 0.8, size - radius.unsqueeze(1)
                                                                              * 0.8), centres)
    _paint(images, owner, concept, centres, radius, generator, vocabulary)
    return Scenes(images, targets_of(owner, concept, count, vocabulary), owner, concept, radius)


def sample_objects(count: int, generator: torch.Generator, min_objects: int = 1, max_objects: int = 6,
                   vocabulary: WorldVocabulary = VOCABULARY) -> Scenes:
    """Scenes without pixels (``images`` is ``(N, 0)``): the objects and targets only, for caption corpora."""
    per_image = min_objects + torch.randint(max_objects - min_objects + 1, (count,), generator=generator)
    owner = torch.repeat_interleave(torch.arange(count), per_image)
    concept = torch.randint(vocabulary.num_concepts, (owner.shape[0],), generator=generator)
    return Scenes(torch.empty(count, 0), targets_of(owner, concept, count, vocabulary), owner, concept,
                  torch.zeros(owner.shape[0]))


def render_single(concepts: Tensor, generator: torch.Generator, size: int = 48, min_scale: float = 0.22,
                  max_scale: float = 0.4, vocabulary: WorldVocabulary = VOCABULARY) -> Tensor:
    """One object per image, concept ``concepts[i]`` near the centre -> ``(N, 3, S, S)`` (retrieval checks)."""
    count = concepts.shape[0]
    images = _background(count, size, 0.12, generator).clone()
    radius = size * (min_scale + (max_scale - min_scale) * torch.rand(count, generator=generator))
    slack = (size / 2 - radius).clamp(min=0)
    centres = size / 2 + slack.unsqueeze(1) * 0.6 * (2 * torch.rand(count, 2, generator=generator) - 1)
    _paint(images, torch.arange(count), concepts, centres, radius, generator, vocabulary)
    return images


def captions(scenes: Scenes, generator: torch.Generator, max_named: int = 3,
             vocabulary: WorldVocabulary = VOCABULARY) -> list[str]:
    """Partial captions: 1..``max_named`` distinct concepts of each scene, in random order, in a random template.

    The solid texture is said ("red solid circle") a quarter of the time, so "solid" is a word too.
    """
    count = scenes.images.shape[0]
    out = []
    for image in range(count):
        present = scenes.concept[scenes.owner == image].unique()
        order = present[torch.randperm(present.numel(), generator=generator)]
        named = int(torch.randint(1, min(max_named, present.numel()) + 1, (1,), generator=generator))
        say_solid = torch.rand(named, generator=generator) < 0.25
        phrases = [vocabulary.phrase(int(c), bool(s)) for c, s in zip(order[:named], say_solid, strict=True)]
        template = CAPTION_TEMPLATES[int(torch.randint(len(CAPTION_TEMPLATES), (1,), generator=generator))]
        out.append(template.format(" and ".join("a " + p for p in phrases), bare=" and ".join(phrases)))
    return out
