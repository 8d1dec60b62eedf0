"""A few-second end-to-end ADDS run on tiny random towers: a smoke test of every stage (``adds demo``).

It exercises every stage of the model on 2 CPU cores without downloaded weights: tiny open_clip towers with random
weights, synthetic 64 px images of coloured squares (twice the tower's 32 px, so Pyramid-Forwarding uses levels
[0, 1]: 1 + 4 crops), frozen features computed once (the towers never change), a few hundred ASL steps on the
DM-decoder head, mAP on held-out images against the untrained head, tagging one image, and a checkpoint round trip.

Random towers are not CLIP: the label embeddings carry no meaning, so this shows that the machinery learns, not
that it generalises to unseen words (that is the toy world's job).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass

import torch

from adds.decoder import DecoderConfig
from adds.losses import AsymmetricLoss
from adds.metrics import mean_average_precision
from adds.model import ADDS, ADDSConfig
from adds.towers import TINY_MODEL, TowerConfig
from adds.toyworld.world import COLOURS

__all__ = ["DemoConfig", "make_images", "run_demo"]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo run."""

    train_images: int = 256
    test_images: int = 128
    image_size: int = 64
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0


def make_images(count: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` noisy grey images with 1-3 coloured squares -> images ``(N, 3, size, size)``, targets ``(N, C)``."""
    names = list(COLOURS)
    images = 0.4 + 0.15 * torch.rand(count, 3, size, size, generator=generator)  # (N, 3, S, S)
    targets = torch.zeros(count, len(names))
    for index in range(count):
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            colour = int(torch.randint(len(names), (1,), generator=generator))
            side = int(torch.randint(size // 6, size // 3, (1,), generator=generator))
            top, left = (int(v) for v in torch.randint(0, size - side, (2,), generator=generator))
            images[index, :, top:top + side, left:left + side] = torch.tensor(COLOURS[names[colour]]).view(3, 1, 1)
            targets[index, colour] = 1.0
    return images.clamp(0, 1), targets


def run_demo(config: DemoConfig | None = None, echo=print) -> dict[str, float]:
    """Run the demo, printing progress with ``echo``; returns the headline numbers."""
    config = config or DemoConfig()
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    labels = list(COLOURS)

    model_config = ADDSConfig(
        towers=TowerConfig(model=TINY_MODEL, pretrained=None, seed=config.seed),
        decoder=DecoderConfig(num_layers=2, num_heads=4, ffn_dim=128, dropout=0.1),
    )
    model = ADDS(model_config)
    echo(f"towers: {TINY_MODEL} (random weights), base size {model.towers.image_size}px, joint dim "
         f"{model.towers.embed_dim}; head: {sum(p.numel() for p in model.trainable_parameters()):,} trainable "
         f"parameters, towers frozen")

    train_x, train_y = make_images(config.train_images, config.image_size, generator)
    test_x, test_y = make_images(config.test_images, config.image_size, generator)
    # The towers are frozen, so their tokens are computed once and reused every step (a feature cache in memory).
    train_tokens = model.forward_features(train_x)  # (N, crops * T, D)
    test_tokens = model.forward_features(test_x)
    crops = train_tokens.shape[1] // model.towers.tokens_per_image
    echo(f"images: {config.train_images} train / {config.test_images} test at {config.image_size}px -> "
         f"Pyramid-Forwarding {crops} crops x {model.towers.tokens_per_image} tokens per image")
    label_embeddings = model.encode_labels(labels)  # (k, D)

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            scores = model.forward_head(test_tokens, label_embeddings).sigmoid()
        return mean_average_precision(scores, test_y)

    untrained = evaluate()
    loss_fn = AsymmetricLoss()
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=config.lr)
    first_loss = last_loss = float("nan")
    for step in range(config.steps):
        model.train()
        batch = torch.randint(config.train_images, (config.batch_size,), generator=generator)
        loss = loss_fn(model.forward_head(train_tokens[batch], label_embeddings), train_y[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        first_loss = loss.item() if step == 0 else first_loss
        last_loss = loss.item()
        if step % max(1, config.steps // 5) == 0 or step == config.steps - 1:
            echo(f"  step {step + 1:4d}/{config.steps}  ASL loss {loss.item():8.3f}")
    trained = evaluate()
    echo(f"held-out mAP: untrained head {100 * untrained:.1f}%  ->  trained head {100 * trained:.1f}%")

    model.eval()
    with torch.no_grad():
        scores = model(test_x[:1], labels).sigmoid()[0]
    truth = {labels[i] for i in torch.nonzero(test_y[0]).flatten().tolist()}
    echo("tags for held-out image #0 (true: " + ", ".join(sorted(truth)) + "):")
    for index in scores.argsort(descending=True).tolist():
        mark = "*" if labels[index] in truth else " "
        echo(f"  {mark} {labels[index]:<7} {scores[index]:.3f} " + "#" * int(round(30 * float(scores[index]))))

    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        reloaded = ADDS.from_pretrained(directory, towers=model.towers).eval()
        with torch.no_grad():
            same = torch.allclose(reloaded(test_x[:4], labels), model(test_x[:4], labels), atol=1e-5)
    echo(f"checkpoint round trip (safetensors + JSON, trainable weights only): {'identical' if same else 'DIFFERENT'}")
    elapsed = time.perf_counter() - start
    echo(f"done in {elapsed:.1f}s")
    return {"untrained_map": untrained, "trained_map": trained, "first_loss": first_loss, "last_loss": last_loss,
            "checkpoint_identical": float(same), "seconds": elapsed}
