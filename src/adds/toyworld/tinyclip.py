"""A tiny CLIP for the toy world, trained contrastively on (object image, caption) pairs.

It plays the role of OpenAI's CLIP: it has seen every concept of the vocabulary on its "web" (single-object
images with captions such as "a photo of a red circle."), and ADDS later uses it frozen, exactly like a real
open_clip model: the ``adds-toyclip`` config (32 px images, 8 px patches, joint dim 64) is an ordinary open_clip
config, loaded through :func:`adds.towers.load_towers` from the committed safetensors file.

Two checkpoints are committed (``weights/``): seed 0, the aligned towers every experiment uses, and seed 1, an
independently trained model whose *text* tower provides misaligned label embeddings for the alignment ablation
(Tables 6/9). :func:`train_tiny_clip` reproduces them (``python -m adds.toyworld.tinyclip --seed 0``).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from adds.towers import TowerConfig, Towers, _register_model_configs, load_towers
from adds.toyworld.scenes import VOCABULARY, render_objects

__all__ = ["TOY_MODEL", "CAPTION_TEMPLATES", "TinyClipConfig", "train_tiny_clip", "weights_path", "load_toy_towers"]

logger = logging.getLogger(__name__)

#: The open_clip config name of the toy CLIP (``src/adds/model_configs/adds-toyclip.json``).
TOY_MODEL = "adds-toyclip"
#: Captions of the toy "web"; the paper's two prompts are among them, as CLIP's training captions resemble prompts.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a {}.",
    "{}",
    "This photo contains {}.",
    "This is a {} photo.",
    "a picture of the {} on a textured background.",
    "there is a {} here.",
    "a small {}.",
    "a big {}.",
)


@dataclass(frozen=True)
class TinyClipConfig:
    """Contrastive training of the toy CLIP.

    Attributes:
        seed: initialisation and data seed (0: the aligned model; 1: the misaligned one).
        steps: optimiser steps; each step shows every concept ``images_per_concept`` times.
        images_per_concept: images of each concept per step (the batch is ``48 x images_per_concept``).
        lr / weight_decay / warmup: AdamW with linear warm-up and cosine decay.
        min_scale / max_scale: object radius as a fraction of the 32 px image (small objects too, since
            Pyramid-Forwarding's downsampled level shows scenes' objects small).
    """

    seed: int = 0
    steps: int = 600
    images_per_concept: int = 4
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 100
    min_scale: float = 0.15
    max_scale: float = 0.45


def weights_path(seed: int = 0) -> Path:
    """Path of the committed toy CLIP weights for ``seed`` (0 or 1)."""
    path = Path(str(resources.files("adds.toyworld").joinpath("weights", f"toyclip-seed{seed}.safetensors")))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the toy CLIP weights are committed for seeds 0 and 1 only; "
            f"reproduce them with `python -m adds.toyworld.tinyclip --seed {seed}`"
        )
    return path


def load_toy_towers(seed: int = 0, aligned: bool = True) -> Towers:
    """The frozen toy CLIP through the ordinary tower code path (a local weights file)."""
    return load_towers(TowerConfig(model=TOY_MODEL, pretrained=str(weights_path(seed)), aligned=aligned))


def _lr_at(step: int, config: TinyClipConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def zero_shot_accuracy(model: torch.nn.Module, tokenizer, count: int = 960, seed: int = 12345) -> dict[str, float]:
    """Top-1 accuracy of prompt-ensembled zero-shot classification of fresh single-object images (48-way)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    concepts = torch.arange(count) % len(VOCABULARY)
    images = render_objects(concepts, 32, generator, min_scale=0.15, max_scale=0.45)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    image_emb = F.normalize(model.encode_image((images - mean) / std), dim=-1)
    prompts = [t.format(c) for c in VOCABULARY.concepts for t in ("This photo contains {}.", "This is a {} photo.")]
    text = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1).view(len(VOCABULARY), 2, -1).mean(1)
    predicted = (image_emb @ F.normalize(text, dim=-1).T).argmax(1)
    n_shapes = len(VOCABULARY.shapes)
    return {
        "concept": (predicted == concepts).float().mean().item(),
        "colour": (predicted // n_shapes == concepts // n_shapes).float().mean().item(),
        "shape": (predicted % n_shapes == concepts % n_shapes).float().mean().item(),
    }


def train_tiny_clip(config: TinyClipConfig, echo=print, device: str = "cpu") -> torch.nn.Module:
    """Train the toy CLIP from scratch; deterministic given ``config.seed``, the device and the torch version.

    Images are rendered on the CPU from the seeded generator (the same data on any device); the model trains on
    ``device``. The returned model is on the CPU.
    """
    _register_model_configs()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = open_clip.create_model(TOY_MODEL, pretrained=None).to(device)
    tokenizer = open_clip.get_tokenizer(TOY_MODEL)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD, device=device).view(1, 3, 1, 1)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    concepts = VOCABULARY.concepts
    per = config.images_per_concept
    labels = torch.arange(len(concepts)).repeat_interleave(per)  # (48 * per,)
    positives = (labels.view(1, -1) == torch.arange(len(concepts)).view(-1, 1)).to(device)  # (48, 48 * per)
    targets = labels.to(device)
    start = time.perf_counter()
    for step in range(config.steps):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        images = render_objects(labels, 32, generator, min_scale=config.min_scale, max_scale=config.max_scale)
        template_ids = torch.randint(len(CAPTION_TEMPLATES), (len(concepts),), generator=generator).tolist()
        captions = [CAPTION_TEMPLATES[t].format(c) for c, t in zip(concepts, template_ids, strict=True)]
        image_emb, text_emb, logit_scale = model((images.to(device) - mean) / std, tokenizer(captions).to(device))[:3]
        logits = logit_scale * image_emb @ text_emb.T  # (48 * per, 48)
        loss_image = F.cross_entropy(logits, targets)  # each image -> its concept's caption
        # each caption -> its `per` images (multi-positive): mean log-likelihood of the positives
        log_probs = logits.T.log_softmax(dim=1)  # (48, 48 * per)
        loss_text = -(log_probs * positives).sum(1).div(per).mean()
        loss = (loss_image + loss_text) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == config.steps - 1:
            echo(f"step {step:5d}  loss {loss.item():.4f}  logit_scale {model.logit_scale.exp().item():6.2f}  "
                 f"lr {optimizer.param_groups[0]['lr']:.2e}  {time.perf_counter() - start:6.1f}s")
    model = model.cpu()
    accuracy = zero_shot_accuracy(model, tokenizer)
    echo("zero-shot accuracy on fresh single-object images (48-way, chance 2.1%): "
         + ", ".join(f"{k} {100 * v:.1f}%" for k, v in accuracy.items()))
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the toy world's tiny CLIP (reproduces the committed weights).")
    parser.add_argument("--seed", type=int, default=0, help="0 = aligned model, 1 = the misaligned one")
    parser.add_argument("--steps", type=int, default=TinyClipConfig.steps)
    parser.add_argument("--out", type=Path, default=None, help="default: the package's weights/ folder")
    parser.add_argument("--device", default="cpu", help="cpu (default; how seed 0 was trained) or cuda")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = args.out or Path(__file__).parent / "weights" / f"toyclip-seed{args.seed}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def echo(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    config = TinyClipConfig(seed=args.seed, steps=args.steps)
    echo(f"training {TOY_MODEL} with {config} on {args.device} (torch {torch.__version__})")
    model = train_tiny_clip(config, echo=echo, device=args.device)
    state = {name: tensor.detach().to(torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out), metadata={"model": TOY_MODEL, "seed": str(args.seed)})
    out.with_suffix(".log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
