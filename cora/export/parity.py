"""Parity of an exported CORA with PyTorch: test cases and a slot-by-slot comparison of detections.

The reference is the module that was exported (`cora.export.graph.export_module`: `CORA.forward`, the one
detection path, or its baked-vocabulary wrapper), run eagerly on the same padded batch and image_sizes. The
cases cover whole inputs (image_sizes = the input size) and letterboxed batches at two sizes whose images
have different valid sizes, none a multiple of 32 (as resizing gives: 800 x 1333 padded to 800 x 1344), so
the padding mask, the positional encoding and the box scale are all exercised.

In float32 the comparison is index for index: both sides break score ties alike (cora.modeling.scoring), so
every slot must hold the same label, and boxes and scores within `TOLERANCES`. The one exception is a score
that lies on a step of the ranking key (within float noise, ON_STEP): it may be ranked on either side of the
step, which moves a few detections by a slot and may make NMS keep the other of two overlapping boxes; such a
window is accepted only when every difference in it is explained that way (counted in the "step" column). Only where precision is
reduced (fp16, TensorRT: `reduced_precision=True`) may two detections of equal label and score (within
tolerance) pair up out of order, a tie swap, and only when their boxes overlap above the NMS IoU (NMS kept
the other of two near-equal boxes at that place); a box elsewhere never passes. All failures are collected
into one ParityError giving each output's max difference and tolerance.

Shapes: images [B, 3, H, W] float in [0, 1], image_sizes [B, 2] int64 (h, w), text_embeddings [K, D],
class_prior [K]; detections padded to M per image: boxes [B, M, 4] xyxy in input pixels, scores [B, M],
labels [B, M] int64 (-1 in empty slots). The command line is `cora check parity` (export/check.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cora.errors import UserError

# Absolute tolerances: boxes in input pixels, scores in probability.
TOLERANCES = {"boxes": 1e-4, "scores": 1e-4}
# Reduced precision (fp16 / TensorRT): looser values, and tie swaps of overlapping boxes allowed.
REDUCED_TOLERANCES = {"boxes": 0.5, "scores": 2e-3}


class ParityError(UserError):
    """The exported model and PyTorch disagree. `.failures`: one dict per output (max diff, tolerance, cases);
    `.rows`: the per-case table."""

    def __init__(self, failures: list[dict], rows: list[dict]):
        self.failures, self.rows = failures, rows
        lines = [f"{f['output']}: max diff {f['max_diff']:.3g} > tolerance {f['tolerance']:.3g}"
                 + (f" ({f['detail']})" if f.get("detail") else "") + f" in {', '.join(f['cases'])}"
                 for f in failures]
        super().__init__("the export differs from PyTorch: " + "; ".join(lines))


@dataclass
class ParityCase:
    """One run: images [B, 3, H, W] in [0, 1] (0 outside each image's valid region), image_sizes [B, 2] int64
    (h, w) of the valid regions in input pixels, text_embeddings [K, D] (None for a baked vocabulary),
    class_prior [K]. All torch tensors."""

    name: str
    images: object
    image_sizes: object
    text_embeddings: object
    class_prior: object

    def inputs(self) -> dict:
        """The graph inputs by name (no text_embeddings for a baked vocabulary)."""
        feed = {"images": self.images, "image_sizes": self.image_sizes, "text_embeddings": self.text_embeddings,
                "class_prior": self.class_prior}
        return {k: v for k, v in feed.items() if v is not None}


def synthetic_images(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """[B, 3, H, W] float32 in [0, 1]: a smooth background with a few flat-coloured rectangles and discs."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((batch, 3, height, width), np.float32)
    for b in range(batch):
        base = rng.uniform(0.2, 0.8, size=(3, 1, 1)).astype(np.float32)
        img = base + 0.15 * np.sin(xs / width * rng.uniform(2, 6))[None] * np.cos(ys / height * rng.uniform(2, 6))[None]
        for _ in range(rng.integers(2, 6)):
            colour = rng.uniform(0, 1, size=(3, 1, 1)).astype(np.float32)
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(0.05, 0.3) * height, rng.uniform(0.05, 0.3) * width
            if rng.random() < 0.5:
                mask = (np.abs(ys - cy) < ry) & (np.abs(xs - cx) < rx)
            else:
                mask = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 < 1
            img = np.where(mask[None], colour, img)
        out[b] = np.clip(img, 0, 1)
    return out


def letterboxed_sizes(batch: int, height: int, width: int) -> list[tuple[int, int]]:
    """Valid (h, w) of `batch` images padded to (height, width): from 0.8 of each side down to 0.5, different
    per image and never a multiple of 32 (so at least one stride-16 cell is padding from 96 px up)."""
    sizes = []
    for b in range(batch):
        frac = 0.8 - 0.3 * b / max(1, batch - 1)
        h, w = (max(1, round(side * frac)) for side in (height, width))
        sizes.append(tuple(v - 1 if v % 32 == 0 else v for v in (h, w)))
    return sizes


def default_cases(meta: dict, ks=(1, 80, 1203), batch: int = 2, sizes=None, seed: int = 0) -> list[ParityCase]:
    """Per K: random whole images at the first size, synthetic whole images at the last (prior ones / 8 on
    odd classes), and synthetic images letterboxed into each size (`letterboxed_sizes`: zero padding at the
    bottom / right, valid sizes not multiples of 32, different per image; prior 8 on odd classes).

    meta: the export's sidecar. sizes: list of (H, W); default: the static size, or the export's example
    size and a smaller one for a dynamic-size export. A baked vocabulary fixes K (ks is then ignored).
    """
    import torch

    if meta.get("image_size"):
        sizes = [tuple(meta["image_size"])]
    elif sizes is None:
        from cora.config import config_from_dict
        from cora.export.graph import default_image_size

        h, w = default_image_size(config_from_dict(meta["config"]))
        sizes = [(h, w), (max(32, h - 32), max(32, w - 64))]
    baked = meta.get("vocabulary")
    if baked:
        ks = (len(baked),)
    g = torch.Generator().manual_seed(seed)
    cases = []
    for i, k in enumerate(ks):
        text = None if baked else torch.nn.functional.normalize(torch.randn(k, meta["embed_dim"], generator=g), dim=-1)
        (h1, w1), (h2, w2) = sizes[0], sizes[-1]
        prior = torch.ones(k)
        boosted = torch.where(torch.arange(k) % 2 == 1, 8.0, 1.0)
        whole = lambda h, w: torch.tensor([[h, w]] * batch, dtype=torch.int64)  # noqa: E731
        cases.append(ParityCase(f"random K={k} {batch}x{h1}x{w1}", torch.rand(batch, 3, h1, w1, generator=g),
                                whole(h1, w1), text, prior))
        cases.append(ParityCase(f"synthetic K={k} {batch}x{h2}x{w2}",
                                torch.from_numpy(synthetic_images(batch, h2, w2, seed + i)), whole(h2, w2), text, boosted))
        for j, (h, w) in enumerate(dict.fromkeys(sizes)):
            valid = letterboxed_sizes(batch, h, w)
            images = torch.from_numpy(synthetic_images(batch, h, w, seed + (j + 1) * len(ks) + i))
            for b, (vh, vw) in enumerate(valid):  # letterbox padding is 0 (cora.preprocess.pad_batch)
                images[b, :, vh:] = 0
                images[b, :, :, vw:] = 0
            cases.append(ParityCase(f"letterboxed K={k} {batch}x{h}x{w} valid {' '.join(f'{a}x{b}' for a, b in valid)}",
                                    images, torch.tensor(valid, dtype=torch.int64), text, boosted))
    return cases


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 4] x [M, 4] xyxy -> [N, M]."""
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-12)


def compare_detections(ref: tuple, got: tuple, tolerances: dict = TOLERANCES, reduced_precision: bool = False,
                       nms_iou: float = 0.5) -> dict:
    """One image's detections, slot by slot.

    ref, got: (boxes [M, 4], scores [M], labels [M]) numpy, label -1 in empty slots.
    Float32 (`reduced_precision` off): slot i of both sides must hold the same label, and boxes / scores
    within tolerance, unless a score crossing a step of the ranking key explains every difference
    (`_step_crossing`; those slots are counted in "boundary"). Reduced precision: a slot that differs may pair with a free slot of the other side
    holding the same label, a score within tolerance and a box overlapping it above `nms_iou` (a tie swap).
    Returns {"slots" (filled on either side), "same" (paired in place), "ties", "boundary", "unmatched",
    "box_diff", "score_diff" (max over pairs)}.
    """
    (rb, rs, rl), (gb, gs, gl) = [tuple(np.asarray(x) for x in d) for d in (ref, got)]
    filled = (rl >= 0) | (gl >= 0)
    in_place = filled & (rl == gl) & (np.abs(rs - gs) <= tolerances["scores"]) \
        & (np.abs(rb - gb).max(-1) <= tolerances["boxes"])
    pairs = [(i, i) for i in np.flatnonzero(filled & (rl == gl))] if not reduced_precision else \
        [(i, i) for i in np.flatnonzero(in_place)]
    ties = boundary = 0
    if reduced_precision:
        free_r = filled & ~in_place & (rl >= 0)
        free_g = filled & ~in_place & (gl >= 0)
        iou = box_iou(rb, gb) if len(rb) else np.zeros((0, 0))
        for i in np.flatnonzero(free_r):
            cand = np.flatnonzero(free_g & (gl == rl[i]) & (np.abs(gs - rs[i]) <= tolerances["scores"])
                                  & (iou[i] > nms_iou))
            if len(cand):
                j = cand[np.argmax(iou[i, cand])]
                free_r[i] = free_g[j] = False
                pairs.append((i, j))
                ties += 1
        unmatched = int(free_r.sum() + free_g.sum())
    else:
        moved = _step_crossing(rb, rs, rl, gb, gs, gl, filled & ~in_place, tolerances, nms_iou)
        if moved is not None:  # every difference comes from a score on a step of the ranking key
            pairs = [(i, i) for i in np.flatnonzero(in_place)] + moved
            unmatched, boundary = 0, int((filled & ~in_place).sum())
        else:
            unmatched = int((filled & (rl != gl)).sum())
    box_diff = max((float(np.abs(rb[i] - gb[j]).max()) for i, j in pairs), default=0.0)
    score_diff = max((float(abs(rs[i] - gs[j])) for i, j in pairs), default=0.0)
    return {"slots": int(filled.sum()), "same": int(in_place.sum()), "ties": ties, "boundary": boundary,
            "unmatched": unmatched, "box_diff": box_diff, "score_diff": score_diff}


# A score within this of a multiple of SCORE_STEP may fall on either side of the step in two runtimes (float32
# noise of a score in [0, 1] is ~1e-7; 1e-6 leaves margin and marks ~3% of random scores).
ON_STEP = 1e-6


def _step_crossing(rb, rs, rl, gb, gs, gl, off, tolerances: dict, nms_iou: float) -> list | None:
    """The pairs (ref slot, got slot) of the differing slots `off` when a step crossing explains them all, else
    None. A score on a step (ON_STEP) can get different ranking keys on the two sides: that detection then
    moves, the detections it passes shift by one slot, and NMS may keep the other of two overlapping boxes.
    So each differing detection must be the same detection (label, box and score within tolerance) at
    another slot, or, unpaired, be on a step or overlap (same label, IoU > nms_iou) a crossing detection.
    Returns None when no detection crossed a step or any difference is unexplained."""
    from cora.modeling.scoring import SCORE_STEP

    if not off.any():
        return []
    on_step = lambda s: (s > 0) & (np.abs(s - np.round(s / SCORE_STEP) * SCORE_STEP) <= ON_STEP)  # noqa: E731
    free_r, free_g = off & (rl >= 0), off & (gl >= 0)
    pairs = []
    for i in np.flatnonzero(free_r):
        same = np.flatnonzero(free_g & (gl == rl[i]) & (np.abs(gs - rs[i]) <= tolerances["scores"])
                              & (np.abs(gb - rb[i]).max(-1) <= tolerances["boxes"]))
        if len(same):
            free_r[i] = free_g[same[0]] = False
            pairs.append((i, same[0]))
    key = lambda s: np.floor(s / SCORE_STEP)  # noqa: E731  the ranking key (cora.modeling.scoring)
    crossed = any(key(rs[i]) != key(gs[j]) for i, j in pairs)
    # A detection left on one side only (NMS removed the other side's copy) is explained when its score is on
    # a step and the other side holds, unpaired, an overlapping box of its label (the one NMS kept instead),
    # which it explains in turn.
    ok_r, ok_g = np.zeros_like(free_r), np.zeros_like(free_g)
    for (b, s, lab, free, ok), (ob, olab, ofree, ook) in (((rb, rs, rl, free_r, ok_r), (gb, gl, free_g, ok_g)),
                                                          ((gb, gs, gl, free_g, ok_g), (rb, rl, free_r, ok_r))):
        for i in np.flatnonzero(free):
            kept = ofree & (olab == lab[i]) & (box_iou(b[i:i + 1], ob)[0] > nms_iou)
            if on_step(s[i]) and kept.any():
                ok[i] = True
                ook |= kept
    if not (crossed or ok_r.any()) or (free_r & ~ok_r).any() or (free_g & ~ok_g).any():
        return None
    return pairs


def parity_check(path, module, cases: list[ParityCase], tolerances: dict | None = None, providers=None,
                 run=None, reduced_precision: bool = False, nms_iou: float = 0.5) -> list[dict]:
    """Run every case through `module` (PyTorch) and the exported file; returns one row per case, or raises
    ParityError with every failure.

    module: the reference, called with the case's inputs (`ParityCase.inputs`, positionally in graph order)
    and returning padded (boxes, scores, labels) as the graph does. path: the .onnx run by ONNX Runtime
    (`providers`), unless `run(feed: dict of numpy) -> (boxes, scores, labels)` runs another backend (a
    TensorRT engine, a served model). tolerances: default TOLERANCES, or REDUCED_TOLERANCES with
    `reduced_precision`."""
    import torch

    tolerances = tolerances or (REDUCED_TOLERANCES if reduced_precision else TOLERANCES)
    if run is None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        run = lambda feed: session.run(["boxes", "scores", "labels"], {n: feed[n] for n in names})  # noqa: E731
    rows = []
    for case in cases:
        feed = case.inputs()
        with torch.no_grad():
            ref = [t.numpy() for t in module(*feed.values())]
        got = [np.asarray(x) for x in run({k: v.numpy() for k, v in feed.items()})]
        row = {"case": case.name, "slots": 0, "same": 0, "ties": 0, "boundary": 0, "unmatched": 0, "box_diff": 0.0,
               "score_diff": 0.0,
               "shapes_ok": all(r.shape == g.shape for r, g in zip(ref, got)) and got[2].dtype == np.int64}
        if row["shapes_ok"]:
            for b in range(ref[0].shape[0]):
                m = compare_detections(tuple(r[b] for r in ref), tuple(g[b] for g in got), tolerances,
                                       reduced_precision, nms_iou)
                for key in ("slots", "same", "ties", "boundary", "unmatched"):
                    row[key] += m[key]
                row["box_diff"] = max(row["box_diff"], m["box_diff"])
                row["score_diff"] = max(row["score_diff"], m["score_diff"])
        rows.append(row)
    failures = _failures(rows, tolerances)
    if failures:
        raise ParityError(failures, rows)
    return rows


def _failures(rows: list[dict], tolerances: dict) -> list[dict]:
    failures = []
    for output, key in (("boxes", "box_diff"), ("scores", "score_diff")):
        bad = [r for r in rows if r[key] > tolerances[output]]
        if bad:
            failures.append({"output": output, "max_diff": max(r[key] for r in bad), "tolerance": tolerances[output],
                             "cases": [r["case"] for r in bad]})
    bad = [r for r in rows if r["unmatched"] or not r["shapes_ok"]]
    if bad:
        detail = f"{sum(r['unmatched'] for r in bad)} slot(s) with another label or no partner, " \
                 f"{sum(not r['shapes_ok'] for r in bad)} case(s) with wrong output shapes / dtypes"
        failures.append({"output": "labels", "max_diff": float(sum(r["unmatched"] for r in bad)), "tolerance": 0.0,
                         "detail": detail, "cases": [r["case"] for r in bad]})
    return failures


def format_table(rows: list[dict]) -> str:
    head = ("case", "slots", "same", "ties", "step", "unmatched", "max|box|", "max|score|")
    lines = [" | ".join(head)]
    for r in rows:
        lines.append(" | ".join([r["case"], str(r["slots"]), str(r["same"]), str(r["ties"]), str(r["boundary"]),
                                 str(r["unmatched"]),
                                 f"{r['box_diff']:.2e}", f"{r['score_diff']:.2e}"]))
    return "\n".join(lines)


def text_encoder_parity(path, module, tokens, atol: float = 1e-5) -> float:
    """Max |ONNX Runtime - module(tokens)| (module: cora.export.graph.TextEncoderGraph, tokens [N, 77]);
    raises ParityError above atol."""
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        ref = module(tokens).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["embeddings"], {"tokens": tokens.numpy()})
    diff = float(np.abs(ref - got).max())
    if diff > atol:
        raise ParityError([{"output": "embeddings", "max_diff": diff, "tolerance": atol,
                            "cases": [f"{len(tokens)} prompts"]}], [])
    return diff
