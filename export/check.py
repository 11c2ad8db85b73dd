"""Checks of an exported CORA: parity with PyTorch, and a static TensorRT-readiness lint.

    python export/check.py parity model.onnx                    # K in 1 2 65 1203 4096, whole + letterboxed
    python export/check.py parity model.onnx --ks 1 7 --batch 2 --sizes 128 160 96 128
    python export/check.py lint model.onnx                       # exit 1 if TensorRT would reject the file

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

The lint reads the graph only (TensorRT cannot be installed here): every op in the TensorRT 10.x ONNX
parser's supported set (`TRT_SUPPORTED_OPS`), RoiAlign's coordinate_transformation_mode written out, TopK
with sorted=1 and k < 3840, inputs TensorRT needs as build-time constants, int64 usage, named dynamic dims.
The padding mask adds only supported ops: GreaterOrEqual on int64 (TensorRT 10's elementwise comparisons
take INT64), Or / Not on bool, Cast (int64 / bool -> float32) and CumSum on float32 with a constant axis.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Absolute tolerances: boxes in input pixels, scores in probability.
TOLERANCES = {"boxes": 0.05, "scores": 1e-4}
MATCH_IOU = 0.9        # a detection pair is "the same box" above this IoU
TRT_TOPK_LIMIT = 3840  # TensorRT's TopK needs k < 3840


class ParityError(Exception):
    """ONNX Runtime and PyTorch disagree. `.failures`: one dict per output (max diff, tolerance, cases);
    `.rows`: the per-case table."""

    def __init__(self, failures: list[dict], rows: list[dict]):
        self.failures, self.rows = failures, rows
        lines = [f"{f['output']}: max diff {f['max_diff']:.3g} > tolerance {f['tolerance']:.3g}"
                 + (f" ({f['detail']})" if f.get("detail") else "") + f" in {', '.join(f['cases'])}"
                 for f in failures]
        super().__init__("ONNX Runtime differs from PyTorch:\n  " + "\n  ".join(lines))


# ---- parity ----------------------------------------------------------------------------------------------


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


# ---- TensorRT readiness ----------------------------------------------------------------------------------

# Ops the TensorRT 10.x ONNX parser imports (onnx-tensorrt docs/operators.md, TensorRT 10.0 .. 10.15; the
# restrictions that matter to us are checked below). Opsets 9 .. 20 (10.0) / 24 (10.15).
TRT_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization BlackmanWindow Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND
Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max
MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
TRT_OPSET_RANGE = (9, 20)  # what every TensorRT 10.x parses

# (op, input index, input name): inputs the parser needs as build-time constants.
TRT_CONSTANT_INPUTS = (
    [("OneHot", 1, "depth"), ("CumSum", 1, "axis")]
    + [(op, 1, "axes") for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                                  "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")]
)


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" (TensorRT would reject the file), "warning" (check at build), "info"
    op: str
    node: str
    message: str

    def __str__(self) -> str:
        where = f"{self.op} {self.node!r}: " if self.node else (f"{self.op}: " if self.op else "")
        return f"[{self.severity}] {where}{self.message}"


@dataclass
class _Graph:
    constants: dict = field(default_factory=dict)  # name -> numpy value
    producers: dict = field(default_factory=dict)  # name -> node


def lint_tensorrt(model) -> list[Finding]:
    """Static TensorRT 10.x readiness check of an ONNX model (path or onnx.ModelProto). Returns findings."""
    import onnx
    from onnx import numpy_helper

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    findings = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not TRT_OPSET_RANGE[0] <= opset <= TRT_OPSET_RANGE[1]:
        findings.append(Finding("warning", "", "", f"opset {opset} is outside {TRT_OPSET_RANGE} (TensorRT 10.0's range)"))
    graph = model.graph
    g = _Graph()
    for init in graph.initializer:
        g.constants[init.name] = numpy_helper.to_array(init) if not init.external_data else None
    int64 = []
    for node, path in _walk(graph):
        for out in node.output:
            g.producers[out] = node
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value":
                    g.constants[node.output[0]] = numpy_helper.to_array(a.t)
    for node, path in _walk(graph):
        name = path + (node.name or node.output[0])
        findings += _lint_node(node, name, g)
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            int64.append(vi.name)
    int64_inits = sum(1 for i in graph.initializer if i.data_type == onnx.TensorProto.INT64)
    io64 = [v.name for v in list(graph.input) + list(graph.output) if v.type.tensor_type.elem_type == onnx.TensorProto.INT64]
    findings.append(Finding("info", "", "", f"int64: graph I/O {io64 or 'none'}, {len(int64)} int64 tensors with "
                            f"known type, {int64_inits} int64 initializers (TensorRT 10 runs INT64 natively for "
                            "indices and shapes; values must fit int32 where it casts down)"))
    for kind, values in (("input", graph.input), ("output", graph.output)):
        for v in values:
            dims = v.type.tensor_type.shape.dim
            names = [d.dim_param for d in dims if d.dim_param]
            unnamed = [i for i, d in enumerate(dims) if not d.dim_param and not d.HasField("dim_value")]
            if unnamed:
                findings.append(Finding("error", "", v.name, f"graph {kind} has dynamic axes {unnamed} without a name "
                                        "(optimisation profiles and the runtime need named dims)"))
            elif names:
                findings.append(Finding("info", "", v.name, f"graph {kind} dynamic dims {names}"))
    return findings


def _walk(graph, path: str = ""):
    for node in graph.node:
        yield node, path
        for a in node.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _walk(sub, f"{path}{node.name or node.op_type}/")


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _lint_node(node, name: str, g: _Graph) -> list[Finding]:
    op = node.op_type
    out = []
    if node.domain not in ("", "ai.onnx"):
        return [Finding("error", op, name, f"custom-domain op ({node.domain}): TensorRT needs a plugin for it")]
    if op not in TRT_SUPPORTED_OPS:
        return [Finding("error", op, name, "not supported by the TensorRT 10.x ONNX parser")]
    for c_op, index, what in TRT_CONSTANT_INPUTS:
        if op == c_op and len(node.input) > index and node.input[index] and node.input[index] not in g.constants:
            out.append(Finding("error", op, name, f"input {what!r} must be a build-time constant, "
                               f"it is computed ({node.input[index]!r})"))
    attrs = _attrs(node)
    if op == "RoiAlign":
        mode = attrs.get("coordinate_transformation_mode")
        if mode is None:
            out.append(Finding("error", op, name, "coordinate_transformation_mode is not set: the default differs "
                               "between ONNX Runtime and TensorRT; write half_pixel (aligned=True) explicitly"))
        else:
            out.append(Finding("info", op, name, f"coordinate_transformation_mode={mode.decode()} "
                               "(TensorRT imports RoiAlign as the ROIAlign_TRT plugin: initialise libnvinfer_plugin)"))
    if op == "TopK":
        if attrs.get("sorted", 1) != 1:
            out.append(Finding("error", op, name, "sorted must be 1 for TensorRT"))
        bound = _upper_bound(node.input[1], g)
        if bound is None:
            out.append(Finding("warning", op, name, f"k is computed at run time with no static bound: TensorRT "
                               f"fails at run time if k >= {TRT_TOPK_LIMIT}"))
        elif bound >= TRT_TOPK_LIMIT:
            out.append(Finding("error", op, name, f"k can reach {bound} (TensorRT needs k < {TRT_TOPK_LIMIT})"))
        else:
            kind = "constant" if node.input[1] in g.constants else "dynamic, bounded by"
            out.append(Finding("info", op, name, f"k {kind} {bound} < {TRT_TOPK_LIMIT}"))
    return out


def _upper_bound(name: str, g: _Graph, depth: int = 0) -> int | None:
    """A static upper bound of an integer tensor: constants, Min with a bounded operand, and shape-preserving
    ops (Reshape, Cast, Squeeze, Unsqueeze, Identity, Concat) over them."""
    if name in g.constants and g.constants[name] is not None:
        return int(np.max(g.constants[name]))
    node = g.producers.get(name)
    if node is None or depth > 16:
        return None
    if node.op_type == "Min":
        bounds = [b for b in (_upper_bound(i, g, depth + 1) for i in node.input) if b is not None]
        return min(bounds) if bounds else None
    if node.op_type in ("Reshape", "Cast", "Squeeze", "Unsqueeze", "Identity"):
        return _upper_bound(node.input[0], g, depth + 1)
    if node.op_type == "Concat":
        bounds = [_upper_bound(i, g, depth + 1) for i in node.input]
        return None if None in bounds else max(bounds)
    return None


# ---- command line ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="export/check.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("parity", help="ONNX Runtime vs PyTorch (the model is rebuilt from <onnx>.json)")
    p.add_argument("onnx", help="an exported detector .onnx (with its .json sidecar)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 65, 1203, 4096], help="vocabulary sizes (default: 1 2 65 1203 4096)")
    p.add_argument("--batch", type=int, default=2, help="images per run (default: 2)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, metavar="H W",
                   help="image sizes as H W pairs (default: the export's size, and a smaller one if dynamic)")
    lint = sub.add_parser("lint", help="static TensorRT 10.x readiness check")
    lint.add_argument("onnx", help="an .onnx file")
    args = parser.parse_args(argv)

    if args.command == "lint":
        findings = lint_tensorrt(args.onnx)
        for f in findings:
            print(f)
        errors = [f for f in findings if f.severity == "error"]
        print(f"{len(errors)} error(s), {sum(f.severity == 'warning' for f in findings)} warning(s)")
        return 1 if errors else 0

    import onnx

    from export.to_onnx import ExportError, load_detector, read_sidecar

    if args.sizes is not None and len(args.sizes) % 2:
        parser.error("--sizes takes H W pairs")
    try:
        meta = read_sidecar(args.onnx)
        inputs = [i.name for i in onnx.load(args.onnx, load_external_data=False).graph.input]
        if "image_sizes" not in inputs:
            raise ExportError(f"{args.onnx} has no 'image_sizes' input (inputs: {', '.join(inputs)}): it was exported "
                              "before the padding mask and differs from CORA.detect on padded images; re-export it "
                              "with export/to_onnx.py (or `cora export`)")
        detector, _ = load_detector(meta["source"])
    except (FileNotFoundError, ExportError) as e:
        print(f"check: {e}", file=sys.stderr)
        return 1
    baked = detector.encode_vocabulary(meta["vocabulary"]) if meta.get("vocabulary") else None
    reference = DetectorReference(detector, baked, **meta["postprocess"])
    sizes = list(zip(args.sizes[::2], args.sizes[1::2])) if args.sizes else None
    cases = default_cases(meta, ks=args.ks, batch=args.batch, sizes=sizes)
    try:
        rows = parity_check(args.onnx, reference, cases)
    except ParityError as e:
        print(format_table(e.rows))
        print(f"check: {e}", file=sys.stderr)
        return 1
    print(format_table(rows))
    print(f"parity ok ({len(rows)} cases; tolerances {TOLERANCES})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
