"""Static TensorRT 10.x readiness lint of an exported ONNX graph.

The lint reads the graph only (TensorRT cannot be installed here): every op in the TensorRT 10.x ONNX
parser's supported set (`TRT_SUPPORTED_OPS`), RoiAlign's coordinate_transformation_mode written out, TopK
with sorted=1 and k < 3840, inputs TensorRT needs as build-time constants, int64 usage, named dynamic dims.
The padding mask adds only supported ops: GreaterOrEqual on int64 (TensorRT 10's elementwise comparisons
take INT64), Or / Not on bool, Cast (int64 / bool -> float32) and CumSum on float32 with a constant axis.

`lint_tensorrt(model)` returns `Finding`s: "error" (TensorRT would reject the file), "warning" (check at
build), "info". The command line is export/check.py (`lint`, exit 1 on any error).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TRT_TOPK_LIMIT = 3840  # TensorRT's TopK needs k < 3840

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
