"""tangent.linearize: agreement with jax.linearize and finite differences, exact linearity,
parameter selection, feature caching, Linen/NNX adapters and the cost of TAFT-k."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tangent
from experiments.backbones import ViT, ViTConfig


def normal(seed, shape, scale=1.0):
    """Test data from NumPy (an eager jax.random call compiles per shape: slow on CPU)."""
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def mlp_params(seed, sizes=(5, 16, 16, 3)):
    return {f"layer{i}": {"w": normal(seed + i, (a, b), 1 / np.sqrt(a)), "b": 0.1 * jnp.ones(b)}
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}


def mlp(params, x):
    n = len(params)
    for i in range(n):
        x = x @ params[f"layer{i}"]["w"] + params[f"layer{i}"]["b"]
        x = jnp.tanh(x) if i < n - 1 else x
    return x


# Jitted evaluation: eager JVPs of Flax models dispatch thousands of small ops.
call = jax.jit(lambda m, d, *x: m(d, *x))
jvp = jax.jit(lambda m, d, *x: m.jvp(d, *x))


def random_like(tree, seed, scale=0.1):
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, [normal(seed + i, l.shape, scale) for i, l in enumerate(leaves)])


def test_agrees_with_jax_linearize_and_finite_differences():
    params = mlp_params(0)
    x = normal(1, (4, 5))
    model = tangent.linearize(mlp, params, trainable=r"layer(1|2)/")
    assert set(model.trainable) == {"layer1/w", "layer1/b", "layer2/w", "layer2/b"}
    d = tangent.TangentVector(random_like(dict(model.primal()), 2))

    # Reference: jax.linearize of the network as a function of the two last layers only.
    def f(w):
        p = dict(params, layer1={"w": w["layer1/w"], "b": w["layer1/b"]}, layer2={"w": w["layer2/w"], "b": w["layer2/b"]})
        return mlp(p, x)
    w0 = {k: v for k, v in model.primal().items()}
    y0, f_jvp = jax.linearize(f, w0)
    np.testing.assert_allclose(model(d, x), y0 + f_jvp(dict(d)), rtol=1e-5, atol=1e-6)
    out, jd = model.jvp(d, x)
    np.testing.assert_allclose(out, mlp(params, x), rtol=1e-6)

    # Central finite differences of the network itself.
    eps = 1e-2
    plus = f({k: w0[k] + eps * d[k] for k in w0})
    minus = f({k: w0[k] - eps * d[k] for k in w0})
    np.testing.assert_allclose(jd, (plus - minus) / (2 * eps), rtol=2e-2, atol=2e-4)


def test_exactly_linear_in_the_tangent_vector():
    params = mlp_params(0)
    x = normal(1, (4, 5))
    model = tangent.linearize(mlp, params)
    d1 = tangent.TangentVector(random_like(dict(model.primal()), 20, 1.0))
    d2 = tangent.TangentVector(random_like(dict(model.primal()), 30, 1.0))
    f0 = model(model.zeros(), x)
    np.testing.assert_allclose(f0, mlp(params, x), rtol=1e-6)
    a, b = 3.0, -0.7
    lhs = model(a * d1 + b * d2, x) - f0
    rhs = a * (model(d1, x) - f0) + b * (model(d2, x) - f0)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-5)
    # The nonlinear network is not linear in d at this scale: the check above can fail.
    nonlin = model.apply_nonlinear(a * d1, x) - f0
    assert not np.allclose(nonlin, a * (model.apply_nonlinear(d1, x) - f0), rtol=1e-2)


def test_selection_rules_and_errors():
    params = mlp_params(0)
    assert tangent.select(params, lambda p: p.endswith("/b")) == ("layer0/b", "layer1/b", "layer2/b")
    assert tangent.select(params, ["layer0/w", "layer2/b"]) == ("layer0/w", "layer2/b")
    with pytest.raises(ValueError, match="selects no parameter"):
        tangent.select(params, "nothing")
    model = tangent.linearize(mlp, params, "layer2")
    with pytest.raises(ValueError, match=r"d\['layer2/w'\] has shape \(3, 3\); expected \(16, 3\)"):
        model({"layer2/w": jnp.zeros((3, 3)), "layer2/b": jnp.zeros(3)}, jnp.ones((1, 5)))
    cfg = ViTConfig.preset("tiny", depth=3, width=32, mlp_dim=32, num_heads=2, image_size=16)
    variables = jax.eval_shape(ViT(cfg).init, jax.random.key(0), jnp.ones((1, 16, 16, 3)))
    chosen = tangent.select(variables, tangent.taft(variables, 1))
    assert all(("encoderblock_2/" in p or "encoder_norm/" in p or "/head/" in p) for p in chosen)
    assert any("MultiHeadDotProductAttention" in p for p in chosen)
    assert len(chosen) == 16 + 2 + 2  # one block, the final norm, the head
    with pytest.raises(ValueError, match="k must be an integer"):
        tangent.taft(variables, 4)


def small_vit(depth):
    cfg = ViTConfig.preset("tiny", depth=depth, width=32, mlp_dim=64, num_heads=2, image_size=16, patch_size=4)
    vit = ViT(cfg)
    x = normal(1, (2, 16, 16, 3))
    # Random weights from NumPy on the initialiser's shapes (compiling Flax's init costs more).
    return vit, random_like(jax.eval_shape(vit.init, jax.random.key(0), x), 7, 0.3), x


def test_cached_features_give_the_same_tangent_model():
    vit, variables, x = small_vit(3)
    sel = tangent.taft(variables, 1)
    plain = tangent.from_linen(vit, variables, sel)
    cached = tangent.from_linen(vit, variables, sel, method=lambda m, h: m(h, start=2),
                                features=lambda m, x: m(x, stop=2))
    d = tangent.TangentVector(random_like(dict(plain.primal()), 3))
    assert jax.eval_shape(lambda m, x: m.features(x), cached, x).shape == (2, 17, 32)
    # model(d, x) = apply_features(d, features(x)): the split network equals the whole one.
    np.testing.assert_allclose(call(cached, d, x), call(plain, d, x), rtol=1e-5, atol=1e-5)


def flops(fn, *args) -> float:
    """FLOPs of the lowered (pre-optimisation) HLO; JAX's symbolic-zero tangents are already
    pruned there. ``cost_analysis`` is a dict or a list of dicts depending on the jax version."""
    cost = jax.jit(fn).lower(*args).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def test_taft_runs_no_jvp_through_frozen_blocks():
    cfg = ViTConfig.preset("tiny", depth=6, width=32, mlp_dim=64, num_heads=2, image_size=16, patch_size=4)
    vit = ViT(cfg)
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    variables = jax.eval_shape(vit.init, jax.random.key(0), x)  # shapes suffice for the cost
    full = tangent.from_linen(vit, variables)
    taft1 = tangent.from_linen(vit, variables, tangent.taft(variables, 1))
    zeros = lambda m: jax.eval_shape(lambda m: m.zeros(), m)
    plain = flops(lambda v, x: vit.apply(v, x), variables, x)
    f_taft = flops(lambda m, d, x: m(d, x), taft1, zeros(taft1), x)
    f_full = flops(lambda m, d, x: m(d, x), full, zeros(full), x)
    # TAFT-1 = forward + JVP of one of six blocks; full = forward + JVP of everything.
    assert f_taft < 1.5 * plain, (f_taft, plain)
    assert f_full > 2.0 * plain, (f_full, plain)
    assert f_taft < 0.5 * f_full, (f_taft, f_full)


class BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Dense(8)(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(3)(jnp.tanh(x))


def test_linen_with_batch_stats_linearizes_in_eval_mode():
    net = BNNet()
    x = normal(0, (4, 5))
    shapes = jax.eval_shape(functools.partial(net.init, train=False), jax.random.key(1), x)
    variables = random_like(shapes, 5, 0.5)
    variables["batch_stats"]["BatchNorm_0"]["var"] = 1.0 + variables["batch_stats"]["BatchNorm_0"]["var"] ** 2
    model = tangent.from_linen(net, variables, method=lambda m, x: m(x, train=False))
    assert all(p.startswith("params/") for p in model.trainable)
    assert len(model.trainable) == 6  # two Dense (kernel, bias) and BatchNorm (scale, bias)
    d = tangent.TangentVector(random_like(dict(model.primal()), 2))

    def f(params):
        return net.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=False)
    y0, f_jvp = jax.linearize(f, variables["params"])
    d_tree = jax.tree_util.tree_map_with_path(lambda p, _: d["params/" + tangent.selection.path_str(p)],
                                              variables["params"])
    np.testing.assert_allclose(call(model, d, x), y0 + f_jvp(d_tree), rtol=1e-5, atol=1e-6)


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(5, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(jnp.tanh(self.bn(self.l1(x)))))


def test_nnx_module_linearizes_in_eval_mode():
    net = NNXNet(nnx.Rngs(0))
    net.bn.mean[...] = net.bn.mean[...] + 0.2
    x = normal(0, (4, 5))
    model = tangent.from_nnx(net, "l2|bn")
    assert net.bn.use_running_average is not True  # the user's module stays in train mode
    assert set(model.trainable) == {"params/l2/kernel", "params/l2/bias", "params/bn/scale", "params/bn/bias"}
    d = tangent.TangentVector(random_like(dict(model.primal()), 1))

    # Reference: the eval-mode network at w0 +/- eps d, set through NNX's own API.
    def run(sign, eps=1e-2):
        copy = nnx.clone(net)
        copy.eval()
        for layer, name in (("l2", "kernel"), ("l2", "bias"), ("bn", "scale"), ("bn", "bias")):
            var = getattr(getattr(copy, layer), name)
            var[...] = var[...] + sign * eps * d[f"params/{layer}/{name}"]
        return copy(x)
    out, jd = jvp(model, d, x)
    np.testing.assert_allclose(out, run(0.0), rtol=1e-6)
    np.testing.assert_allclose(jd, (run(1.0) - run(-1.0)) / 2e-2, rtol=2e-2, atol=2e-4)
