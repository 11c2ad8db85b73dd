"""Stage 1 of CORA's recipe: learn the region prompt (everything else frozen).

Cross-entropy over the training vocabulary of the region classifier's logits (100 * cosine) on the
ground-truth boxes; AdamW (lr 1e-4, x0.1 from `lr_drop_epoch`). With `TrainConfig.sampled_classes` = S > 0
(LVIS: 100), each iteration's cross-entropy is over S classes only: those of the batch's ground truths plus
classes drawn uniformly from the rest of the vocabulary (`sample_vocabulary`). The loop, log, checkpoints
and resume are `cora.engine.trainer.run_training`'s. At the end the prompt is exported as
`<out>/prompt.pth` = {"attnpool.positional_embedding": Tensor[S*S+1, C]} (the effective positional embedding,
the official code's form: `cora convert --prompt` and `RegionClassifier.load_prompt` read it).

    train_prompt(model, dataset, "runs/prompt", TrainConfig(epochs=5, lr_drop_epoch=4, ema_decay=0, class_dropout=0))
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from cora.engine import distributed
from cora.engine.convert import PROMPT_KEY
from cora.engine.trainer import TrainConfig, run_training
from cora.fileio import atomic_write
from cora.preprocess import pad_batch
from cora.modeling.losses import average_num_boxes

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


def sample_vocabulary(labels: Tensor, num_classes: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One iteration's classes for the cross-entropy, and the labels relabelled into them.

    CORA (CVPR 2023), LVIS region prompting: "equal-weight sampling of frequent and common classes, 100 sampled
    classes per iteration". The subset holds every class present in `labels`, plus classes drawn uniformly
    (equal weight, not by frequency) without replacement from the other `num_classes` classes of the training
    vocabulary (LVIS: frequent + common), `size` classes in all; all present classes if there are more than
    `size`, and at most the whole vocabulary.

    Args:
        labels: Tensor[N] int in [0, num_classes): the batch's ground-truth labels.
        generator: a CPU torch.Generator (the training loop's, so that a resumed run draws the same classes).
            Each call draws one permutation of the vocabulary from it, whatever `labels` holds: processes that
            share the generator but not the images stay in step.

    Returns:
        (classes, local): classes Tensor[S] int64 sorted vocabulary indices (CPU), S = max(size, #present)
        capped at num_classes; local Tensor[N] int64 on labels' device, with classes[local] == labels.
    """
    present = torch.zeros(num_classes, dtype=torch.bool)
    present[labels.cpu().long()] = True
    order = torch.randperm(num_classes, generator=generator)
    # The absent classes in a uniformly random order: its first `extra` are a uniform draw without replacement.
    others = order[~present[order]]
    extra = max(0, min(size, num_classes) - int(present.sum()))
    classes = torch.cat([present.nonzero().squeeze(1), others[:extra]]).sort().values
    local = torch.full((num_classes,), -1, dtype=torch.int64)
    local[classes] = torch.arange(len(classes))
    return classes, local[labels.cpu().long()].to(labels.device)


def prompt_step(model, images, targets, text, ctx) -> tuple[Tensor, dict[str, float]]:
    """One stage-1 iteration. With `ctx["tcfg"].sampled_classes` > 0 the cross-entropy is over a sampled class
    subset (`sample_vocabulary`), drawn with ctx["step_rng"]: the loop's generator for per-step draws (class
    sampling, class dropout), seeded from tcfg.seed and saved in each checkpoint, so a resumed run draws the
    classes an uninterrupted one does."""
    size = ctx["tcfg"].sampled_classes
    if size > 0:
        labels = torch.cat([t["labels"] for t in targets])
        classes, local = sample_vocabulary(labels, text.shape[0], size, ctx["step_rng"])
        text = text[classes.to(text.device)]
        local = local.split([len(t["labels"]) for t in targets])
        targets = [{**t, "labels": lb} for t, lb in zip(targets, local)]
    logits, labels = region_logits(model, images, targets, text)
    # Summed over this process's boxes / the boxes per process: averaged over processes, the mean over all.
    num_boxes = average_num_boxes(targets, logits.device)  # collective: before any early return
    if len(labels) == 0:
        loss = model.region_classifier.pool.prompt.sum() * 0.0
        return loss, {"loss_ce": 0.0, "accuracy": float("nan")}
    loss = F.cross_entropy(logits.float(), labels, reduction="sum") / num_boxes
    acc = float((logits.argmax(-1) == labels).float().mean())
    return loss, {"loss_ce": float(loss.detach()), "accuracy": acc}


def export_prompt(model, path: str | Path) -> None:
    pe = model.region_classifier.effective_positional_embedding().cpu().clone()
    atomic_write(path, lambda tmp: torch.save({PROMPT_KEY: pe}, tmp))


def train_prompt(model, dataset, out_dir, tcfg: TrainConfig | None = None, text_embeddings: Tensor | None = None,
                 resume: bool = False, progress: bool = True, evaluator=None) -> list[dict]:
    """Trains the region prompt of `model` (a CORA) in place; returns the log rows. Writes
    `<out_dir>/prompt.pth` with model/ at the run's end: all epochs, or tcfg.max_steps (process 0).
    evaluator: see run_training."""
    tcfg = tcfg if tcfg is not None else prompt_config()
    log = run_training(model, dataset, out_dir, tcfg, PROMPT_PREFIXES, prompt_step, {}, text_embeddings, resume,
                       progress, evaluator)
    if distributed.rank() == 0 and (Path(out_dir) / "model").is_dir():
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
