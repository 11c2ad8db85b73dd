"""The training loop both stages share (`cora.engine.train_prompt`, `cora.engine.train_localizer`).

    run_training(model, dataset, "runs/x", TrainConfig(...), prefixes, step_fn, ctx, text, resume, progress)

step_fn(model, images, targets, text, ctx) -> (loss, {name: float}) computes one iteration's loss on this
process's share of the global batch; the loop does the rest: AdamW on the parameters named by `prefixes`
(everything else frozen, CLIP in eval mode), optional autocast (bf16 / fp16 with loss scaling), gradient
averaging over processes (cora.engine.distributed), clipping, EMA, the step lr drop, logging, checkpoints,
periodic evaluation and exact resume.

Output folder (process 0 writes it):
    log.jsonl, loss.png                  one JSON line per step; the loss curve (rewritten at each save)
    eval.jsonl                           one JSON line per evaluation (epoch, step, metrics)
    train_config.json                    the TrainConfig of the (last) run
    checkpoints/step_XXXXXXXX/           our checkpoint format (model.safetensors = EMA weights, config.json)
                                         + training_state.pt (raw weights, optimizer, EMA, grad scaler, every
                                         process's RNG, position, best metric; loaded with weights_only=True)
    last_checkpoint                      name of the newest complete checkpoint (written atomically last); resume
                                         follows it only to a step_XXXXXXXX folder of checkpoints/
    best/                                the checkpoint with the best evaluation metric so far (+ best.json)
    model/                               the checkpoint of the run's last step (EMA weights; all epochs done, or
                                         max_steps reached), for `cora eval` / `cora detect`
Resuming continues from last_checkpoint and gives the weights of an uninterrupted run: the data order is
a function of (seed, epoch), each item's random transforms of (seed, epoch, index), and RNG states are saved.
The model's initial weights are the caller's: `cora train` draws them (and a random CLIP) after
`torch.manual_seed(seed)` (cora.checkpoint.load_model), so the same command, resumed or not, gives the same run.
With N processes every global batch is split N ways (process r takes items r, r + N, ...), so N processes
train on the same global batches as one process does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cora.checkpoint import load_torch_file, save_checkpoint
from cora.data.coco import collate_fn
from cora.data.sampling import appearance_keys, epoch_indices, repeat_factors
from cora.engine import distributed
from cora.errors import UserError
from cora.fileio import atomic_write, write_json

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 35
    batch_size: int = 32           # global: images per iteration over all processes
    lr: float = 1e-4
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1     # 0: no clipping
    ema_decay: float = 0.99996     # 0: no EMA (checkpoints hold the raw weights)
    class_dropout: float = 0.2     # probability per iteration
    lr_drop_epoch: int | None = None  # lr x 0.1 from this epoch on (stage 1 uses 4)
    amp: str = "off"               # autocast: "off", "bf16" or "fp16" (fp16 with dynamic loss scaling)
    loss_scale: float = 2.0 ** 16  # fp16: the initial loss scale; halved (and the step skipped) whenever the
                                   # scaled gradients overflow, doubled after 2000 steps without overflow
    seed: int = 0
    num_workers: int = 0
    save_every: int = 0            # steps between checkpoints; 0: at the end of each epoch only
    max_steps: int | None = None   # stop after this many steps in all (>= 1), and save the model there
    eval_every: int = 0            # epochs between evaluations (needs an evaluator); 0: none
    eval_metric: str = "AP50_novel"  # the metric that picks best/ (coco-ovd: AP50_novel, lvis: APr)
    # LVIS options (0 = off)
    sampled_classes: int = 0       # stage 1: classes per iteration (those in the batch + sampled others; LVIS 100)
    repeat_factor_threshold: float = 0.0  # repeat-factor sampling threshold t (LVIS 0.001)
    relaxed_match_threshold: float = 0.0  # stage 2: a query may match a ground truth of a class whose text
                                          # embedding has cosine > this with its own (LVIS 0.7)

    def __post_init__(self):
        """The API's own check of every field (the CLI checks its flags first, with the flag names)."""
        if self.amp not in AMP_DTYPES:
            raise UserError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {self.amp!r}")
        ints = {"epochs": 1, "batch_size": 1, "max_steps": 1, "lr_drop_epoch": 0, "num_workers": 0, "save_every": 0,
                "eval_every": 0, "sampled_classes": 0}
        for name, low in ints.items():
            value = getattr(self, name)
            if value is None and name in ("max_steps", "lr_drop_epoch"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"{name} must be an integer >= {low}{' (0 = off)' if low == 0 else ''}, got {value!r}")
        finite = lambda v: 0 <= v < math.inf  # noqa: E731  (NaN fails every comparison: refused too)
        reals = {"lr": ("(0, inf)", lambda v: 0 < v < math.inf), "loss_scale": ("(0, inf)", lambda v: 0 < v < math.inf),
                 "weight_decay": ("[0, inf)", finite),
                 "clip_max_norm": ("[0, inf), 0 = off", finite), "ema_decay": ("[0, 1), 0 = off", lambda v: 0 <= v < 1),
                 "class_dropout": ("[0, 1]", lambda v: 0 <= v <= 1),
                 "repeat_factor_threshold": ("[0, 1], 0 = off", lambda v: 0 <= v <= 1),
                 "relaxed_match_threshold": ("[0, 1], 0 = off", lambda v: 0 <= v <= 1)}
        for name, (interval, ok) in reals.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise UserError(f"{name} must be a number in {interval}, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise UserError(f"seed must be an integer, got {self.seed!r}")


# ---- data ----------------------------------------------------------------------------------------------


class SeededItems(Dataset):
    """dataset[index] with the torch RNG seeded by (seed, epoch, index): the same random transforms for an
    item whatever the worker, the process, the batch order or an interruption. The caller's RNG is untouched."""

    def __init__(self, dataset, seed: int, epoch: int):
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int):
        """key: an appearance key (cora.data.sampling.appearance_keys); the item is key % len(dataset)."""
        with torch.random.fork_rng(devices=[]):
            # modulo 2^64: torch.manual_seed's range, reached by large --seed values
            torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(key)) % 2**64)
            return self.dataset[int(key) % len(self.dataset)]


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int, world_size: int = 1,
                  factors: Tensor | None = None) -> list[list[int]]:
    """The global batches of one epoch (appearance keys: an item repeated by repeat-factor sampling gets its own
    transforms each time), a function of (seed, epoch). With several processes a last batch smaller than the
    number of processes is left out (some process would have no image)."""
    order = appearance_keys(epoch_indices(num_items, seed, epoch, factors), num_items)
    return [b.tolist() for b in order.split(batch_size) if len(b) >= world_size]


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

    @contextmanager
    def applied(self):
        """The EMA weights in the model for the duration (evaluation), the trained ones after."""
        raw = {k: v.detach().clone() for k, v in self.params.items()}
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(self.shadow[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in self.params.items():
                    v.copy_(raw[k])


def freeze_except(model: torch.nn.Module, prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """requires_grad only for parameters whose name starts with one of `prefixes`; returns them by name."""
    trainable = {}
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
        if p.requires_grad:
            trainable[name] = p
    if not trainable:
        raise ValueError(f"no parameter of the model starts with {', '.join(prefixes)}")
    return trainable


# ---- checkpoints, log ------------------------------------------------------------------------------------


def save_training_checkpoint(out: Path, model, state: dict, ema: EMA | None, losses: list[float]) -> Path:
    name = f"step_{state['step']:08d}"
    folder = out / "checkpoints" / name
    learned = model.learned_state_dict()
    exported = {k: (ema.shadow[k] if ema is not None and k in ema.shadow else v) for k, v in learned.items()}
    save_checkpoint(folder, exported, model.cfg)
    full = {**state, "learned": {k: v.detach().cpu().clone() for k, v in learned.items()},
            "ema": ema.shadow if ema is not None else {}}
    atomic_write(folder / "training_state.pt", lambda tmp: torch.save(full, tmp))
    atomic_write(out / "last_checkpoint", lambda tmp: Path(tmp).write_text(name))
    for old in (out / "checkpoints").iterdir():  # keep the newest only
        if old.name != name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    plot_losses(losses, out / "loss.png")
    return folder


def last_checkpoint(out: Path) -> Path:
    """The folder `out/last_checkpoint` names: a step_XXXXXXXX folder in out/checkpoints holding a training
    state, nothing else (the pointer is a file anyone can edit: it never leads outside the run folder)."""
    pointer = out / "last_checkpoint"
    if not pointer.is_file():
        raise UserError(f"nothing to resume in {out}: no last_checkpoint file")
    name = pointer.read_text(errors="replace").strip()
    checkpoints = out / "checkpoints"
    folder = checkpoints / name
    if not re.fullmatch(r"step_\d{8}", name) or folder.resolve().parent != checkpoints.resolve():
        raise UserError(f"{pointer} must name a checkpoint folder in {checkpoints} (step_ and 8 digits), got {name[:80]!r}")
    if not (folder / "training_state.pt").is_file():
        raise UserError(f"{pointer} names {folder}, which holds no training_state.pt: nothing to resume")
    return folder


def load_training_state(folder: Path) -> dict:
    """The training state of a checkpoint folder (tensors and plain containers only: weights_only=True)."""
    try:
        return load_torch_file(folder / "training_state.pt")
    except ValueError as e:  # a damaged file or a refused pickle, named by load_torch_file
        raise UserError(str(e)) from None


def copy_checkpoint(src: Path, dst: Path) -> None:
    """src's model files to dst, replacing it whole (a copy beside it, then two renames)."""
    tmp, old = dst.with_name(f".{dst.name}.tmp"), dst.with_name(f".{dst.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("training_state.pt"))
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def read_jsonl(path: Path, up_to_step: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [{k: math.nan if v is None else v for k, v in r.items()} for r in rows]  # json_line's nulls
    return [r for r in rows if r["step"] <= up_to_step]


def json_line(row: dict) -> str:
    """One JSON line; NaN (a metric without ground truth, an accuracy without boxes) as null, for strict readers."""
    return json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}) + "\n"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(json_line(r) for r in rows)))


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


def run_training(model, dataset, out_dir, tcfg: TrainConfig, prefixes: tuple[str, ...], step_fn: Callable,
                 ctx: dict, text_embeddings: Tensor | None = None, resume: bool = False, progress: bool = True,
                 evaluator: Callable | None = None) -> list[dict]:
    """Trains the parameters of `model` named by `prefixes` on `dataset`; returns the log rows (one per step;
    on processes other than 0, those of this run only). evaluator(model) -> metrics dict (process 0; None on
    the others), called with the EMA weights every `tcfg.eval_every` epochs."""
    from tqdm import tqdm

    out = Path(out_dir)
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    if tcfg.batch_size % world:
        raise ValueError(f"batch_size {tcfg.batch_size} must be a multiple of the number of processes ({world})")
    if tcfg.eval_every and evaluator is None:
        raise ValueError("eval_every > 0 needs an evaluator (validation data)")
    if main:
        out.mkdir(parents=True, exist_ok=True)
    trainable = freeze_except(model, prefixes)
    params = list(trainable.values())
    opt = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    device_type = model.device.type
    amp_dtype = AMP_DTYPES[tcfg.amp]
    scaler = torch.amp.GradScaler(device_type, init_scale=tcfg.loss_scale, enabled=tcfg.amp == "fp16")
    if text_embeddings is None:
        text_embeddings = model.encode_vocabulary(list(dataset.vocabulary))
    text = text_embeddings.detach().to(model.device)
    ctx = {**ctx, "tcfg": tcfg, "step_rng": torch.Generator().manual_seed(tcfg.seed + 1)}
    ema = EMA(trainable, tcfg.ema_decay) if tcfg.ema_decay > 0 else None
    step, epoch, pos, best = 0, 0, 0, None
    torch.manual_seed(tcfg.seed + rank)
    folder = None  # the newest checkpoint of the run
    if resume:
        folder = last_checkpoint(out)
        st = load_training_state(folder)
        if len(st["rng"]) != world:
            raise ValueError(f"the checkpoint was written by {len(st['rng'])} processes; resume with as many, not {world}")
        for key in ("amp", "batch_size", "seed"):  # what the saved optimizer / scaler / data position assume
            if st["train_config"][key] != getattr(tcfg, key):
                raise ValueError(f"--resume with {key}={getattr(tcfg, key)!r}, but the run in {out} used "
                                 f"{st['train_config'][key]!r}: resume with the same {key}")
        model.load_state_dict(st["learned"], strict=False)
        opt.load_state_dict(st["optimizer"])
        scaler.load_state_dict(st["scaler"])
        if ema is not None:
            ema.shadow = {k: st["ema"].get(k, v).clone() for k, v in ema.shadow.items()}
        torch.set_rng_state(st["rng"][rank])
        ctx["step_rng"].set_state(st["step_rng"])
        step, epoch, pos, best = st["step"], st["epoch"], st["pos"], st["best"]
    factors = repeat_factors(dataset, tcfg.repeat_factor_threshold) if tcfg.repeat_factor_threshold > 0 else None
    epochs = [epoch_batches(len(dataset), tcfg.batch_size, tcfg.seed, e, world, factors) for e in range(tcfg.epochs)]
    planned = sum(len(b) for b in epochs)
    total = planned if tcfg.max_steps is None else min(tcfg.max_steps, planned)
    if planned == 0:
        raise UserError(f"the dataset's {len(dataset)} images give no batch of at least {world} (one per process)")
    if step > total:
        raise UserError(f"the run in {out} is at step {step}, past the {total} steps this one asks for "
                        f"(max_steps {tcfg.max_steps}, {planned} in {tcfg.epochs} epochs): nothing to resume")
    log = read_jsonl(out / "log.jsonl", step) if main else []
    evals = read_jsonl(out / "eval.jsonl", step) if main else []
    if main:
        write_jsonl(out / "log.jsonl", log)
        write_jsonl(out / "eval.jsonl", evals)
        write_json(out / "train_config.json", dataclasses.asdict(tcfg), indent=2)

    def save() -> Path | None:
        rngs = distributed.all_gather_objects(torch.get_rng_state())
        if not main:
            return None
        state = {"step": step, "epoch": epoch, "pos": pos, "best": best, "optimizer": opt.state_dict(),
                 "scaler": scaler.state_dict(), "rng": rngs, "step_rng": ctx["step_rng"].get_state(),
                 "train_config": dataclasses.asdict(tcfg)}
        return save_training_checkpoint(out, model, state, ema, [r["loss"] for r in log])

    def evaluate() -> bool:
        """Scores the EMA weights; True when they are the best so far (process 0)."""
        nonlocal best
        with ema.applied() if ema is not None else nullcontext():
            metrics = evaluator(model)
        if not main:
            return False
        if tcfg.eval_metric not in metrics:
            raise ValueError(f"evaluation gave no {tcfg.eval_metric!r}; metrics: {', '.join(metrics)}")
        value = metrics[tcfg.eval_metric]
        evals.append({"step": step, "epoch": epoch, **metrics})
        write_jsonl(out / "eval.jsonl", evals)
        improved = not math.isnan(value) and (best is None or value > best)  # NaN: no such ground truth
        best = value if improved else best
        if progress:
            tqdm.write(f"epoch {epoch}: {tcfg.eval_metric} {value:.4f} (best {'-' if best is None else f'{best:.4f}'})")
        return improved

    model.train()
    model.backbone.eval()  # frozen CLIP: BatchNorm statistics stay CLIP's
    bar = tqdm(total=total, initial=step, disable=not (progress and main), desc="train", dynamic_ncols=True)
    logf = open(out / "log.jsonl", "a") if main else None
    try:
        while epoch < tcfg.epochs and step < total:
            for g in opt.param_groups:
                g["lr"] = tcfg.lr * (0.1 if tcfg.lr_drop_epoch is not None and epoch >= tcfg.lr_drop_epoch else 1.0)
            shards = [b[rank::world] for b in epochs[epoch][pos:]]
            loader = DataLoader(SeededItems(dataset, tcfg.seed, epoch), batch_sampler=shards, collate_fn=collate_fn,
                                num_workers=tcfg.num_workers)
            start = time.perf_counter()
            for images, targets in loader:
                with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss, terms = step_fn(model, images, targets, text, ctx)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                distributed.average_gradients(params)
                scaler.unscale_(opt)
                if tcfg.clip_max_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, tcfg.clip_max_norm)
                scaler.step(opt)
                scaler.update()
                if ema is not None:
                    ema.update()
                step, pos = step + 1, pos + 1
                terms = distributed.mean_over_processes({"loss": float(loss.detach()), **terms})
                seconds, start = time.perf_counter() - start, time.perf_counter()
                row = {"step": step, "epoch": epoch, "lr": opt.param_groups[0]["lr"], **terms,
                       "images_per_s": tcfg.batch_size / seconds}
                log.append(row)
                if main:
                    logf.write(json_line(row)), logf.flush()
                    bar.update(1), bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.1f}")
                if pos >= len(epochs[epoch]):
                    epoch, pos = epoch + 1, 0
                improved = pos == 0 and tcfg.eval_every > 0 and epoch % tcfg.eval_every == 0 and evaluate()
                if tcfg.save_every and step % tcfg.save_every == 0 or pos == 0 or step >= total:
                    folder = save()
                if improved:
                    copy_checkpoint(folder, out / "best")
                    write_json(out / "best" / "best.json", evals[-1], indent=2)
                if step >= total:
                    break
    finally:
        bar.close()
        if logf is not None:
            logf.close()
    if main and step == total:  # the run's end (all epochs or max_steps): its model
        copy_checkpoint(folder, out / "model")
    distributed.barrier()
    return log
