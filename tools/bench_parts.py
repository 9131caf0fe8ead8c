"""Forward + backward time of the parts R18+FAML adds to ResNet18, in faml_jax and in its PyTorch
twin (``tools/torch_twin.py``), to find where a train-step gap comes from.

    python -m tools.bench_parts                  # batch 16, 224 px input, float32
    python -m tools.bench_parts --batch 8 --calls 5

Parts: the FA stem, the three attention blocks (at the feature-map sizes of a 224 px input), the
attention core at 196 tokens (the model's per-head product and the head-in-the-middle einsum it
replaced, against PyTorch's ``scaled_dot_product_attention``) and the dense layers of the blocks.
Each is timed as the gradient of ``sum(output ** 2)``, median of ``--calls`` calls after one
warm-up, PyTorch with 2 threads. Then ResNet18's backbone convolutions (after the stem), each of
the three products a train step takes apart: forward, input gradient and weight gradient (XLA's
``lax.conv_general_dilated`` and its VJP against ``torch.nn.functional.conv2d`` and
``torch.nn.grad``), summed over the network's convolutions. Timings are measurements, never test
assertions.
"""

from __future__ import annotations

import argparse

import numpy as np

from faml_jax.xla_flags import set_default_flags

set_default_flags()  # before jax starts: the programs' flags

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from faml_jax import models  # noqa: E402
from faml_jax.models.attention import AttentionBlock  # noqa: E402
from faml_jax.models.fa_stem import FAStem  # noqa: E402
from tools.benchmarking import median_seconds as timed  # noqa: E402  (after an untimed first call)

CONV_PRODUCTS = ("forward", "input gradient", "weight gradient")


def jax_grad(module, variables, x):
    grad = jax.jit(jax.grad(lambda v, x: jnp.sum(module.apply(v, x) ** 2), argnums=(0, 1)))
    return lambda: jax.block_until_ready(grad(variables, x))


def torch_grad(module, x):
    def run():
        module.zero_grad(set_to_none=True)
        (module(x) ** 2).sum().backward()

    return run


def attention_core(kind: str):
    def per_head(q, k, v):
        heads = q.shape[2]
        probs = [
            jax.nn.softmax(jnp.einsum("bqd,bkd->bqk", q[:, :, h], k[:, :, h]) / jnp.sqrt(q.shape[-1]), -1)
            for h in range(heads)
        ]
        return jnp.stack([jnp.einsum("bqk,bkd->bqd", probs[h], v[:, :, h]) for h in range(heads)], 2)

    def middle(q, k, v):
        probs = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]), -1)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v)

    return {"per_head": per_head, "middle": middle}[kind]


def measure(args) -> list[str]:
    import torch

    from tools import torch_twin

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    config = models.build("r18_faml", 7, input_size=args.size).config
    rows = []

    x = rng.standard_normal((args.batch, args.size, args.size, 3)).astype(np.float32)
    stem = FAStem(config.widths[0], config.fa_regions, config.fa_init)
    rows.append(
        (
            "FA stem (three 7x7 convolutions, placed and fused)",
            timed(jax_grad(stem, stem.init(jax.random.key(0), x), x), args.calls),
            timed(
                torch_grad(
                    torch_twin.FAStem(config.widths[0], config.fa_regions, args.size, config.fa_init),
                    torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                ),
                args.calls,
            ),
        )
    )

    side = args.size // 4
    for stage, patch in enumerate(config.attn_patch_sizes):
        width = config.widths[stage]
        xa = rng.standard_normal((args.batch, side, side, width)).astype(np.float32)
        block = AttentionBlock(patch, config.attn_dim, config.attn_depth, config.attn_heads, config.attn_mlp_ratio)
        variables = jax.tree.map(lambda a: a + 0.01, block.init(jax.random.key(0), xa))  # gate not the identity
        twin = torch_twin.AttentionBlock(
            width, side, patch, config.attn_dim, config.attn_depth, config.attn_heads, config.attn_mlp_ratio
        )
        with torch.no_grad():
            for p in twin.parameters():
                p.add_(0.01)
        rows.append(
            (
                f"attention block after stage {stage + 1} ({side}x{side}x{width}, patch {patch})",
                timed(jax_grad(block, variables, xa), args.calls),
                timed(torch_grad(twin, torch.from_numpy(xa.transpose(0, 3, 1, 2).copy())), args.calls),
            )
        )
        side //= 2

    tokens, heads = (args.size // 16) ** 2, config.attn_heads
    q, k, v = (
        rng.standard_normal((args.batch, tokens, heads, config.attn_dim // heads)).astype(np.float32) for _ in range(3)
    )
    qt, kt, vt = (torch.from_numpy(a.transpose(0, 2, 1, 3).copy()).requires_grad_() for a in (q, k, v))

    def sdpa():
        (torch.nn.functional.scaled_dot_product_attention(qt, kt, vt) ** 2).sum().backward()

    for kind, label in (
        ("per_head", "one batched product per head (the model's)"),
        ("middle", 'einsum("bqhd,bkhd->bhqk")'),
    ):
        core = attention_core(kind)
        grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(core(q, k, v) ** 2), argnums=(0, 1, 2)))
        rows.append(
            (
                f"attention core, {tokens} tokens, {heads} heads: {label}",
                timed(lambda: jax.block_until_ready(grad(q, k, v)), args.calls),
                timed(sdpa, args.calls),
            )
        )

    xt = rng.standard_normal((args.batch, tokens, config.attn_dim)).astype(np.float32)
    for out in (config.attn_dim, int(config.attn_dim * config.attn_mlp_ratio), 16 * config.widths[0]):
        dense = nn.Dense(out)
        linear = torch.nn.Linear(config.attn_dim, out)
        rows.append(
            (
                f"dense {config.attn_dim} -> {out} on ({args.batch}, {tokens}, {config.attn_dim})",
                timed(jax_grad(dense, dense.init(jax.random.key(0), xt), xt), args.calls),
                timed(torch_grad(linear, torch.from_numpy(xt).requires_grad_()), args.calls),
            )
        )

    rows += backbone_convolutions(args, config, rng, torch)

    lines = [
        f"Parts of R18+FAML, forward + backward (the convolution rows: one product each), batch {args.batch}, "
        f"{args.size} px input, float32, {jax.devices()[0].device_kind}, median of {args.calls} calls; "
        f"PyTorch {torch.get_num_threads()} threads",
        "",
        "| part | faml_jax (ms) | PyTorch twin / PyTorch (ms) | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {a * 1e3:.1f} | {b * 1e3:.1f} | {a / b:.2f} |" for name, a, b in rows]
    return lines


def backbone_shapes(config, size: int) -> list[tuple[int, int, int, int, int, int]]:
    """The backbone's convolutions after the stem, block by block as ``models.resnet`` builds
    them, for a ``size`` px input: (input side, in, out, kernel, stride, how many), in order."""
    counts, side, cin = {}, size // 4, config.widths[0]  # after the stride-2 stem and max pool
    for stage, (width, depth) in enumerate(zip(config.widths, config.stage_depths)):
        for block in range(depth):
            stride = 2 if stage > 0 and block == 0 else 1
            convs = [(side, cin, width, 3, stride)]  # conv1
            if stride != 1 or cin != width:
                convs.append((side, cin, width, 1, stride))  # the projection shortcut
            side, cin = (side + stride - 1) // stride, width
            convs.append((side, width, width, 3, 1))  # conv2
            for shape in convs:
                counts[shape] = counts.get(shape, 0) + 1
    return [(*shape, count) for shape, count in counts.items()]


def backbone_convolutions(args, config, rng, torch) -> list[tuple[str, float, float]]:
    """One row per product (forward, input gradient, weight gradient), each summed over the
    backbone's convolutions (``backbone_shapes``: a shape's time times its count), and a row for the
    weight gradient of the first stage's convolutions alone."""
    shapes = backbone_shapes(config, args.size)
    times = []  # per shape: {product: (faml_jax, PyTorch)}, both times the shape's count
    for side, cin, cout, kernel, stride, count in shapes:
        x = rng.standard_normal((args.batch, side, side, cin)).astype(np.float32)
        w = (0.05 * rng.standard_normal((kernel, kernel, cin, cout))).astype(np.float32)
        pad = kernel // 2

        def conv(x, w, stride=stride, pad=pad):
            return jax.lax.conv_general_dilated(
                x, w, (stride, stride), [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )

        g = rng.standard_normal(jax.eval_shape(conv, x, w).shape).astype(np.float32)
        forward = jax.jit(conv)
        input_grad = jax.jit(lambda x, w, g, conv=conv: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
        weight_grad = jax.jit(lambda x, w, g, conv=conv: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
        tx, tg = (torch.from_numpy(a.transpose(0, 3, 1, 2).copy()) for a in (x, g))
        tw = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
        options = dict(stride=stride, padding=pad)

        def torch_forward():
            with torch.no_grad():
                torch.nn.functional.conv2d(tx, tw, **options)

        pairs = {
            "forward": (lambda: forward(x, w).block_until_ready(), torch_forward),
            "input gradient": (
                lambda: input_grad(x, w, g).block_until_ready(),
                lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tg, **options),
            ),
            "weight gradient": (
                lambda: weight_grad(x, w, g).block_until_ready(),
                lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tg, **options),
            ),
        }
        times.append(
            {
                product: (count * timed(ours, args.calls), count * timed(theirs, args.calls))
                for product, (ours, theirs) in pairs.items()
            }
        )
    rows = [
        (
            f"ResNet18's {sum(shape[-1] for shape in shapes)} backbone convolutions: {product}",
            sum(t[product][0] for t in times),
            sum(t[product][1] for t in times),
        )
        for product in CONV_PRODUCTS
    ]
    side, cin, cout, kernel, _, count = shapes[0]
    rows.append(
        (
            f"of which the weight gradient of the {count} {kernel}x{kernel} {cin} -> {cout} convolutions "
            f"at {side}x{side}",
            *times[0]["weight gradient"],
        )
    )
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="batch (default 16)")
    parser.add_argument(
        "--size",
        type=int,
        default=224,
        help="input side, a multiple of 16: the attention blocks' patches (default 224)",
    )
    parser.add_argument("--calls", type=int, default=7, help="timed calls per part (default 7)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch < 1 or args.calls < 1:
        parser.error(f"--batch and --calls must be >= 1, got {args.batch} and {args.calls}")
    if args.size < 16 or args.size % 16:
        parser.error(
            f"--size must be a positive multiple of 16 (the attention blocks' patches tile the "
            f"feature maps), got {args.size}"
        )
    print("\n".join(measure(args)))


if __name__ == "__main__":
    main()
