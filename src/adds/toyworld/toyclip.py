"""The v2 tiny CLIP: trained contrastively on multi-object scenes with partial captions (toy world v2, issue 9).

It plays OpenAI's CLIP: its "web" is an endless stream of fresh scenes (1-6 objects, :mod:`adds.toyworld.world`)
whose captions name only 1-3 of the objects, in any order, and every word of the vocabulary -- "dotted" included,
though no ADDS head is ever trained on a dotted label. ADDS later uses it frozen through the ordinary tower path:
``adds-toyclip2`` (48 px images, 6 px patches = 65 tokens, joint dim 64) is a plain open_clip config loaded by
:func:`adds.towers.load_towers` from the committed safetensors file.

Two checkpoints are committed (``weights/``): seed 0, the aligned towers every experiment uses, and seed 1, trained
the same way from another seed; its text tower is the "aligned up to a linear map" control of Tables 6/9.
Reproduce them with ``python -m adds.toyworld.toyclip --seed 0`` (and ``--seed 1``).

Two stages:

1. **Shape warm-up of the image tower** (:func:`shape_warmup`): a 6-way shape classifier on single-object images,
   the analogue of starting from an ImageNet-pretrained image tower (as LiT and early CLIP variants do). Without
   it the tiny tower never learns shape on 2 CPU cores (measured, ``docs/toyworld.md``): colour and texture solve
   most of the contrastive loss within 100 steps, and shape -- which needs features spanning several patches --
   stayed at chance after 1,400 contrastive steps, even in batches where only shape told captions apart, while a
   supervised shape classifier on the same tower learns it in a few hundred steps. The warm-up uses the shape words
   only (seen words, labelled in every split); no concept, colour or texture label is used.
2. **Contrastive training** of both towers: the symmetric InfoNCE of CLIP with multiple positives -- a caption is a
   positive of every image of the batch that holds all the objects it names (a partial caption fits several images).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import deque
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from adds.prompts import PAPER_TEMPLATES
from adds.towers import TowerConfig, Towers, load_towers, register_model_configs
from adds.toyworld.world import VOCABULARY, SceneConfig, captions, render_scenes, render_single

__all__ = ["TOY_MODEL", "ToyClipConfig", "load_toy_towers", "retrieval_accuracy", "shape_warmup", "train_toy_clip",
           "weights_path"]

#: The open_clip config name of the v2 toy CLIP (``src/adds/model_configs/adds-toyclip2.json``).
TOY_MODEL = "adds-toyclip2"


@dataclass(frozen=True)
class ToyClipConfig:
    """Contrastive training of the toy CLIP on fresh scenes.

    Attributes:
        seed: initialisation and data seed (0: the aligned model; 1: the linear-map control).
        steps / batch_size: optimiser steps, scenes per step (every step renders new scenes).
        lr / weight_decay / warmup: AdamW with linear warm-up and cosine decay.
        scene: the "web" scenes (1-6 objects, larger on average than the ADDS scenes).
        shape_steps / shape_batch / shape_lr: the image tower's shape warm-up (stage 1; 0 steps skips it) on
            single objects of radius ``shape_scale`` (fractions of the image side, as small as the ADDS scenes').
    """

    seed: int = 0
    shape_steps: int = 1500
    shape_batch: int = 128
    shape_lr: float = 1e-3
    shape_scale: tuple[float, float] = (0.085, 0.4)
    steps: int = 1400
    batch_size: int = 160
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 100
    scene: SceneConfig = SceneConfig(min_objects=1, max_objects=6, min_scale=0.085, max_scale=0.26)


def weights_path(seed: int = 0) -> Path:
    """Path of the committed toy CLIP weights for ``seed`` (0 or 1)."""
    path = Path(str(resources.files("adds.toyworld").joinpath("weights", f"toyclip2-seed{seed}.safetensors")))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the toy CLIP weights are committed for seeds 0 and 1 only; "
            f"reproduce them with `python -m adds.toyworld.toyclip --seed {seed}`"
        )
    return path


def load_toy_towers(seed: int = 0, aligned: bool = True) -> Towers:
    """The frozen toy CLIP through the ordinary tower code path (a local weights file)."""
    return load_towers(TowerConfig(model=TOY_MODEL, pretrained=str(weights_path(seed)), aligned=aligned))


def _lr_at(step: int, config: ToyClipConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def retrieval_accuracy(model: torch.nn.Module, tokenizer, count: int = 1440, seed: int = 12345) -> dict[str, float]:
    """Top-1 accuracy of 144-way zero-shot classification of fresh single-object images (paper's two prompts).

    Also the share of predictions with the right colour, texture and shape word. Chance: 0.7 % for concepts.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    n = VOCABULARY.num_concepts
    concepts = torch.arange(count) % n
    image_emb = F.normalize(model.encode_image(_normalise(render_single(concepts, generator))), dim=-1)
    prompts = [t.format(c) for c in VOCABULARY.concepts for t in PAPER_TEMPLATES]
    text = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1).view(n, len(PAPER_TEMPLATES), -1).mean(1)
    predicted = (image_emb @ F.normalize(text, dim=-1).T).argmax(1)
    truth = [VOCABULARY.words(int(c)) for c in concepts]
    guess = [VOCABULARY.words(int(c)) for c in predicted]
    return {"concept": (predicted == concepts).float().mean().item(),
            **{name: sum(t[i] == g[i] for t, g in zip(truth, guess, strict=True)) / count
               for i, name in enumerate(("colour", "texture", "shape"))}}


def shape_warmup(visual: torch.nn.Module, config: ToyClipConfig, generator: torch.Generator, echo=print,
                 device: str = "cpu") -> float:
    """Stage 1: train ``visual`` (the image tower) as a 6-way shape classifier on fresh single-object images.

    A linear head on the tower's joint-space output is trained with it and thrown away. Returns the shape accuracy
    of the last 10 batches (fresh images, so it is a held-out accuracy).
    """
    head = torch.nn.Linear(visual.output_dim, len(VOCABULARY.shapes)).to(device)
    optimizer = torch.optim.AdamW(list(visual.parameters()) + list(head.parameters()), lr=config.shape_lr,
                                  weight_decay=0.0)
    low, high = config.shape_scale
    correct: deque[float] = deque(maxlen=10)  # batch accuracies of the last 10 steps
    start = time.perf_counter()
    visual.train()
    for step in range(config.shape_steps):
        concepts = torch.randint(VOCABULARY.num_concepts, (config.shape_batch,), generator=generator)
        shapes = (concepts % len(VOCABULARY.shapes)).to(device)
        images = render_single(concepts, generator, min_scale=low, max_scale=high)
        logits = head(visual(_normalise(images.to(device))))  # (B, 6)
        loss = F.cross_entropy(logits, shapes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        correct.append((logits.argmax(1) == shapes).float().mean().item())
        if step % 250 == 0 or step == config.shape_steps - 1:
            echo(f"shape warm-up step {step:5d}  loss {loss.item():.4f}  "
                 f"accuracy {100 * sum(correct) / len(correct):5.1f}%  {time.perf_counter() - start:6.1f}s")
    return sum(correct) / max(1, len(correct))


def _positives(scenes, named: torch.Tensor) -> torch.Tensor:
    """``(B, B)`` bool: caption ``j`` fits image ``i`` when every concept it names is in image ``i``."""
    present = scenes.targets[:, : VOCABULARY.num_concepts]  # (B, C)
    return (named @ (1 - present).T).T == 0  # (B images, B captions)


def _named_concepts(texts: list[str]) -> torch.Tensor:
    """``(B, C)`` which concepts each caption names (parsed back from the phrases; "solid" said or not)."""
    index = {phrase: i for i, phrase in enumerate(VOCABULARY.concepts)}
    index.update({VOCABULARY.phrase(i, True): i for i in range(VOCABULARY.num_concepts)})
    named = torch.zeros(len(texts), VOCABULARY.num_concepts)
    for row, text in enumerate(texts):
        words = text.rstrip(".").split()
        for length in (3, 2):
            for start in range(len(words) - length + 1):
                concept = index.get(" ".join(words[start:start + length]))
                if concept is not None:
                    named[row, concept] = 1.0
    return named


def train_toy_clip(config: ToyClipConfig, echo=print, device: str = "cpu") -> torch.nn.Module:
    """Train the toy CLIP from scratch; deterministic given ``config.seed``, the device and the torch version."""
    register_model_configs()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = open_clip.create_model(TOY_MODEL, pretrained=None).to(device)
    tokenizer = open_clip.get_tokenizer(TOY_MODEL)
    if config.shape_steps:
        shape_warmup(model.visual, config, generator, echo, device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    start = time.perf_counter()
    for step in range(config.steps):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        scenes = render_scenes(config.batch_size, generator, config.scene)
        texts = captions(scenes, generator)
        positives = _positives(scenes, _named_concepts(texts)).float().to(device)  # (B, B)
        image_emb, text_emb, logit_scale = model(_normalise(scenes.images.to(device)), tokenizer(texts).to(device))[:3]
        logits = logit_scale * image_emb @ text_emb.T  # (B images, B captions)
        # multi-positive InfoNCE both ways: log of the softmax mass on the positives
        loss_image = -(torch.logsumexp(logits.masked_fill(positives == 0, -1e4), 1) - torch.logsumexp(logits, 1))
        logits_t = logits.T
        loss_text = -(torch.logsumexp(logits_t.masked_fill(positives.T == 0, -1e4), 1) - torch.logsumexp(logits_t, 1))
        loss = (loss_image.mean() + loss_text.mean()) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == config.steps - 1:
            echo(f"step {step:5d}  loss {loss.item():.4f}  logit_scale {model.logit_scale.exp().item():6.2f}  "
                 f"lr {optimizer.param_groups[0]['lr']:.2e}  {time.perf_counter() - start:6.1f}s")
    model = model.cpu()
    accuracy = retrieval_accuracy(model, tokenizer)
    echo("zero-shot retrieval on fresh single-object images (144-way, chance 0.7%): "
         + ", ".join(f"{k} {100 * v:.1f}%" for k, v in accuracy.items()))
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the toy world v2's tiny CLIP (reproduces the committed "
                                     "weights).")
    parser.add_argument("--seed", type=int, default=0, help="0 = aligned model, 1 = the linear-map control")
    parser.add_argument("--steps", type=int, default=ToyClipConfig.steps, help="contrastive steps")
    parser.add_argument("--shape-steps", type=int, default=ToyClipConfig.shape_steps,
                        help="shape warm-up steps of the image tower (0: none, the old recipe)")
    parser.add_argument("--out", type=Path, default=None, help="default: the package's weights/ folder")
    parser.add_argument("--device", default="cpu", help="cpu (default; how the committed weights were trained)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or Path(__file__).parent / "weights" / f"toyclip2-seed{args.seed}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def echo(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    config = ToyClipConfig(seed=args.seed, steps=args.steps, shape_steps=args.shape_steps)
    echo(f"training {TOY_MODEL} with {config} on {args.device} (torch {torch.__version__})")
    model = train_toy_clip(config, echo=echo, device=args.device)
    state = {name: tensor.detach().to(torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out), metadata={"model": TOY_MODEL, "seed": str(args.seed)})
    out.with_suffix(".log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
