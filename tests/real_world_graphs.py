"""Small graphs in the styles real exporters write, for the normalization tests (issue 13):
an IR 3 model-zoo graph, convs inside If branches and a Loop body, a Paddle -1 batch dimension,
jax2tf-style shape arithmetic."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _weight(rng, name: str, *shape) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _conv(name: str, x: str, w: str, b: str | None, out: str) -> onnx.NodeProto:
    inputs = [x, w] + ([b] if b else [])
    return helper.make_node("Conv", inputs, [out], name=name, pads=[1, 1, 1, 1])


def _model(graph: onnx.GraphProto, opset: int, ir_version: int) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="real-world-style test graph"
    )
    model.ir_version = ir_version
    return model


def ir3_model_zoo(seed: int = 0) -> onnx.ModelProto:
    """An ONNX model-zoo (Caffe2-era) graph: IR 3, opset 9, every initializer also a graph input,
    a Dropout, a conv bias produced by ConstantOfShape, fixed batch 1.

    x[1,3,8,8] -> Conv(3->8) -> Relu -> Dropout -> Conv(8->8, bias from ConstantOfShape) -> Relu
    -> Conv(8->4) -> GlobalAveragePool -> y."""
    rng = np.random.default_rng(seed)
    inits = [
        _weight(rng, "conv1_w_0", 8, 3, 3, 3),
        _weight(rng, "conv1_b_0", 8),
        _weight(rng, "conv2_w_0", 8, 8, 3, 3),
        _weight(rng, "conv3_w_0", 4, 8, 3, 3),
        _weight(rng, "conv3_b_0", 4),
        numpy_helper.from_array(np.array([8], np.int64), "conv2_b_shape"),
    ]
    zeros = numpy_helper.from_array(np.array([0.0], np.float32), "value")
    nodes = [
        _conv("conv1", "data_0", "conv1_w_0", "conv1_b_0", "conv1_1"),
        helper.make_node("Relu", ["conv1_1"], ["conv1_2"], name="relu1"),
        helper.make_node("Dropout", ["conv1_2"], ["drop1", "drop1_mask"], name="drop1", ratio=0.5),
        helper.make_node("ConstantOfShape", ["conv2_b_shape"], ["conv2_b_0"], name="bias2", value=zeros),
        _conv("conv2", "drop1", "conv2_w_0", "conv2_b_0", "conv2_1"),
        helper.make_node("Relu", ["conv2_1"], ["conv2_2"], name="relu2"),
        _conv("conv3", "conv2_2", "conv3_w_0", "conv3_b_0", "conv3_1"),
        helper.make_node("GlobalAveragePool", ["conv3_1"], ["prob_1"], name="pool"),
    ]
    inputs = [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 8, 8])]
    inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]
    outputs = [helper.make_tensor_value_info("prob_1", TensorProto.FLOAT, [1, 4, 1, 1])]
    return _model(helper.make_graph(nodes, "zoo_ir3", inputs, outputs, inits), opset=9, ir_version=3)


def _main_convs(rng, inits: list, nodes: list) -> str:
    """x[N,3,8,8] -> Conv(3->8) 'conv_a' -> Relu -> Conv(8->8) 'conv_b' -> Relu -> 'h'
    (two prunable groups in the main graph); returns 'h'."""
    inits += [
        _weight(rng, "wa", 8, 3, 3, 3),
        _weight(rng, "ba", 8),
        _weight(rng, "wb", 8, 8, 3, 3),
        _weight(rng, "bb", 8),
    ]
    nodes += [
        _conv("conv_a", "x", "wa", "ba", "a"),
        helper.make_node("Relu", ["a"], ["a_relu"], name="relu_a"),
        _conv("conv_b", "a_relu", "wb", "bb", "b"),
        helper.make_node("Relu", ["b"], ["h"], name="relu_b"),
    ]
    return "h"


def _branch(name: str, rng, scale: float) -> onnx.GraphProto:
    """An If branch: Conv(8->4) of the outer tensor 'h' (read implicitly) with its own weight,
    times a constant from a Constant node inside the branch."""
    w = numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), f"{name}_w")
    s = numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s")
    nodes = [
        helper.make_node("Constant", [], [f"{name}_scale"], value=s),
        _conv(f"{name}_conv", "h", f"{name}_w", None, f"{name}_c"),
        helper.make_node("Mul", [f"{name}_c", f"{name}_scale"], [f"{name}_out"]),
    ]
    out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)
    return helper.make_graph(nodes, name, [], [out], [w])


def if_branch_model(seed: int = 0) -> onnx.ModelProto:
    """A VAD-style graph (Silero-like): two main-graph convs, then an If on `sr > 4` (`sr`: an
    int64 graph input, the sample rate) whose two branches each run a Conv on the main tensor 'h'
    (an outer-scope read, not an If input); the If's output is pooled."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    _main_convs(rng, inits, nodes)  # 'h', which the branches read by name
    inits.append(numpy_helper.from_array(np.array(4, np.int64), "rate_threshold"))
    nodes += [
        helper.make_node("Greater", ["sr", "rate_threshold"], ["flag"], name="is_wide_band"),
        helper.make_node(
            "If",
            ["flag"],
            ["branch_out"],
            name="gate",
            then_branch=_branch("then", rng, 1.0),
            else_branch=_branch("else", rng, -0.5),
        ),
        helper.make_node("GlobalAveragePool", ["branch_out"], ["y"], name="pool"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, []),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1])]
    return _model(helper.make_graph(nodes, "vad_if", inputs, outputs, inits), opset=13, ir_version=8)


def loop_model(seed: int = 0) -> onnx.ModelProto:
    """A decoder-style graph: two main-graph convs, then a Loop of `trip` iterations whose body
    runs a Conv(8->8) of the loop-carried state with a weight of the MAIN graph ('wl', an outer
    read) plus the outer tensor 'h' (another outer read); the final state is pooled. A second
    main branch (Conv 'conv_c' after 'h') is an independent prunable group."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    h = _main_convs(rng, inits, nodes)
    inits += [_weight(rng, "wl", 8, 8, 3, 3), _weight(rng, "wc", 6, 8, 3, 3), _weight(rng, "wd", 4, 6, 3, 3)]
    body_nodes = [
        _conv("body_conv", "state_in", "wl", None, "body_c"),
        helper.make_node("Add", ["body_c", h], ["body_sum"], name="body_add"),
        helper.make_node("Tanh", ["body_sum"], ["state_out"], name="body_tanh"),
        helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
    ]
    body = helper.make_graph(
        body_nodes,
        "body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, None),
        ],
    )
    inits.append(numpy_helper.from_array(np.array(True), "loop_cond"))
    nodes += [
        helper.make_node("Loop", ["trip", "loop_cond", h], ["final"], name="decoder", body=body),
        helper.make_node("GlobalAveragePool", ["final"], ["y"], name="pool"),
        _conv("conv_c", h, "wc", None, "c"),
        helper.make_node("Relu", ["c"], ["c_relu"], name="relu_c"),
        _conv("conv_d", "c_relu", "wd", None, "d"),
        helper.make_node("GlobalAveragePool", ["d"], ["z"], name="pool_d"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
        helper.make_tensor_value_info("trip", TensorProto.INT64, []),
    ]
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 1, 1]),
        helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4, 1, 1]),
    ]
    return _model(helper.make_graph(nodes, "decoder_loop", inputs, outputs, inits), opset=13, ir_version=8)


def paddle_negative_batch(seed: int = 0) -> onnx.ModelProto:
    """A Paddle2ONNX-style graph: the batch dimension of the input, the output and an intermediate
    value_info written as `dim_value: -1`. x[-1,3,8,8] -> Conv(3->8) -> Relu -> Conv(8->4) ->
    GlobalAveragePool -> Flatten -> y[-1,4]."""
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, "conv1_w", 8, 3, 3, 3), _weight(rng, "conv1_b", 8), _weight(rng, "conv2_w", 4, 8, 3, 3)]
    nodes = [
        _conv("conv1", "x", "conv1_w", "conv1_b", "conv2d_0.tmp_0"),
        helper.make_node("Relu", ["conv2d_0.tmp_0"], ["relu_0.tmp_0"], name="relu"),
        _conv("conv2", "relu_0.tmp_0", "conv2_w", None, "conv2d_1.tmp_0"),
        helper.make_node("GlobalAveragePool", ["conv2d_1.tmp_0"], ["pool_0.tmp_0"], name="pool"),
        helper.make_node("Flatten", ["pool_0.tmp_0"], ["y"], name="flatten", axis=1),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 8, 8])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4])]
    value_info = [helper.make_tensor_value_info("relu_0.tmp_0", TensorProto.FLOAT, [-1, 8, 8, 8])]
    graph = helper.make_graph(nodes, "paddle", inputs, outputs, inits, value_info=value_info)
    return _model(graph, opset=11, ir_version=6)


def jax2tf_shape_arithmetic(seed: int = 0) -> onnx.ModelProto:
    """jax2tf/tf2onnx-style shape arithmetic: a Reshape target built from Shape(x)[0:1] (the
    dynamic batch) and constants, and a Slice whose end comes from Shape of a static tensor.

    x[N,4,8,8] -> Conv(4->8) 'conv1' -> Relu -> t; s = Shape(t) (N,8,8,8);
    half = Gather(s, 1) / 2 (static: 4) -> Slice(t, [0], half, axes [1])? no: the Slice takes
    channels [0, 8) of a Conv output, bounds from Shape(t)[1:2];
    Reshape(sliced, Concat(Shape(x)[0:1], [-1])) -> [N, 512] -> Gemm."""
    rng = np.random.default_rng(seed)
    inits = [
        _weight(rng, "conv1_w", 8, 4, 3, 3),
        _weight(rng, "conv1_b", 8),
        _weight(rng, "conv2_w", 8, 8, 3, 3),
        _weight(rng, "fc_w", 3, 8 * 4 * 4),
        _weight(rng, "fc_b", 3),
    ]
    ints = {"zero": [0], "one": [1], "two": [2], "minus_one": [-1]}
    inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
    nodes = [
        _conv("conv1", "x", "conv1_w", "conv1_b", "c1"),
        helper.make_node("Relu", ["c1"], ["t"], name="relu1"),
        _conv("conv2", "t", "conv2_w", None, "c2"),
        helper.make_node("Relu", ["c2"], ["u"], name="relu2"),
        helper.make_node("MaxPool", ["u"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        # Slice(p, starts=[0], ends=Shape(p)[1:2], axes=[1]): the whole channel axis, bounds static
        helper.make_node("Shape", ["p"], ["p_shape"], name="shape_p"),
        helper.make_node("Slice", ["p_shape", "one", "two", "zero"], ["p_channels"], name="slice_shape"),
        helper.make_node("Slice", ["p", "zero", "p_channels", "one"], ["p_all"], name="slice_channels"),
        # Reshape(p_all, Concat(Shape(x)[0:1], [-1])): batch stays dynamic
        helper.make_node("Shape", ["x"], ["x_shape"], name="shape_x"),
        helper.make_node("Slice", ["x_shape", "zero", "one", "zero"], ["batch"], name="slice_batch"),
        helper.make_node("Concat", ["batch", "minus_one"], ["target"], name="target", axis=0),
        helper.make_node("Reshape", ["p_all", "target"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])]
    return _model(helper.make_graph(nodes, "jax2tf", inputs, outputs, inits), opset=13, ir_version=8)


def jax2tf_glu(seed: int = 0) -> onnx.ModelProto:
    """jax2tf-style `jnp.split(t, 2, axis=1)` (a GLU) with bounds from shape arithmetic, and a
    flatten whose target keeps the dynamic batch:

    x[N,4,8,8] -> Conv(4->8) 'conv1' -> t; c = Cast(Gather(Shape(t), 1), int32) (static: 8);
    half = Cast(Div(c, 2), int64); a = Slice(t, 0, half, axis 1), b = Slice(t, half, c, axis 1);
    g = a * Sigmoid(b) [N,4,8,8] -> Conv(4->6) 'conv2' -> Relu -> Reshape(Concat(Shape(x)[0:1],
    [6*64] computed as Mul(Gather(Shape(r),1), 64))) -> Gemm -> y[N,3]."""
    rng = np.random.default_rng(seed)
    inits = [
        _weight(rng, "conv1_w", 8, 4, 3, 3),
        _weight(rng, "conv1_b", 8),
        _weight(rng, "conv2_w", 6, 4, 3, 3),
        _weight(rng, "conv2_b", 6),
        _weight(rng, "fc_w", 3, 6 * 64),
        _weight(rng, "fc_b", 3),
    ]
    ints = {"zero": [0], "one": [1], "two": [2], "axis1": [1], "pixels": [64]}
    inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
    inits += [
        numpy_helper.from_array(np.array(1, np.int64), "index1"),
        numpy_helper.from_array(np.array([2], np.int32), "two32"),
    ]
    nodes = [
        _conv("conv1", "x", "conv1_w", "conv1_b", "t"),
        helper.make_node("Shape", ["t"], ["t_shape"], name="shape_t"),
        helper.make_node("Gather", ["t_shape", "index1"], ["c64"], name="channels", axis=0),
        helper.make_node("Unsqueeze", ["c64", "zero"], ["c64_1"], name="unsqueeze_c"),
        helper.make_node("Cast", ["c64_1"], ["c32"], name="cast_c", to=TensorProto.INT32),
        helper.make_node("Div", ["c32", "two32"], ["half32"], name="half"),
        helper.make_node("Cast", ["half32"], ["half"], name="cast_half", to=TensorProto.INT64),
        helper.make_node("Slice", ["t", "zero", "half", "axis1"], ["a"], name="split_a"),
        helper.make_node("Slice", ["t", "half", "c64_1", "axis1"], ["b"], name="split_b"),
        helper.make_node("Sigmoid", ["b"], ["b_gate"], name="gate"),
        helper.make_node("Mul", ["a", "b_gate"], ["g"], name="glu"),
        _conv("conv2", "g", "conv2_w", "conv2_b", "c2"),
        helper.make_node("Relu", ["c2"], ["r"], name="relu2"),
        helper.make_node("Shape", ["r"], ["r_shape"], name="shape_r"),
        helper.make_node("Slice", ["r_shape", "one", "two", "zero"], ["r_channels"], name="channels_r"),
        helper.make_node("Slice", ["r_shape", "one", "two", "zero"], ["unused"], name="dead"),
        helper.make_node("Mul", ["r_channels", "pixels"], ["features"], name="features"),
        helper.make_node("Shape", ["x"], ["x_shape"], name="shape_x"),
        helper.make_node("Slice", ["x_shape", "zero", "one", "zero"], ["batch"], name="batch"),
        helper.make_node("Concat", ["batch", "features"], ["target"], name="target", axis=0),
        helper.make_node("Reshape", ["r", "target"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])]
    return _model(helper.make_graph(nodes, "jax2tf_glu", inputs, outputs, inits), opset=13, ir_version=8)


def jax2tf_two_rounds(seed: int = 0) -> onnx.ModelProto:
    """Shape arithmetic that becomes static only after a first fold: a Reshape target computed in
    float (Cast -> Mul 0.5 -> Floor -> Cast back, which shape inference does not evaluate), then a
    Slice whose end is read by Shape from the Reshape's output.

    x[N,4,8,8] -> Conv(4->8) 'conv1' -> t; w2 = Floor(Cast(Shape(t)[3]) * 0.5) (static: 4);
    v = Reshape(t, [0, 8, 8 * w2 ... as [0, 8, 16, w2]]) -> Slice(v, 0, Shape(v)[1:2], axis 1) ->
    Reshape(back to [0, 8, 8, 8]) -> Relu -> Conv(8->4) 'conv2' -> GlobalAveragePool -> y."""
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, "conv1_w", 8, 4, 3, 3), _weight(rng, "conv1_b", 8), _weight(rng, "conv2_w", 4, 8, 3, 3)]
    ints = {"zero": [0], "one": [1], "two": [2], "three": [3], "four": [4], "head": [0, 8, 16], "back": [0, 8, 8, 8]}
    inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
    inits.append(numpy_helper.from_array(np.array([0.5], np.float32), "half"))
    nodes = [
        _conv("conv1", "x", "conv1_w", "conv1_b", "t"),
        helper.make_node("Shape", ["t"], ["t_shape"], name="shape_t"),
        helper.make_node("Slice", ["t_shape", "three", "four", "zero"], ["width"], name="width"),
        helper.make_node("Cast", ["width"], ["width_f"], name="width_f", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["width_f", "half"], ["half_width_f"], name="half_width"),
        helper.make_node("Floor", ["half_width_f"], ["floor_f"], name="floor"),
        helper.make_node("Cast", ["floor_f"], ["half_width"], name="half_width_i", to=TensorProto.INT64),
        helper.make_node("Concat", ["head", "half_width"], ["target"], name="target", axis=0),
        helper.make_node("Reshape", ["t", "target"], ["v"], name="split_rows"),
        helper.make_node("Shape", ["v"], ["v_shape"], name="shape_v"),
        helper.make_node("Slice", ["v_shape", "one", "two", "zero"], ["v_channels"], name="v_channels"),
        helper.make_node("Slice", ["v", "zero", "v_channels", "one"], ["v_all"], name="all_channels"),
        helper.make_node("Reshape", ["v_all", "back"], ["w"], name="join_rows"),
        helper.make_node("Relu", ["w"], ["w_relu"], name="relu"),
        _conv("conv2", "w_relu", "conv2_w", None, "c2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["y"], name="pool"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1])]
    return _model(helper.make_graph(nodes, "jax2tf_two_rounds", inputs, outputs, inits), opset=13, ir_version=8)
