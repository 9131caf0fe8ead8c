"""A compiler of a jaxpr into an ONNX graph (opset 17), for the inference functions that
``faml_jax.export`` writes: uint8 images (N, S, S, 3) in, one or several arrays out (an
ensemble's logits, T2V scores and decision), the batch dimension symbolic. One small function per jax primitive (``_CONVERTERS``; the elementwise ones
in ``_ELEMENTWISE``); a primitive without one is refused in one line (``ConfigError``).

**[choice]** Not jax2onnx: no maintained JAX-to-ONNX route works with our pins (checked
2026-11-28: jax2onnx 0.17.1, the newest, requires orbax-checkpoint < 0.11.37 where we pin 0.12.8,
and in a separate environment its graph of our r18 was refused by onnxruntime at the first
residual add, NHWC against NCHW); the inference path's jax primitives are each mapped here and
checked against JAX by the tests.

    >>> model = jaxpr_onnx.to_onnx(export.inference_function(config, variables), input_size=112)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from faml_jax.errors import ConfigError

OPSET = 17


class _Graph:
    """Builds an ONNX graph while walking a jaxpr; the traced batch size ``batch`` becomes the
    symbolic first dimension wherever a shape names it."""

    def __init__(self, batch: int):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.batch = batch
        self.nodes, self.initializers, self.names = [], [], {}
        self.count = 0
        self.batch_dim = None  # the input's first dimension, a 1-element int64 tensor

    def fresh(self, hint: str = "t") -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value, dtype=None, hint: str = "c") -> str:
        array = np.asarray(value, dtype=dtype)
        name = self.fresh(hint)
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str]:
        outputs = [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op, inputs, outputs, **attrs))
        return outputs

    def one(self, op: str, inputs: list[str], **attrs) -> str:
        return self.node(op, inputs, **attrs)[0]

    def shape(self, dims: Sequence[int]) -> str:
        """An int64 shape tensor; a dimension of the traced batch size is the input's batch size
        (the first dimension of a shape, or another where members or votes come first)."""
        dims = [int(d) for d in dims]
        if self.batch not in dims:
            return self.const(dims, np.int64)
        pieces, run = [], []
        for d in dims:
            if d == self.batch:
                if run:
                    pieces.append(self.const(run, np.int64))
                pieces, run = pieces + [self.batch_dim], []
            else:
                run.append(d)
        if run:
            pieces.append(self.const(run, np.int64))
        return pieces[0] if len(pieces) == 1 else self.one("Concat", pieces, axis=0)


_ONNX_DTYPES = {
    np.dtype(np.float32): 1,
    np.dtype(np.uint8): 2,
    np.dtype(np.int32): 6,
    np.dtype(np.int64): 7,
    np.dtype(np.bool_): 9,
    np.dtype(np.float16): 10,
    np.dtype(np.float64): 11,
}
_ELEMENTWISE = {
    "add": "Add",
    "sub": "Sub",
    "mul": "Mul",
    "div": "Div",
    "max": "Max",
    "min": "Min",
    "exp": "Exp",
    "tanh": "Tanh",
    "logistic": "Sigmoid",
    "sqrt": "Sqrt",
    "neg": "Neg",
    "abs": "Abs",
    "log": "Log",
    "erf": "Erf",
    "eq": "Equal",
    "gt": "Greater",
    "lt": "Less",
    "ge": "GreaterOrEqual",
    "le": "LessOrEqual",
    "and": "And",
    "or": "Or",
    "not": "Not",
}


def _inner(params: dict):
    for key in ("jaxpr", "call_jaxpr"):
        if key in params:
            inner = params[key]
            return (inner.jaxpr, inner.consts) if hasattr(inner, "jaxpr") else (inner, ())
    return None


def _convert(g: _Graph, jaxpr, consts, inputs: list[str]) -> list[str]:
    from jax.extend.core import Literal

    env = {}

    def read(v):
        if isinstance(v, Literal):
            return g.const(np.asarray(v.val, dtype=v.aval.dtype))
        return env[v]

    for var, value in zip(jaxpr.constvars, consts):
        env[var] = g.const(np.asarray(value))
    for var, name in zip(jaxpr.invars, inputs):
        env[var] = name
    for eqn in jaxpr.eqns:
        name, p = eqn.primitive.name, eqn.params
        args = [read(v) for v in eqn.invars]
        avals = [v.aval for v in eqn.invars]
        out_aval = eqn.outvars[0].aval
        inner = _inner(p) if name in ("jit", "pjit", "custom_jvp_call", "custom_vjp_call", "closed_call") else None
        if inner is not None:
            outs = _convert(g, inner[0], inner[1], args)
        elif name in _ELEMENTWISE:
            outs = [g.one(_ELEMENTWISE[name], args)]
        elif name in _CONVERTERS:
            outs = _CONVERTERS[name](g, args, avals, out_aval, p)
        else:
            raise ConfigError(f"ONNX export: no ONNX conversion for jax primitive {name!r}")
        for var, out in zip(eqn.outvars, outs):
            env[var] = out
    return [read(v) for v in jaxpr.outvars]


# One small function per jax primitive (beyond ``_ELEMENTWISE``): (graph, argument names, their
# abstract values, the output's abstract value, the primitive's parameters) -> output names.


def _rsqrt(g, args, avals, out_aval, p):
    return [g.one("Reciprocal", [g.one("Sqrt", args)])]


def _square(g, args, avals, out_aval, p):
    return [g.one("Mul", [args[0], args[0]])]


def _integer_pow(g, args, avals, out_aval, p):
    return [g.one("Pow", [args[0], g.const(float(p["y"]), out_aval.dtype)])]


def _identity(g, args, avals, out_aval, p):
    return [g.one("Identity", args)]


def _passthrough(g, args, avals, out_aval, p):
    return list(args)


def _convert_element_type(g, args, avals, out_aval, p):
    if np.dtype(p["new_dtype"]) not in _ONNX_DTYPES:
        raise ConfigError(f"ONNX export: no conversion to {np.dtype(p['new_dtype'])}")
    return [g.one("Cast", args, to=_ONNX_DTYPES[np.dtype(p["new_dtype"])])]


def _reshape(g, args, avals, out_aval, p):
    sizes = [int(d) for d in p["new_sizes"]]
    if sizes and sizes[0] != g.batch and sizes[0] % g.batch == 0 and avals[0].shape[:1] == (g.batch,):
        # (batch, tokens, ...) flattened to rows: the leading size is batch x tokens, -1 here.
        return [g.one("Reshape", [args[0], g.const([-1] + sizes[1:], np.int64)])]
    return [g.one("Reshape", [args[0], g.shape(sizes)])]


def _squeeze(g, args, avals, out_aval, p):
    return [g.one("Squeeze", [args[0], g.const(list(p["dimensions"]), np.int64)])]


def _expand_dims(g, args, avals, out_aval, p):
    return [g.one("Unsqueeze", [args[0], g.const(list(p["dimensions"]), np.int64)])]


def _transpose(g, args, avals, out_aval, p):
    return [g.one("Transpose", args, perm=list(p["permutation"]))]


def _broadcast_in_dim(g, args, avals, out_aval, p):
    shape, dims = p["shape"], p["broadcast_dimensions"]
    x = args[0]
    new_axes = [i for i in range(len(shape)) if i not in dims]
    if new_axes:
        x = g.one("Unsqueeze", [x, g.const(new_axes, np.int64)])
    operand_shape = [1] * len(shape)
    for i, d in enumerate(dims):
        operand_shape[d] = avals[0].shape[i]
    # Expand broadcasts both ways: where the operand already has the batch, 1 keeps it.
    target = [1 if (s == g.batch and operand_shape[i] == s) else s for i, s in enumerate(shape)]
    return [g.one("Expand", [x, g.shape(target)])]


def _reduce_sum(g, args, avals, out_aval, p):
    return [g.one("ReduceSum", [args[0], g.const(list(p["axes"]), np.int64)], keepdims=0)]


def _reduce_max(g, args, avals, out_aval, p):
    return [g.one("ReduceMax", [args[0]], axes=list(p["axes"]), keepdims=0)]


def _reduce_min(g, args, avals, out_aval, p):
    return [g.one("ReduceMin", [args[0]], axes=list(p["axes"]), keepdims=0)]


def _slice(g, args, avals, out_aval, p):
    start, limit = list(p["start_indices"]), list(p["limit_indices"])
    strides = list(p["strides"] or [1] * len(start))
    if avals[0].shape[0] == g.batch and start[0] == 0 and limit[0] == g.batch:
        limit[0] = np.iinfo(np.int64).max
    inputs = [args[0], g.const(start, np.int64), g.const(limit, np.int64)]
    inputs += [g.const(list(range(len(start))), np.int64), g.const(strides, np.int64)]
    return [g.one("Slice", inputs)]


def _stack(g, args, avals, out_aval, p):
    axis = g.const([int(p["axis"])], np.int64)
    return [g.one("Concat", [g.one("Unsqueeze", [a, axis]) for a in args], axis=int(p["axis"]))]


def _concatenate(g, args, avals, out_aval, p):
    return [g.one("Concat", args, axis=int(p["dimension"]))]


def _pad(g, args, avals, out_aval, p):
    config = p["padding_config"]
    if any(interior for _, _, interior in config) or any(lo < 0 or hi < 0 for lo, hi, _ in config):
        raise ConfigError("ONNX export: pad with interior or negative padding")
    pads = [lo for lo, _, _ in config] + [hi for _, hi, _ in config]
    return [g.one("Pad", [args[0], g.const(pads, np.int64), args[1]], mode="constant")]


def _dot_general(g, args, avals, out_aval, p):
    (lc, rc), (lb, rb) = p["dimension_numbers"]
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    left = [next(letters) for _ in avals[0].shape]
    right = [None] * len(avals[1].shape)
    for i, j in zip(lc, rc):
        right[j] = left[i]
    for i, j in zip(lb, rb):
        right[j] = left[i]
    right = [r or next(letters) for r in right]
    out = [left[i] for i in lb] + [left[i] for i in range(len(left)) if i not in lc and i not in lb]
    out += [right[j] for j in range(len(right)) if j not in rc and j not in rb]
    return [g.one("Einsum", args, equation=f"{''.join(left)},{''.join(right)}->{''.join(out)}")]


def _conv_general_dilated(g, args, avals, out_aval, p):
    return [_conv(g, args, avals, p)]


def _select_n(g, args, avals, out_aval, p):
    if len(args) != 3:
        raise ConfigError("ONNX export: select_n with more than two cases")
    return [g.one("Where", [g.one("Cast", [args[0]], to=9), args[2], args[1]])]


def _argmax(g, args, avals, out_aval, p):
    index = g.one("ArgMax", [args[0]], axis=int(p["axes"][0]), keepdims=0)
    return [g.one("Cast", [index], to=_ONNX_DTYPES[np.dtype(p["index_dtype"])])]


def _iota(g, args, avals, out_aval, p):
    shape, dimension = tuple(int(d) for d in p["shape"]), int(p["dimension"])
    if g.batch in shape:
        raise ConfigError(f"ONNX export: iota over the batch dimension {shape}")
    index = [1] * len(shape)
    index[dimension] = shape[dimension]
    values = np.broadcast_to(np.arange(shape[dimension]).reshape(index), shape)
    return [g.const(values.astype(np.dtype(p["dtype"])))]


def _conv(g: _Graph, args, avals, p) -> str:
    """``lax.conv_general_dilated`` in NHWC/HWIO (flax's layout) as ONNX's NCHW Conv."""
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    if tuple(lhs_spec) != (0, 3, 1, 2) or tuple(rhs_spec) != (3, 2, 0, 1) or tuple(out_spec) != (0, 3, 1, 2):
        raise ConfigError(f"ONNX export: convolution layout {p['dimension_numbers']} (expected NHWC, HWIO)")
    if any(d != 1 for d in p["lhs_dilation"]) or p.get("batch_group_count", 1) != 1:
        raise ConfigError("ONNX export: transposed or batch-grouped convolution")
    x = g.one("Transpose", [args[0]], perm=[0, 3, 1, 2])
    kernel = args[1]
    w = g.one("Transpose", [kernel], perm=[3, 2, 0, 1])
    padding = p["padding"]
    pads = [lo for lo, _ in padding] + [hi for _, hi in padding]
    y = g.one(
        "Conv",
        [x, w],
        strides=list(p["window_strides"]),
        pads=pads,
        dilations=list(p["rhs_dilation"]),
        group=int(p["feature_group_count"]),
    )
    return g.one("Transpose", [y], perm=[0, 2, 3, 1])


_CONVERTERS = {
    "rsqrt": _rsqrt,
    "square": _square,
    "integer_pow": _integer_pow,
    "stop_gradient": _identity,
    "copy": _identity,
    "copy_p": _identity,
    "optimization_barrier": _passthrough,
    "convert_element_type": _convert_element_type,
    "reshape": _reshape,
    "squeeze": _squeeze,
    "expand_dims": _expand_dims,
    "transpose": _transpose,
    "broadcast_in_dim": _broadcast_in_dim,
    "reduce_sum": _reduce_sum,
    "reduce_max": _reduce_max,
    "reduce_min": _reduce_min,
    "slice": _slice,
    "stack": _stack,
    "concatenate": _concatenate,
    "pad": _pad,
    "dot_general": _dot_general,
    "conv_general_dilated": _conv_general_dilated,
    "select_n": _select_n,
    "argmax": _argmax,
    "iota": _iota,
}


def to_onnx(
    function: Callable,
    input_size: int,
    *,
    trace_batch: int = 97,
    name: str = "faml_jax",
    outputs: Sequence[str] = ("probabilities",),
):
    """An ``onnx.ModelProto`` of ``function`` (uint8 images (N, S, S, 3) -> one array, or a tuple
    of arrays named by ``outputs``, each with the batch first), its batch dimension symbolic
    ("batch"). Traced at ``trace_batch`` images (a size no other dimension of the model has)."""
    from onnx import TensorProto, checker, helper

    closed = jax.make_jaxpr(function)(jax.ShapeDtypeStruct((trace_batch, input_size, input_size, 3), jnp.uint8))
    if len(closed.jaxpr.outvars) != len(outputs):
        raise ConfigError(f"ONNX export: {len(closed.jaxpr.outvars)} outputs, named {list(outputs)}")
    g = _Graph(trace_batch)
    g.batch_dim = g.one("Slice", [g.one("Shape", ["images"]), g.const([0], np.int64), g.const([1], np.int64)])
    results = _convert(g, closed.jaxpr, closed.consts, ["images"])
    infos = []
    for result, output, var in zip(results, outputs, closed.jaxpr.outvars):
        aval = var.aval
        if aval.shape[:1] != (trace_batch,) or trace_batch in aval.shape[1:]:
            raise ConfigError(f"ONNX export: output {output!r} of shape {aval.shape} does not put the batch first")
        g.nodes.append(helper.make_node("Identity", [result], [output]))
        infos.append(
            helper.make_tensor_value_info(output, _ONNX_DTYPES[np.dtype(aval.dtype)], ["batch", *aval.shape[1:]])
        )
    graph = helper.make_graph(
        g.nodes,
        name,
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", input_size, input_size, 3])],
        infos,
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="faml_jax")
    model.ir_version = 8
    checker.check_model(model)
    return model
