"""A PyTorch twin of faml_jax's network (R18, R18+FA, R18+FAML; docs/method.md 2), for like-for-like
benchmarks and as an independent check of the Flax model.

``TorchTwin(config)`` is written the way a PyTorch user would write the same network (NCHW,
``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.LayerNorm``, ``F.scaled_dot_product_attention``), with
the same FA stem (region crops, zero padding at the crop's border, outputs placed and fused with
learnable weights), the same attention blocks (patch tokens with position embeddings, pre-norm
encoder layers, a zero-initialised gate projection, ``x * 2 sigmoid(g)``), ResNet18's stages and
the dense head. ``from_flax(variables, config)`` builds it from this project's Flax variables, the
reverse of ``faml_jax.pretrained.torch_to_flax``: conv kernels (kH, kW, I, O) -> (O, I, kH, kW),
dense kernels (in, out) -> (out, in), attention projections (dim, heads, head_dim) -> (heads *
head_dim, dim), BatchNorm scale/bias/mean/var -> weight/bias/running_mean/running_var.
``flax_params(model)`` maps the twin's parameters back (to compare after training steps).

Differences that are PyTorch's, kept rather than hidden: in training mode ``nn.BatchNorm2d``
updates its running variance with the unbiased batch variance (n / (n - 1) times Flax's biased
one); the normalisation itself uses the biased variance in both, so logits and gradients agree.

torch is a benchmark and test extra only (``pip install -e '.[torch]'``); nothing in
``faml_jax`` imports this module.
"""

from __future__ import annotations

import jax
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faml_jax.config import ModelConfig
from faml_jax.models.layers import BN_EPSILON, BN_MOMENTUM

LAYER_NORM_EPSILON = 1e-6  # flax.linen.LayerNorm's default (PyTorch's is 1e-5)


def _bn(width: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(width, eps=BN_EPSILON, momentum=1.0 - BN_MOMENTUM)


def _stem_conv(width: int) -> nn.Conv2d:
    return nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)


class FAStem(nn.Module):
    """ResNet18's conv1 plus one convolution per facial region, fused ``F_main + sum_r w_r F_r``."""

    def __init__(self, width: int, regions, input_size: int, fa_init: float):
        super().__init__()
        self.conv_main = _stem_conv(width)
        self.pixels = [region.pixels(input_size) for region in regions]
        self.conv_regions = nn.ModuleList(_stem_conv(width) for _ in regions)
        self.fusion_weights = nn.Parameter(torch.full((len(regions),), float(fa_init))) if regions else None

    def forward(self, x):
        fused = self.conv_main(x)
        fmap = fused.shape[-1]
        for i, (top, left, bottom, right) in enumerate(self.pixels):
            aux = self.conv_regions[i](x[:, :, top:bottom, left:right])
            dy, dx = top // 2, left // 2
            placed = F.pad(aux, (dx, fmap - dx - aux.shape[-1], dy, fmap - dy - aux.shape[-2]))
            fused = fused + self.fusion_weights[i] * placed
        return fused


class BasicBlock(nn.Module):
    def __init__(self, inp: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, width, 3, stride, 1, bias=False)
        self.bn1 = _bn(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = _bn(width)
        self.downsample = None
        if stride != 1 or inp != width:
            self.downsample = nn.Sequential(nn.Conv2d(inp, width, 1, stride, bias=False), _bn(width))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class EncoderLayer(nn.Module):
    """Pre-norm encoder layer; the key projection has no bias (as the Flax model's)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPSILON)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPSILON)
        self.mlp_in = nn.Linear(dim, int(dim * mlp_ratio))
        self.mlp_out = nn.Linear(int(dim * mlp_ratio), dim)

    def forward(self, tokens):
        b, n, dim = tokens.shape
        y = self.norm1(tokens)
        q, k, v = (
            p(y).view(b, n, self.heads, dim // self.heads).transpose(1, 2) for p in (self.query, self.key, self.value)
        )
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, dim)
        tokens = tokens + self.out(y)
        return tokens + self.mlp_out(F.gelu(self.mlp_in(self.norm2(tokens)), approximate="tanh"))


class AttentionBlock(nn.Module):
    """A ViT over ``patch`` x ``patch`` patches whose tokens gate their patch: ``x * 2 sigmoid(g)``."""

    def __init__(self, channels: int, fmap: int, patch: int, dim: int, depth: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.patch = patch
        self.embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.randn(1, (fmap // patch) ** 2, dim) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPSILON)
        self.project = nn.Linear(dim, patch * patch * channels)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, x):
        b, ch, h, w = x.shape
        p = self.patch
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (b, gh * gw, dim), row-major
        for layer in self.layers:
            tokens = layer(tokens)
        gate = self.project(self.norm(tokens))  # (b, gh * gw, p * p * ch), each token's patch in (p, p, ch) order
        gate = gate.view(b, h // p, w // p, p, p, ch).permute(0, 5, 1, 3, 2, 4).reshape(b, ch, h, w)
        return x * (2.0 * torch.sigmoid(gate))


class TorchTwin(nn.Module):
    """The network of ``config`` (a ``faml_jax.config.ModelConfig``): NCHW float input, normalised
    as faml_jax normalises on the device, -> logits (batch, num_classes)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"unsupported dtype {config.dtype}")
        self.config = config
        widths = config.widths
        self.stem = FAStem(widths[0], config.fa_regions, config.input_size, config.fa_init)
        self.bn1 = _bn(widths[0])
        stages, attention = [], []
        inp, fmap = widths[0], config.input_size // 4
        for stage, (width, depth) in enumerate(zip(widths, config.stage_depths)):
            blocks = []
            for block in range(depth):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(inp, width, stride))
                inp, fmap = width, fmap // stride
            stages.append(nn.Sequential(*blocks))
            if config.attention and stage < len(widths) - 1:
                attention.append(
                    AttentionBlock(
                        width,
                        fmap,
                        config.attn_patch_sizes[stage],
                        config.attn_dim,
                        config.attn_depth,
                        config.attn_heads,
                        config.attn_mlp_ratio,
                    )
                )
        self.stages = nn.ModuleList(stages)
        self.attention = nn.ModuleList(attention)
        self.fc = nn.Linear(widths[-1], config.num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.stem(x)))
        x = F.max_pool2d(x, 3, 2, 1)
        for stage, blocks in enumerate(self.stages):
            x = blocks(x)
            if stage < len(self.attention):
                x = self.attention[stage](x)
        return self.fc(x.mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------------------
# Flax variables <-> the twin's parameters


def _conv(kernel) -> np.ndarray:
    return np.transpose(np.asarray(kernel, np.float32), (3, 2, 0, 1))


def _dense(kernel) -> np.ndarray:
    kernel = np.asarray(kernel, np.float32)
    return kernel.reshape(kernel.shape[0], -1).T  # (in, [heads, head_dim] or out) -> (out, in)


def _out(kernel) -> np.ndarray:
    kernel = np.asarray(kernel, np.float32)
    return kernel.reshape(-1, kernel.shape[-1]).T  # (heads, head_dim, dim) -> (dim, heads * head_dim)


def layout(config: ModelConfig) -> dict[str, tuple[str, tuple[str, ...], callable]]:
    """Every tensor of the twin's state dict: ``name -> (collection, flax path, flax -> torch)``."""
    flat = lambda a: np.asarray(a, np.float32).reshape(-1)  # noqa: E731  (from_flax reshapes to the twin's shape)
    entries: dict = {}

    def bn(prefix, path):
        entries[f"{prefix}.weight"] = ("params", path + ("scale",), flat)
        entries[f"{prefix}.bias"] = ("params", path + ("bias",), flat)
        entries[f"{prefix}.running_mean"] = ("batch_stats", path + ("mean",), flat)
        entries[f"{prefix}.running_var"] = ("batch_stats", path + ("var",), flat)

    def dense(prefix, path, kind=_dense, bias=True):
        entries[f"{prefix}.weight"] = ("params", path + ("kernel",), kind)
        if bias:
            entries[f"{prefix}.bias"] = ("params", path + ("bias",), flat)

    entries["stem.conv_main.weight"] = ("params", ("stem", "conv_main", "kernel"), _conv)
    for i, _ in enumerate(config.fa_regions):
        entries[f"stem.conv_regions.{i}.weight"] = ("params", ("stem", f"conv_region{i}", "kernel"), _conv)
    if config.fa_regions:
        entries["stem.fusion_weights"] = ("params", ("stem", "fusion_weights"), flat)
    bn("bn1", ("bn1",))
    inp = config.widths[0]
    for stage, (width, depth) in enumerate(zip(config.widths, config.stage_depths)):
        for block in range(depth):
            prefix, path = f"stages.{stage}.{block}", (f"layer{stage + 1}_{block}",)
            entries[f"{prefix}.conv1.weight"] = ("params", path + ("conv1", "kernel"), _conv)
            bn(f"{prefix}.bn1", path + ("bn1",))
            entries[f"{prefix}.conv2.weight"] = ("params", path + ("conv2", "kernel"), _conv)
            bn(f"{prefix}.bn2", path + ("bn2",))
            if (stage > 0 and block == 0) or inp != width:
                entries[f"{prefix}.downsample.0.weight"] = ("params", path + ("downsample_conv", "kernel"), _conv)
                bn(f"{prefix}.downsample.1", path + ("downsample_bn",))
            inp = width
        if config.attention and stage < len(config.widths) - 1:
            prefix, path = f"attention.{stage}", (f"attn{stage + 1}",)
            entries[f"{prefix}.embed.weight"] = ("params", path + ("embed", "kernel"), _conv)
            entries[f"{prefix}.embed.bias"] = ("params", path + ("embed", "bias"), flat)
            entries[f"{prefix}.pos_embed"] = ("params", path + ("pos_embed",), flat)
            for i in range(config.attn_depth):
                lp, lpath = f"{prefix}.layers.{i}", path + (f"layer{i}",)
                for norm in ("norm1", "norm2"):
                    entries[f"{lp}.{norm}.weight"] = ("params", lpath + (norm, "scale"), flat)
                    entries[f"{lp}.{norm}.bias"] = ("params", lpath + (norm, "bias"), flat)
                dense(f"{lp}.query", lpath + ("attn", "query"))
                dense(f"{lp}.key", lpath + ("attn", "key"), bias=False)
                dense(f"{lp}.value", lpath + ("attn", "value"))
                dense(f"{lp}.out", lpath + ("attn", "out"), kind=_out)
                dense(f"{lp}.mlp_in", lpath + ("mlp_in",))
                dense(f"{lp}.mlp_out", lpath + ("mlp_out",))
            entries[f"{prefix}.norm.weight"] = ("params", path + ("norm", "scale"), flat)
            entries[f"{prefix}.norm.bias"] = ("params", path + ("norm", "bias"), flat)
            dense(f"{prefix}.project", path + ("project",))
    dense("fc", ("fc",))
    return entries


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def from_flax(variables: dict, config: ModelConfig) -> TorchTwin:
    """The twin of ``config`` holding Flax ``variables`` (``{"params", "batch_stats"}``), in eval
    mode; every tensor of both sides is used (a leftover on either side is an error)."""
    model = TorchTwin(config)
    entries = layout(config)
    state = model.state_dict()
    wanted = {k for k in state if not k.endswith("num_batches_tracked")}
    if set(entries) != wanted:
        raise ValueError(f"twin and layout differ: {sorted(set(entries) ^ wanted)[:10]}")
    used = set()
    new = {}
    for name, (collection, path, convert) in entries.items():
        value = convert(_get(variables[collection], path))
        if value.size != state[name].numel():
            raise ValueError(f"{name}: Flax {'/'.join(path)} has {value.size} values, the twin {state[name].numel()}")
        new[name] = torch.from_numpy(np.array(value, np.float32, copy=True)).reshape(state[name].shape)
        used.add((collection, path))
    flax_leaves = {
        (c, tuple(k.key for k in p))
        for c in ("params", "batch_stats")
        for p, _ in jax.tree_util.tree_flatten_with_path(variables.get(c, {}))[0]
    }
    if flax_leaves - used:
        raise ValueError(f"Flax variables the twin does not hold: {sorted(flax_leaves - used)[:10]}")
    model.load_state_dict(new, strict=False)
    return model.eval()


def flax_params(model: TorchTwin) -> dict[tuple[str, ...], np.ndarray]:
    """The twin's trainable parameters in Flax's layout, keyed by Flax path (``("stem",
    "conv_main", "kernel")``, ...), shapes as Flax holds them up to the attention projections'
    (heads, head_dim) split, which is flattened."""
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    out = {}
    for name, (collection, path, convert) in layout(model.config).items():
        if collection != "params":
            continue
        value = state[name]
        if convert is _conv:
            value = np.transpose(value, (2, 3, 1, 0))
        elif convert in (_dense, _out):
            value = value.T
        out[path] = value
    return out
