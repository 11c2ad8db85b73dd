"""Stage 2 of CORA's recipe: train the localizer (DAB-DETR + the pre-matcher's text projection).

    model = CORA.from_config(cfg, ...); load_into(model, prompt_checkpoint)   # stage 1's prompt
    train_localizer(model, dataset, "runs/loc", TrainConfig(epochs=35, batch_size=32))
    train_localizer(model, dataset, "runs/loc", tcfg, resume=True)             # after an interruption

CLIP and the region prompt stay frozen. Class dropout: with probability p per iteration the vocabulary is
split at random into two complementary groups, the batch is doubled and each half is trained with one
group's text embeddings only (ground truths of the other group's classes are removed in that half); CLIP and
the encoder run once for both halves (CORA.forward_train).
Losses: `cora.modeling.losses.SetCriterion`, computed in float32 under autocast. The loop (optimizer, EMA,
checkpoints, resume, processes, evaluation) is `cora.engine.trainer.run_training`; its docstring lists the
output folder.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cora.engine.trainer import TrainConfig, run_training
from cora.preprocess import pad_batch
from cora.modeling.losses import SetCriterion
from cora.modeling.matcher import similar_classes

LOCALIZER_PREFIXES = ("localizer.", "prematcher.text_proj.")


# ---- class dropout -------------------------------------------------------------------------------------


def split_classes(num_classes: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two complementary, non-empty groups of class indices (sorted), drawn at random (num_classes >= 2)."""
    while True:
        in_first = torch.rand(num_classes, generator=generator) < 0.5
        if 0 < int(in_first.sum()) < num_classes:
            return in_first.nonzero().squeeze(1), (~in_first).nonzero().squeeze(1)


def restrict_targets(targets: list[dict], keep: Tensor, num_classes: int) -> list[dict]:
    """Targets with only the ground truths of classes `keep`, relabelled to indices into `keep`
    ("class_ids" keeps the original labels)."""
    local = torch.full((num_classes,), -1, dtype=torch.int64)
    local[keep] = torch.arange(len(keep))
    out = []
    for t in targets:
        new = local[t["labels"]]
        m = new >= 0
        out.append({"boxes": t["boxes"][m], "boxes_cxcywh": t["boxes_cxcywh"][m], "labels": new[m],
                    "class_ids": t["labels"][m]})
    return out


def class_dropout_halves(targets: list[dict], num_classes: int, p: float, generator: torch.Generator):
    """[(class indices, targets)] for each forward pass: one pass with every class, or (probability p)
    two passes over the same images, one per complementary group."""
    if p > 0 and num_classes >= 2 and float(torch.rand((), generator=generator)) < p:
        return [(g, restrict_targets(targets, g, num_classes)) for g in split_classes(num_classes, generator)]
    return [(torch.arange(num_classes), targets)]


def train_localizer(model, dataset, out_dir, tcfg: TrainConfig = TrainConfig(), text_embeddings: Tensor | None = None,
                    resume: bool = False, progress: bool = True, evaluator=None) -> list[dict]:
    """Trains `model` (a CORA) in place on `dataset` (items as cora.data.coco.CocoDetection gives them, labels
    indexing its `vocabulary` / `text_embeddings` [K, D]). Returns the log rows (one per step).
    evaluator: see run_training."""
    return run_training(model, dataset, out_dir, tcfg, LOCALIZER_PREFIXES, localizer_step,
                        {"criterion": SetCriterion()}, text_embeddings, resume, progress, evaluator)


def localizer_step(model, images, targets, text, ctx) -> tuple[Tensor, dict[str, float]]:
    tcfg = ctx["tcfg"]
    batch, sizes = pad_batch(images)
    batch, sizes = batch.to(model.device), sizes.to(model.device)
    halves = class_dropout_halves(targets, text.shape[0], tcfg.class_dropout, ctx["step_rng"])
    groups = [keep.to(text.device) for keep, _ in halves]
    out = model.forward_train(batch, sizes, [text[keep] for keep in groups])
    # Each half's classes index its own group: back to vocabulary indices, so that one index is one class in
    # both halves (the relaxed matching's class pairs are over the vocabulary).
    classes = torch.cat([keep[c] for keep, c in zip(groups, out["classes"].chunk(len(groups)))])
    all_targets = [{**t, "labels": t["class_ids"]} if "class_ids" in t else t for _, tg in halves for t in tg]
    outputs = {"boxes": out["boxes"].float(), "objectness": out["objectness"].float(), "classes": classes}
    compatible = None
    if tcfg.relaxed_match_threshold > 0:  # the vocabulary is fixed for the run: computed once
        if "compatible" not in ctx:
            ctx["compatible"] = similar_classes(text, tcfg.relaxed_match_threshold)
        compatible = ctx["compatible"]
    losses = ctx["criterion"](outputs, all_targets, compatible)
    return ctx["criterion"].total(losses), {k: float(v.detach()) for k, v in losses.items()}
