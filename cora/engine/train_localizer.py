"""Stage 2 of CORA's recipe: train the localizer (DAB-DETR + the pre-matcher's text projection).

    model = CORA.from_config(cfg, ...); load_into(model, prompt_checkpoint)   # stage 1's prompt
    train_localizer(model, dataset, "runs/loc", TrainConfig(epochs=35, batch_size=32))
    train_localizer(model, dataset, "runs/loc", tcfg, resume=True)             # after an interruption

CLIP and the region prompt stay frozen. AdamW, gradient clipping, an EMA of the trainable weights, and
class dropout: with probability p per iteration the vocabulary is split at random into two complementary
groups, the batch is doubled and each half is trained with one group's text embeddings only (ground truths
of the other group's classes are removed in that half). Losses: `cora.modeling.losses.SetCriterion`.

Output folder:
    log.jsonl, loss.png                  one JSON line per step; the loss curve (rewritten at each save)
    checkpoints/step_XXXXXXXX/           our checkpoint format (model.safetensors = EMA weights, config.json)
                                         + training_state.pt (raw weights, optimizer, EMA, RNG, position;
                                         loaded with weights_only=True)
    last_checkpoint                      name of the newest complete checkpoint (written atomically last)
    model/                               the final checkpoint (EMA weights), for `cora eval` / `cora detect`
Resuming continues from last_checkpoint and gives the weights of an uninterrupted run: the data order is
a function of (seed, epoch), each item's random transforms of (seed, epoch, index), and RNG states are saved.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cora.engine.checkpoint import save_checkpoint
from cora.fileio import atomic_write
from cora.modeling.losses import SetCriterion

SIZE_DIVISIBILITY = 32


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 35
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1     # 0: no clipping
    ema_decay: float = 0.99996     # 0: no EMA (checkpoints hold the raw weights)
    class_dropout: float = 0.2     # probability per iteration
    lr_drop_epoch: int | None = None  # lr x 0.1 from this epoch on (stage 1 uses 4)
    seed: int = 0
    num_workers: int = 0
    save_every: int = 0            # steps between checkpoints; 0: at the end of each epoch only
    max_steps: int | None = None   # stop (and save) after this many steps in all


# ---- data ----------------------------------------------------------------------------------------------


class SeededItems(Dataset):
    """dataset[index] with the torch RNG seeded by (seed, epoch, index): the same random transforms for an
    item whatever the worker, the batch order or an interruption. The caller's RNG is left untouched."""

    def __init__(self, dataset, seed: int, epoch: int):
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(index))
            return self.dataset[index]


def collate(batch):
    images, targets = zip(*batch)
    return list(images), list(targets)


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return [b.tolist() for b in order.split(batch_size)]


def pad_batch(images: list[Tensor]) -> tuple[Tensor, Tensor]:
    """List of Tensor[3, H_i, W_i] -> (Tensor[B, 3, H, W] zero-padded bottom/right to multiples of 32,
    Tensor[B, 2] int64 (h, w) sizes)."""
    hs, ws = [int(i.shape[1]) for i in images], [int(i.shape[2]) for i in images]
    ph, pw = (-(-max(v) // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY for v in (hs, ws))
    batch = images[0].new_zeros(len(images), 3, ph, pw)
    for i, img in enumerate(images):
        batch[i, :, : img.shape[1], : img.shape[2]] = img
    return batch, torch.tensor(list(zip(hs, ws)), dtype=torch.int64)


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


# ---- EMA, trainable parameters ---------------------------------------------------------------------------


class EMA:
    """Exponential moving average of the trainable parameters: ema = decay * ema + (1 - decay) * w."""

    def __init__(self, named_params: dict[str, Tensor], decay: float):
        self.decay = decay
        self.params = named_params
        self.shadow = {k: v.detach().clone() for k, v in named_params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for k, v in self.params.items():
            self.shadow[k].lerp_(v.detach(), 1 - self.decay)


def freeze_except(model: torch.nn.Module, prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """requires_grad only for parameters whose name starts with one of `prefixes`; returns them by name."""
    trainable = {}
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
        if p.requires_grad:
            trainable[name] = p
    return trainable


LOCALIZER_PREFIXES = ("localizer.", "prematcher.text_proj.")


# ---- checkpoints, log ------------------------------------------------------------------------------------


def save_training_checkpoint(out: Path, model, cfg, state: dict, ema: EMA | None, losses: list[float]) -> Path:
    name = f"step_{state['step']:08d}"
    folder = out / "checkpoints" / name
    learned = model.learned_state_dict()
    exported = {k: (ema.shadow[k] if ema is not None and k in ema.shadow else v) for k, v in learned.items()}
    save_checkpoint(folder, exported, cfg)
    full = {**state, "learned": {k: v.detach().cpu().clone() for k, v in learned.items()},
            "ema": ema.shadow if ema is not None else {}}
    atomic_write(folder / "training_state.pt", lambda tmp: torch.save(full, tmp))
    atomic_write(out / "last_checkpoint", lambda tmp: Path(tmp).write_text(name))
    for old in (out / "checkpoints").iterdir():  # keep the newest only
        if old.name != name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    plot_losses(losses, out / "loss.png")
    return folder


def load_training_state(out: Path) -> dict:
    pointer = out / "last_checkpoint"
    if not pointer.is_file():
        raise FileNotFoundError(f"nothing to resume in {out}: no last_checkpoint file")
    return torch.load(out / "checkpoints" / pointer.read_text().strip() / "training_state.pt",
                      map_location="cpu", weights_only=True)


def read_log(path: Path, up_to_step: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= up_to_step]


def plot_losses(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(losses) + 1), losses)
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_yscale("log" if losses and min(losses) > 0 else "linear")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)


# ---- the loop -----------------------------------------------------------------------------------------------


def train_localizer(model, dataset, out_dir, tcfg: TrainConfig = TrainConfig(), text_embeddings: Tensor | None = None,
                    resume: bool = False, progress: bool = True) -> list[dict]:
    """Trains `model` (a CORA) in place on `dataset` (items as cora.data.coco.CocoDetection gives them, labels
    indexing its `vocabulary` / `text_embeddings` [K, D]). Returns the log rows (one per step)."""
    step_fn = lambda model, images, targets, text, ctx: localizer_step(model, images, targets, text, ctx)
    return run_training(model, dataset, out_dir, tcfg, LOCALIZER_PREFIXES, step_fn,
                        {"criterion": SetCriterion()}, text_embeddings, resume, progress)


def localizer_step(model, images, targets, text, ctx) -> tuple[Tensor, dict[str, float]]:
    batch, sizes = pad_batch(images)
    batch, sizes = batch.to(model.device), sizes.to(model.device)
    halves = class_dropout_halves(targets, text.shape[0], ctx["tcfg"].class_dropout, ctx["dropout_rng"])
    outs, all_targets = [], []
    for keep, tg in halves:
        outs.append(model(batch, sizes, text[keep.to(text.device)]))
        all_targets += tg
    outputs = {"boxes": torch.cat([o["boxes"] for o in outs], 1), "objectness": torch.cat([o["objectness"] for o in outs], 1),
               "classes": torch.cat([o["classes"] for o in outs], 0)}
    losses = ctx["criterion"](outputs, all_targets)
    return ctx["criterion"].total(losses), {k: float(v.detach()) for k, v in losses.items()}


def run_training(model, dataset, out_dir, tcfg, prefixes, step_fn, ctx, text_embeddings, resume, progress) -> list[dict]:
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainable = freeze_except(model, prefixes)
    opt = torch.optim.AdamW(list(trainable.values()), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    if text_embeddings is None:
        text_embeddings = model.encode_vocabulary(list(dataset.vocabulary))
    text = text_embeddings.detach().to(model.device)
    ctx = {**ctx, "tcfg": tcfg, "dropout_rng": torch.Generator().manual_seed(tcfg.seed + 1)}
    ema = EMA(trainable, tcfg.ema_decay) if tcfg.ema_decay > 0 else None
    step, epoch, pos = 0, 0, 0
    torch.manual_seed(tcfg.seed)
    if resume:
        st = load_training_state(out)
        model.load_state_dict(st["learned"], strict=False)
        opt.load_state_dict(st["optimizer"])
        if ema is not None:
            ema.shadow = {k: st["ema"].get(k, v).clone() for k, v in ema.shadow.items()}
        torch.set_rng_state(st["rng"])
        ctx["dropout_rng"].set_state(st["dropout_rng"])
        step, epoch, pos = st["step"], st["epoch"], st["pos"]
    log = read_log(out / "log.jsonl", step)
    atomic_write(out / "log.jsonl", lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in log)))
    (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(tcfg), indent=2))
    losses = [r["loss"] for r in log]
    steps_per_epoch = math.ceil(len(dataset) / tcfg.batch_size)
    total = tcfg.epochs * steps_per_epoch if tcfg.max_steps is None else min(tcfg.max_steps, tcfg.epochs * steps_per_epoch)

    def save():
        state = {"step": step, "epoch": epoch, "pos": pos, "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                 "dropout_rng": ctx["dropout_rng"].get_state(), "train_config": dataclasses.asdict(tcfg)}
        return save_training_checkpoint(out, model, model.cfg, state, ema, losses)

    folder = None
    model.train()
    model.backbone.eval()  # frozen CLIP: BatchNorm statistics stay CLIP's
    bar = tqdm(total=total, initial=step, disable=not progress, desc="train", dynamic_ncols=True)
    with open(out / "log.jsonl", "a") as logf:
        while epoch < tcfg.epochs and step < total:
            for g in opt.param_groups:
                g["lr"] = tcfg.lr * (0.1 if tcfg.lr_drop_epoch is not None and epoch >= tcfg.lr_drop_epoch else 1.0)
            all_batches = epoch_batches(len(dataset), tcfg.batch_size, tcfg.seed, epoch)
            loader = DataLoader(SeededItems(dataset, tcfg.seed, epoch), batch_sampler=all_batches[pos:],
                                collate_fn=collate, num_workers=tcfg.num_workers)
            for images, targets in loader:
                loss, terms = step_fn(model, images, targets, text, ctx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if tcfg.clip_max_norm > 0:
                    torch.nn.utils.clip_grad_norm_(list(trainable.values()), tcfg.clip_max_norm)
                opt.step()
                if ema is not None:
                    ema.update()
                step, pos = step + 1, pos + 1
                row = {"step": step, "epoch": epoch, "lr": opt.param_groups[0]["lr"], "loss": float(loss.detach()), **terms}
                log.append(row), losses.append(row["loss"])
                logf.write(json.dumps(row) + "\n"), logf.flush()
                bar.update(1), bar.set_postfix(loss=f"{row['loss']:.4f}")
                if pos >= len(all_batches):
                    epoch, pos = epoch + 1, 0
                if tcfg.save_every and step % tcfg.save_every == 0 or pos == 0 or step >= total:
                    folder = save()
                if step >= total:
                    break
    bar.close()
    if step == tcfg.epochs * steps_per_epoch and folder is not None:  # finished: the final model
        shutil.copytree(folder, out / "model", dirs_exist_ok=True, ignore=shutil.ignore_patterns("training_state.pt"))
    return log
