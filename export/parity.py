"""Parity of an exported CORA with PyTorch: test cases, the PyTorch reference, tie-aware matching.

Parity compares ONNX Runtime with the PyTorch model rebuilt from the export's sidecar: `CORA.forward` +
`postprocess` (`DetectorReference`, what `CORA.detect` runs after resizing and padding) on the same padded
batch and image_sizes. The cases cover whole inputs (image_sizes = the input size) and letterboxed batches
whose images have different valid sizes, none a multiple of 32 (as resizing gives: 800 x 1333 padded to
800 x 1344), so the padding mask, the positional encoding and the box scale are all exercised.

It is tie-aware: with random weights softmax(100 * cos) saturates, many scores tie, and the two
runtimes order ties differently. So detections are matched by label, box IoU and score, not by slot;
an unmatched pair with equal scores is a tie swap (NMS kept the other of two equal boxes), a box that an
explained box of the other side would have suppressed is a cascade of it, and one within
tolerance of the cut-off (the M-th score or the threshold) is a boundary swap. Pairs are made by label and
box IoU; box and score differences are measured over them. All failures are collected
into one ParityError giving each output's max difference and tolerance.

Shapes: images [B, 3, H, W] float in [0, 1], image_sizes [B, 2] int64 (h, w), text_embeddings [K, D],
class_prior [K]; detections padded to M = max_detections per image: boxes [B, M, 4] xyxy in input pixels,
scores [B, M], labels [B, M] int64 (-1 in empty slots). Tolerances are absolute (`TOLERANCES`). The command
line is export/check.py (`parity`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Absolute tolerances: boxes in input pixels, scores in probability.
TOLERANCES = {"boxes": 0.05, "scores": 1e-4}
MATCH_IOU = 0.9        # a detection pair is "the same box" above this IoU


class ParityError(Exception):
    """ONNX Runtime and PyTorch disagree. `.failures`: one dict per output (max diff, tolerance, cases);
    `.rows`: the per-case table."""

    def __init__(self, failures: list[dict], rows: list[dict]):
        self.failures, self.rows = failures, rows
        lines = [f"{f['output']}: max diff {f['max_diff']:.3g} > tolerance {f['tolerance']:.3g}"
                 + (f" ({f['detail']})" if f.get("detail") else "") + f" in {', '.join(f['cases'])}"
                 for f in failures]
        super().__init__("ONNX Runtime differs from PyTorch:\n  " + "\n  ".join(lines))


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


class DetectorReference:
    """The parity check's reference: `CORA.forward` + `postprocess` (what `CORA.detect` runs after it has
    resized and padded the images), with the exported graph's inputs and padded outputs.

    __call__(images [B, 3, H, W], image_sizes [B, 2] (h, w), text_embeddings [K, D] (not with a baked
    vocabulary), class_prior [K]) -> (boxes [B, M, 4] xyxy input pixels of each valid region, scores [B, M],
    labels [B, M] int64; -1, score 0 and box 0 in empty slots), all numpy.

    Args:
        detector: a `cora.modeling.detector.CORA` (eval mode).
        text_embeddings: Tensor[K, D] of a baked vocabulary, or None.
        score_threshold, nms_iou, max_detections, pre_nms_topk: the export's post-processing (its sidecar's
            "postprocess").
    """

    def __init__(self, detector, text_embeddings=None, *, score_threshold: float, nms_iou: float,
                 max_detections: int, pre_nms_topk: int):
        self.detector, self.baked_text = detector, text_embeddings
        self.score_threshold, self.nms_iou = float(score_threshold), float(nms_iou)
        self.max_detections, self.pre_nms_topk = int(max_detections), int(pre_nms_topk)

    def __call__(self, images, image_sizes, text_embeddings=None, *, class_prior) -> tuple:
        import torch

        from cora.modeling.postprocess import postprocess

        text = self.baked_text if text_embeddings is None else text_embeddings
        with torch.no_grad():
            out = self.detector(images, image_sizes, text, class_prior)
            # boxes relative to each un-padded image, scaled by image_sizes: input pixels, clipped to the valid region
            dets = postprocess(out["class_logits"], out["objectness"][-1], out["boxes"][-1], image_sizes,
                               self.score_threshold, self.nms_iou, self.max_detections, self.pre_nms_topk)
        b, m = len(dets), self.max_detections
        boxes, scores, labels = np.zeros((b, m, 4), np.float32), np.zeros((b, m), np.float32), -np.ones((b, m), np.int64)
        for i, d in enumerate(dets):
            n = len(d["scores"])
            boxes[i, :n], scores[i, :n], labels[i, :n] = d["boxes"].numpy(), d["scores"].numpy(), d["labels"].numpy()
        return boxes, scores, labels


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


def default_cases(meta: dict, ks=(1, 2, 65, 1203, 4096), batch: int = 2, sizes=None, seed: int = 0) -> list[ParityCase]:
    """Per K: random whole images at the first size, synthetic whole images at the last (prior ones / 8 on
    odd classes), and synthetic images letterboxed into the first size (`letterboxed_sizes`: zero padding
    at the bottom / right, valid sizes not multiples of 32, different per image; prior 8 on odd classes).

    meta: the export's sidecar. sizes: list of (H, W); default: the static size, or the export's example
    size and a smaller one for a dynamic-size export. A baked vocabulary fixes K (ks is then ignored).
    """
    import torch

    if meta.get("image_size"):
        sizes = [tuple(meta["image_size"])]
    elif sizes is None:
        from export.to_onnx import default_image_size
        from cora.config import config_from_dict

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
        valid = letterboxed_sizes(batch, h1, w1)
        images = torch.from_numpy(synthetic_images(batch, h1, w1, seed + len(ks) + i))
        for b, (h, w) in enumerate(valid):  # letterbox padding is 0 (cora.runtime.preprocess, CORA.preprocess)
            images[b, :, h:] = 0
            images[b, :, :, w:] = 0
        cases.append(ParityCase(f"letterboxed K={k} {batch}x{h1}x{w1} valid {' '.join(f'{h}x{w}' for h, w in valid)}",
                                images, torch.tensor(valid, dtype=torch.int64), text, boosted))
    return cases


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 4] x [M, 4] xyxy -> [N, M]."""
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-12)


def match_detections(ref: tuple, got: tuple, max_detections: int, score_threshold: float,
                     tolerances: dict = TOLERANCES, nms_iou: float = 0.5) -> dict:
    """Tie-aware comparison of one image's detections.

    ref, got: (boxes [M, 4], scores [M], labels [M]) with label -1 in empty slots.
    Returns counts ("ref", "got", "matched", "ties", "cascades", "boundary", "unmatched"), the max box / score
    difference over matched pairs and "top_label_ok".
    """
    tol = tolerances["scores"]
    (rb, rs, rl), (gb, gs, gl) = [tuple(np.asarray(x) for x in d) for d in (ref, got)]
    rv, gv = rl >= 0, gl >= 0
    rb, rs, rl, gb, gs, gl = rb[rv], rs[rv], rl[rv], gb[gv], gs[gv], gl[gv]
    iou = box_iou(rb, gb) if len(rb) and len(gb) else np.zeros((len(rb), len(gb)))
    same_label = rl[:, None] == gl[None]
    same = same_label & (np.abs(rs[:, None] - gs[None]) <= tol)
    free_g = np.ones(len(gb), bool)
    pairs, left_r = [], []
    for i in np.argsort(-rs, kind="stable"):  # NMS leaves at most one box per (label, place): IoU decides
        cand = np.where(same_label[i] & free_g & (iou[i] >= MATCH_IOU))[0]
        if len(cand):
            j = cand[np.argmax(iou[i, cand])]
            free_g[j] = False
            pairs.append((i, j))
        else:
            left_r.append(i)
    explained_r, explained_g = np.zeros(len(rb), bool), np.zeros(len(gb), bool)
    ties = 0
    for i in left_r:  # same label and score, another box: NMS kept the other of two tied boxes
        cand = np.where(same[i] & free_g)[0]
        if len(cand):
            free_g[cand[0]] = False
            explained_r[i] = explained_g[cand[0]] = True
            ties += 1
    # A tie swap cascades: the box kept on one side suppresses lower ones the other side keeps. A leftover
    # is explained when a same-label, higher-scored, itself explained box of the other side overlaps it
    # above the NMS IoU (it is what suppressed it there).
    left_g = free_g.copy()
    still_r = [i for i in left_r if not explained_r[i]]
    cascades, changed = 0, True
    while changed:
        changed = False
        for side, (b1, s1, l1, e1, b2, s2, l2, e2) in enumerate(((rb, rs, rl, explained_r, gb, gs, gl, explained_g),
                                                                (gb, gs, gl, explained_g, rb, rs, rl, explained_r))):
            todo = still_r if side == 0 else np.where(left_g & ~explained_g)[0]
            for x in todo:
                if e1[x] or not len(b2):
                    continue
                over = box_iou(b1[x:x + 1], b2)[0] > nms_iou
                if (over & e2 & (l2 == l1[x]) & (s2 >= s1[x] - tol)).any():
                    e1[x] = changed = True
                    cascades += 1
    still_r = [i for i in still_r if not explained_r[i]]
    still_g = np.where(left_g & ~explained_g)[0]
    cut_r = rs.min() if len(rs) >= max_detections else score_threshold
    cut_g = gs.min() if len(gs) >= max_detections else score_threshold
    boundary = sum(abs(rs[i] - cut_g) <= tol for i in still_r) + sum(abs(gs[j] - cut_r) <= tol for j in still_g)
    unmatched = len(still_r) + len(still_g) - boundary
    box_diff = max((float(np.abs(rb[i] - gb[j]).max()) for i, j in pairs), default=0.0)
    score_diff = max((float(abs(rs[i] - gs[j])) for i, j in pairs), default=0.0)
    if len(rs) and len(gs):
        top_r, top_g = rs.max(), gs.max()
        # the label of ONNX's best detection is one of PyTorch's best (those tied with the top score)
        top_ok = gl[np.argmax(gs)] in set(rl[rs >= top_r - tol].tolist()) or rl[np.argmax(rs)] in set(
            gl[gs >= top_g - tol].tolist())
    else:
        top_ok = len(rs) == len(gs) or max(rs.max(initial=0), gs.max(initial=0)) - score_threshold <= tol
    return {"ref": len(rs), "got": len(gs), "matched": len(pairs), "ties": ties, "cascades": cascades,
            "boundary": int(boundary),
            "unmatched": int(unmatched), "box_diff": box_diff, "score_diff": score_diff, "top_label_ok": bool(top_ok)}


def parity_check(onnx_path, module, cases: list[ParityCase], tolerances: dict = TOLERANCES,
                 providers=None) -> list[dict]:
    """Run every case through `module` and ONNX Runtime; returns one row per case, or raises ParityError
    with every failure.

    module: the reference, called with the case's inputs as keywords (`ParityCase.inputs`) and returning
    padded (boxes, scores, labels) as the graph does: a `DetectorReference` (the PyTorch CORA) or an
    `ExportableCORA` run eagerly; it has `max_detections`, `score_threshold` and `nms_iou`. ONNX Runtime
    gets the inputs its graph declares (a graph without `image_sizes`, exported before the padding mask,
    therefore fails the letterboxed cases)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=providers or ["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    rows = []
    for case in cases:
        feed = case.inputs()
        missing = [n for n in names if n not in feed]
        if missing:
            raise ValueError(f"case {case.name!r} lacks the graph input(s) {missing}")
        with torch.no_grad():
            ref = [np.asarray(t) for t in module(**feed)]
        got = session.run(["boxes", "scores", "labels"], {n: feed[n].numpy() for n in names})
        row = {"case": case.name, "ref": 0, "got": 0, "matched": 0, "ties": 0, "cascades": 0, "boundary": 0,
               "unmatched": 0,
               "box_diff": 0.0, "score_diff": 0.0, "top_label_ok": True,
               "shapes_ok": all(r.shape == g.shape for r, g in zip(ref, got)) and got[2].dtype == np.int64}
        for b in range(ref[0].shape[0]):
            m = match_detections(tuple(r[b] for r in ref), tuple(g[b] for g in got), module.max_detections,
                                 module.score_threshold, tolerances, module.nms_iou)
            for key in ("ref", "got", "matched", "ties", "cascades", "boundary", "unmatched"):
                row[key] += m[key]
            row["box_diff"] = max(row["box_diff"], m["box_diff"])
            row["score_diff"] = max(row["score_diff"], m["score_diff"])
            row["top_label_ok"] &= m["top_label_ok"]
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
    bad = [r for r in rows if r["unmatched"] or not r["top_label_ok"] or not r["shapes_ok"]]
    if bad:
        detail = f"{sum(r['unmatched'] for r in bad)} unmatched detection(s), " \
                 f"{sum(not r['top_label_ok'] for r in bad)} case(s) with a different top label, " \
                 f"{sum(not r['shapes_ok'] for r in bad)} with wrong output shapes / dtypes"
        failures.append({"output": "labels", "max_diff": float(sum(r["unmatched"] for r in bad)), "tolerance": 0.0,
                         "detail": detail, "cases": [r["case"] for r in bad]})
    return failures


def format_table(rows: list[dict]) -> str:
    head = ("case", "torch", "onnx", "matched", "ties", "cascades", "boundary", "unmatched", "max|box|", "max|score|",
            "top label")
    lines = [" | ".join(head)]
    for r in rows:
        lines.append(" | ".join([r["case"], str(r["ref"]), str(r["got"]), str(r["matched"]), str(r["ties"]),
                                 str(r["cascades"]), str(r["boundary"]), str(r["unmatched"]), f"{r['box_diff']:.2e}",
                                 f"{r['score_diff']:.2e}", "ok" if r["top_label_ok"] else "DIFFERS"]))
    return "\n".join(lines)


def text_encoder_parity(onnx_path, clip_model, prompts: list[str], atol: float = 1e-5) -> float:
    """Max |ONNX - normalize(clip.encode_text)| over `prompts`; raises ParityError above atol."""
    import onnxruntime as ort
    import open_clip
    import torch

    tokens = open_clip.get_tokenizer("RN50")(prompts)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(clip_model.encode_text(tokens).float(), dim=-1).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["embeddings"], {"tokens": tokens.numpy()})
    diff = float(np.abs(ref - got).max())
    if diff > atol:
        raise ParityError([{"output": "embeddings", "max_diff": diff, "tolerance": atol, "cases": [f"{len(prompts)} prompts"]}], [])
    return diff
