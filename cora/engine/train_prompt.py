"""Stage 1 of CORA's recipe: learn the region prompt (everything else frozen).

Cross-entropy over the training vocabulary of the region classifier's logits (100 * cosine) on the
ground-truth boxes; AdamW (lr 1e-4, x0.1 from `lr_drop_epoch`). The loop, log, checkpoints and resume are
`cora.engine.trainer.run_training`'s. At the end the prompt is exported as
`<out>/prompt.pth` = {"attnpool.positional_embedding": Tensor[S*S+1, C]} (the effective positional embedding,
the official code's form: `cora convert --prompt` and `RegionClassifier.load_prompt` read it).

    train_prompt(model, dataset, "runs/prompt", TrainConfig(epochs=5, lr_drop_epoch=4, ema_decay=0, class_dropout=0))
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from cora.engine.convert import PROMPT_KEY
from cora.engine.trainer import TrainConfig, pad_batch, run_training
from cora.fileio import atomic_write

PROMPT_PREFIXES = ("region_classifier.pool.prompt",)
PROMPT_FILE = "prompt.pth"


def prompt_config(**overrides) -> TrainConfig:
    """Stage 1 defaults: 5 epochs, lr 1e-4 dropped at epoch 4, no EMA, no class dropout."""
    base = dict(epochs=5, lr_drop_epoch=4, ema_decay=0.0, class_dropout=0.0, clip_max_norm=0.0)
    return TrainConfig(**{**base, **overrides})


def region_logits(model, images: list[Tensor], targets: list[dict], text: Tensor) -> tuple[Tensor, Tensor]:
    """Region-classifier logits [N, K] of all ground-truth boxes of the batch, and their labels [N]."""
    batch, _ = pad_batch(images)
    batch = batch.to(model.device)
    with torch.no_grad():  # CLIP up to layer3 is frozen and needs no graph
        layer3 = model.backbone.features(model.backbone.normalize(batch))
    boxes = [t["boxes"].to(batch) for t in targets]  # xyxy pixels; padding is bottom/right only
    labels = torch.cat([t["labels"] for t in targets]).to(model.device)
    return model.region_classifier(layer3, boxes, text), labels


def prompt_step(model, images, targets, text, ctx) -> tuple[Tensor, dict[str, float]]:
    logits, labels = region_logits(model, images, targets, text)
    if len(labels) == 0:
        loss = model.region_classifier.pool.prompt.sum() * 0.0
        return loss, {"loss_ce": 0.0, "accuracy": float("nan")}
    loss = F.cross_entropy(logits, labels)
    acc = float((logits.argmax(-1) == labels).float().mean())
    return loss, {"loss_ce": float(loss.detach()), "accuracy": acc}


def export_prompt(model, path: str | Path) -> None:
    pe = model.region_classifier.effective_positional_embedding().cpu().clone()
    atomic_write(path, lambda tmp: torch.save({PROMPT_KEY: pe}, tmp))


def train_prompt(model, dataset, out_dir, tcfg: TrainConfig | None = None, text_embeddings: Tensor | None = None,
                 resume: bool = False, progress: bool = True) -> list[dict]:
    """Trains the region prompt of `model` (a CORA) in place; returns the log rows. Writes
    `<out_dir>/prompt.pth` when the run is complete."""
    tcfg = tcfg if tcfg is not None else prompt_config()
    log = run_training(model, dataset, out_dir, tcfg, PROMPT_PREFIXES, prompt_step, {}, text_embeddings, resume,
                       progress)
    if (Path(out_dir) / "model").is_dir():
        export_prompt(model, Path(out_dir) / PROMPT_FILE)
    return log


@torch.no_grad()
def region_accuracy(model, dataset, text: Tensor, batch_size: int = 8) -> float:
    """Top-1 accuracy of the region classifier on the dataset's ground-truth boxes."""
    correct = total = 0
    for start in range(0, len(dataset), batch_size):
        images, targets = zip(*[dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        logits, labels = region_logits(model, list(images), list(targets), text.to(model.device))
        correct += int((logits.argmax(-1) == labels).sum())
        total += len(labels)
    return correct / max(total, 1)
