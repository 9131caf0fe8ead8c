"""Tests of faml_jax.models: ResNet18's size, the FA stem and the attention blocks (docs/method.md 2)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY_MODEL, require_torch

from faml_jax import models
from faml_jax.config import ModelConfig
from faml_jax.errors import ConfigError
from faml_jax.models import AttentionBlock, FAStem
from faml_jax.region import DEFAULT_REGIONS, Region


def param_shapes(model, size=None):
    size = size or model.config.input_size
    variables = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, size, size, 3)), train=False), jax.random.key(0))
    return variables["params"]


def test_r18_has_torchvision_parameter_count():
    # torchvision.models.resnet18(num_classes=7): 11,176,512 backbone + 512 * 7 + 7 head.
    assert models.count_params(param_shapes(models.build("r18", 7))) == 11_180_103


def test_r18_faml_adds_stem_and_attention_parameters_only():
    r18 = param_shapes(models.build("r18", 7))
    faml = param_shapes(models.build("r18_faml", 7))
    # The plain network's parameters are a subset of the FAML network's, with the same shapes.
    flat_r18 = dict(jax.tree_util.tree_leaves_with_path(r18))
    flat_faml = dict(jax.tree_util.tree_leaves_with_path(faml))
    assert all(path in flat_faml and flat_faml[path].shape == leaf.shape for path, leaf in flat_r18.items())
    extra = {jax.tree_util.keystr(p[:2]) for p in set(flat_faml) - set(flat_r18)}
    stem_names = {"['stem']['conv_region0']", "['stem']['conv_region1']", "['stem']['fusion_weights']"}
    blocks = {
        f"['attn{i}']['{part}']"
        for i in (1, 2, 3)
        for part in ("embed", "pos_embed", "layer0", "layer1", "norm", "project")
    }
    assert extra == stem_names | blocks
    # Two extra 7x7x3x64 convolutions and two fusion weights in the stem.
    stem = faml["stem"]
    assert stem["conv_region0"]["kernel"].shape == (7, 7, 3, 64)
    assert stem["fusion_weights"].shape == (2,)


def test_build_rejects_unknown_names_and_options():
    with pytest.raises(ConfigError, match="unknown model 'r50'"):
        models.build("r50", 7)
    with pytest.raises(ConfigError, match="unknown model option"):
        models.build("r18", 7, width=(1, 2))
    with pytest.raises(ConfigError, match="patch"):
        models.build("r18_faml", 7, attn_patch_sizes=(4, 2))
    with pytest.raises(ConfigError, match="even"):
        models.build("r18", 7, input_size=63)


def test_attention_patch_sizes_must_divide_the_feature_map():
    """Refused when the configuration is built (one line from the programs), with the size to
    choose; the blocks' own check stays for modules built by hand."""
    with pytest.raises(
        ConfigError,
        match="input_size 40 gives a 10x10 feature map after stage 1, which attention "
        "patches of 4 do not tile: choose an input size divisible by 16",
    ):
        models.build("r18_faml", 7, widths=(8, 8, 8, 8), input_size=40, attn_dim=8, attn_heads=2)
    with pytest.raises(ConfigError, match="a 5x5 feature map after stage 2, which attention patches of 4 do not tile"):
        models.build(
            "r18_faml", 7, widths=(8, 8, 8, 8), input_size=40, attn_dim=8, attn_heads=2, attn_patch_sizes=(2, 4, 1)
        )
    block = models.AttentionBlock(patch=4, dim=8, depth=1, heads=2)
    with pytest.raises(ValueError, match="not divisible by patch size 4"):
        block.init(jax.random.key(0), jnp.zeros((1, 10, 10, 8)))


def copy_into(target, source):
    """Overwrite every leaf of ``target`` whose path also exists in ``source``."""
    flat = dict(jax.tree_util.tree_leaves_with_path(source))
    return jax.tree_util.tree_map_with_path(lambda p, x: flat.get(p, x), target)


def randomise(tree, key, scale=0.5):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def test_r18_faml_at_init_with_fa_off_equals_r18():
    """Attention blocks are the identity at initialisation (zero back-projection), and with zero
    fusion weights the FA stem is ResNet18's conv1: same backbone weights, same logits."""
    size = TINY_MODEL["input_size"]
    r18 = models.build("r18", 7, **TINY_MODEL)
    faml = models.build("r18_faml", 7, **TINY_MODEL, fa_init=0.0)
    v18 = models.init(r18, jax.random.key(1))
    # Non-trivial BatchNorm statistics, so that eval mode is tested with real running averages.
    v18["batch_stats"] = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.abs(x) + 0.5 if path[-1].key == "var" else x,
        randomise(v18["batch_stats"], jax.random.key(2), 0.1),
    )
    vfa = models.init(faml, jax.random.key(3))
    vfa = {k: copy_into(vfa[k], v18[k]) for k in vfa}
    images = jax.random.normal(jax.random.key(4), (4, size, size, 3))

    def logits(model, variables, train):
        apply = jax.jit(lambda v: model.apply(v, images, train=train, mutable=["batch_stats"] if train else False))
        out = apply(variables)
        return out[0] if train else out

    for train in (False, True):
        logits18, logitsfa = logits(r18, v18, train), logits(faml, vfa, train)
        assert np.abs(logits18).max() > 0.1
        np.testing.assert_allclose(logitsfa, logits18, atol=1e-5, rtol=1e-5)

    # The comparison is not vacuous: switching on the FA branches changes the logits, and so does
    # a non-zero attention back-projection.
    with_fa = {
        **vfa,
        "params": {**vfa["params"], "stem": {**vfa["params"]["stem"], "fusion_weights": jnp.array([0.5, 0.5])}},
    }
    reference = logits(faml, vfa, False)
    assert np.abs(logits(faml, with_fa, False) - reference).max() > 1e-3
    attn = vfa["params"]["attn2"]
    with_attn = {
        **vfa,
        "params": {**vfa["params"], "attn2": {**attn, "project": randomise(attn["project"], jax.random.key(5), 0.1)}},
    }
    assert np.abs(logits(faml, with_attn, False) - reference).max() > 1e-3


def region_mask(size, regions):
    mask = np.zeros((size, size), bool)
    for r in regions:
        top, left, bottom, right = r.pixels(size)
        mask[top:bottom, left:right] = True
    return mask


def test_fa_branch_only_sees_and_writes_its_region():
    size = 64
    stem = FAStem(features=8, regions=DEFAULT_REGIONS, fa_init=0.5)
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    variables = stem.init(jax.random.key(1), x)

    def run(images):
        fused, state = stem.apply(variables, images, mutable=["intermediates"])
        return fused, {k: v[0] for k, v in state["intermediates"].items()}

    fused, aux = run(x)
    assert set(aux) == {"region_upper_face", "region_lower_face"}

    # The placed auxiliary map is zero outside the region's rectangle in the feature map.
    for region in DEFAULT_REGIONS:
        top, left, bottom, right = region.pixels(size)
        placed = np.asarray(aux[f"region_{region.name}"])
        inside = np.zeros(placed.shape[1:3], bool)
        inside[top // 2 : bottom // 2, left // 2 : right // 2] = True
        assert np.all(placed[:, ~inside] == 0)
        assert np.all(np.abs(placed[:, inside]).sum(-1) > 0)

    # Weighted addition: F = F_main + w1 F_r1 + w2 F_r2.
    conv_main = jax.lax.conv_general_dilated(
        x,
        variables["params"]["conv_main"]["kernel"],
        (2, 2),
        ((3, 3), (3, 3)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    expected = conv_main + 0.5 * aux["region_upper_face"] + 0.5 * aux["region_lower_face"]
    np.testing.assert_allclose(fused, expected, atol=1e-5)

    # Perturbing pixels outside every region leaves both auxiliary maps unchanged.
    outside = ~region_mask(size, DEFAULT_REGIONS)
    assert outside.any()
    noise = jax.random.normal(jax.random.key(2), x.shape) * outside[None, :, :, None]
    _, aux_out = run(x + 10.0 * noise)
    for name in aux:
        np.testing.assert_array_equal(aux_out[name], aux[name])

    # Perturbing pixels inside one region only changes that region's map (and only the other's
    # where the regions overlap).
    upper, lower = DEFAULT_REGIONS
    only_upper = region_mask(size, [upper]) & ~region_mask(size, [lower])
    noise = jax.random.normal(jax.random.key(3), x.shape) * only_upper[None, :, :, None]
    _, aux_in = run(x + noise)
    assert np.abs(aux_in["region_upper_face"] - aux["region_upper_face"]).max() > 1e-3
    np.testing.assert_array_equal(aux_in["region_lower_face"], aux["region_lower_face"])


def test_fa_stem_without_regions_is_a_single_conv():
    stem = FAStem(features=4, regions=())
    x = jax.random.normal(jax.random.key(0), (1, 16, 16, 3))
    variables = stem.init(jax.random.key(1), x)
    assert set(variables["params"]) == {"conv_main"}
    assert stem.apply(variables, x).shape == (1, 8, 8, 4)


def test_regions_are_even_pixels_and_validated():
    for size in (32, 64, 100, 112, 224):
        for region in DEFAULT_REGIONS:
            coords = region.pixels(size)
            assert all(c % 2 == 0 for c in coords) and coords[2] > coords[0] and coords[3] > coords[1]
    assert Region("r", 0.25, 0.5, 0.5, 0.5).pixels(224) == (56, 112, 168, 224)
    with pytest.raises(ValueError, match="past the face box"):
        Region("r", 0.6, 0.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="not in"):
        Region("r", -0.1, 0.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="empty at input size"):
        ModelConfig(input_size=4, fa_regions=(Region("tiny", 0.0, 0.0, 0.1, 0.1),))


def test_attention_block_is_identity_at_init_and_gates_by_patch():
    block = AttentionBlock(patch=2, dim=16, depth=1, heads=2)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 6))
    variables = block.init(jax.random.key(1), x)
    np.testing.assert_array_equal(block.apply(variables, x), x)

    # With a back-projection that only has a bias, the gate is 2*sigmoid(bias) laid out per patch.
    bias = jax.random.normal(jax.random.key(2), (2 * 2 * 6,))
    params = variables["params"]
    params = {**params, "project": {"kernel": params["project"]["kernel"], "bias": bias}}
    out = block.apply({"params": params}, x)
    gate = 2.0 * jax.nn.sigmoid(bias.reshape(2, 2, 6))  # (patch row, patch col, channel)
    expected = x * jnp.tile(gate, (4, 4, 1))[None]
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.gpu
def test_bfloat16_compute_gives_float32_logits_and_float32_parameters():
    model = models.build("r18_faml", 7, **TINY_MODEL, dtype="bfloat16")
    variables = models.init(model, jax.random.key(0))
    assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float32")}
    logits = jax.jit(model.apply)(variables, jnp.ones((2, 32, 32, 3)))
    assert logits.dtype == jnp.float32 and logits.shape == (2, 7)


def test_features_are_sown():
    model = models.build("r18", 5, **TINY_MODEL)
    variables = models.init(model, jax.random.key(0))
    logits, state = model.apply(variables, jnp.ones((3, 32, 32, 3)), mutable=["intermediates"])
    (features,) = state["intermediates"]["features"]
    assert features.shape == (3, TINY_MODEL["widths"][-1])
    fc = variables["params"]["fc"]
    np.testing.assert_allclose(logits, features @ fc["kernel"] + fc["bias"], rtol=1e-5, atol=1e-6)


def test_model_config_is_resolved_and_hashable():
    model = models.build("r18_faml", 8, widths=(16, 32, 64, 128))
    assert model.config.num_classes == 8 and model.config.attention and len(model.config.fa_regions) == 2
    assert dataclasses.asdict(model.config)["widths"] == (16, 32, 64, 128)
    hash(model.config)


def test_batchnorm_running_variance_is_biased_where_pytorch_is_unbiased():
    """Comparing with PyTorch code bases (README): one training-mode update of the running
    variance from 1 with momentum 0.1 adds 0.1 * var(batch) in Flax (biased, divides by n) and
    0.1 * var(batch) * n / (n - 1) in torch.nn.BatchNorm2d (unbiased): at n = 4 x 3 x 3 = 36
    values per channel the increments differ by exactly 36/35. The normalisation itself (biased
    in both) and the running mean are equal."""
    import flax.linen as nn

    from faml_jax.models.layers import BN_EPSILON, BN_MOMENTUM

    torch = require_torch()
    x = np.random.default_rng(0).normal(1.0, 2.0, (4, 3, 3, 5)).astype(np.float32)
    bn = nn.BatchNorm(use_running_average=False, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)
    variables = bn.init(jax.random.key(0), x)
    y, updated = bn.apply(variables, x, mutable=["batch_stats"])
    tbn = torch.nn.BatchNorm2d(5, momentum=1 - BN_MOMENTUM, eps=BN_EPSILON).train()
    ty = tbn(torch.tensor(x).permute(0, 3, 1, 2))
    np.testing.assert_allclose(np.asarray(y), ty.detach().permute(0, 2, 3, 1).numpy(), atol=1e-5)
    stats = updated["batch_stats"]
    np.testing.assert_allclose(stats["mean"], tbn.running_mean.numpy(), rtol=1e-5)
    ratio = (tbn.running_var.numpy() - 0.9) / (np.asarray(stats["var"]) - 0.9)
    np.testing.assert_allclose(ratio, 36 / 35, rtol=1e-4)


def products(model, variables, size: int = 32) -> list:
    """The dtypes and precision of every convolution and matrix product in a forward pass, in
    order: ``(primitive, operand dtypes, precision)``."""
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, jnp.zeros((2, size, size, 3)))
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                found.append(
                    (eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars), str(eqn.params["precision"]))
                )
            for param in eqn.params.values():  # the jaxprs of pjit, custom_vjp, remat, ...
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
                        walk(getattr(sub, "jaxpr", sub))

    walk(jaxpr.jaxpr)
    return found


def test_bfloat16_training_keeps_the_head_and_the_logits_float32():
    """docs/method.md 2.4: convolutions and attention in bfloat16, the pooled features, the head
    (last dense layer) and the logits in float32."""
    model = models.build("r18_faml", 7, **TINY_MODEL, dtype="bfloat16")
    variables = models.init(model, jax.random.key(0))
    found = products(model, variables)
    *body, head = found
    assert head[0] == "dot_general" and head[1] == ("float32", "float32")
    assert all(dtypes == ("bfloat16", "bfloat16") for _, dtypes, _ in body) and len(body) > 20
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, jnp.zeros((2, 32, 32, 3)))
    assert out.dtype == jnp.float32


@pytest.mark.parametrize("precision", ["highest", "high", "default"])
def test_the_matmul_precision_of_float32_products_is_applied(precision):
    """``matmul_precision`` reaches every float32 convolution and product (full float32 by
    default: no TF32 on GPUs that have it); evaluation always uses the highest."""
    from faml_jax.config import evaluation_model

    model = models.build("r18_faml", 7, **TINY_MODEL, matmul_precision=precision)
    variables = models.init(model, jax.random.key(0))
    expected = str((jax.lax.Precision[precision.upper()],) * 2)
    assert {p for _, _, p in products(model, variables)} == {expected}
    evaluated = models.network(evaluation_model(model.config))
    assert {p for _, _, p in products(evaluated, variables)} == {str((jax.lax.Precision.HIGHEST,) * 2)}
    with pytest.raises(ConfigError, match="matmul_precision must be one of"):
        ModelConfig(matmul_precision="tf32")
