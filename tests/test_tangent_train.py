"""tangent losses, fit (against gradient descent on an explicit Jacobian), K components at
once (vmap and a components mesh axis) and DP-SGD."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import tangent


def normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def net(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]


PARAMS = {"w1": normal(0, (4, 6), 0.5), "b1": normal(1, (6,), 0.1), "w2": normal(2, (6, 3), 0.5)}


def test_losses_against_numpy():
    logits = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 1, 2])
    ce = np.mean([np.log(np.exp(l).sum()) - l[y] for l, y in zip(logits.astype(np.float64), labels)])
    np.testing.assert_allclose(tangent.cross_entropy(logits, labels), ce, rtol=1e-5)
    kappa, beta = 5.0, 3.0
    rsl = np.mean([(kappa * (l[y] - beta) ** 2 + sum(l[k] ** 2 for k in range(4) if k != y)) / 4
                   for l, y in zip(logits.astype(np.float64), labels)])
    np.testing.assert_allclose(tangent.rescaled_square_loss(logits, labels, kappa=kappa, beta=beta), rsl, rtol=1e-5)
    targets = np.ones_like(logits)
    np.testing.assert_allclose(tangent.mse(logits, targets), 0.5 * np.mean(((logits - 1) ** 2).sum(1)), rtol=1e-5)
    with pytest.raises(ValueError, match="expected"):
        tangent.cross_entropy(logits, labels[:3])


def test_fit_equals_gradient_descent_on_the_explicit_jacobian():
    x, y = normal(3, (8, 4)), normal(4, (8, 3))
    model = tangent.linearize(net, PARAMS, "w2|b1")
    lr, steps = 0.3, 5
    result = tangent.fit(model, x, y, loss="mse", optimizer=optax.sgd(lr), steps=steps)
    # Reference: f_lin = f0 + J d with J (8*3, params) from jax.jacfwd; the MSE gradient is
    # J^T (f0 + J d - y) / n, in float64.
    w0 = model.primal()
    flat0, unravel = ravel_pytree(w0)

    def f(w_flat):
        w = unravel(w_flat)
        return net(dict(PARAMS, w2=w["w2"], b1=w["b1"]), x).reshape(-1)
    jac = np.asarray(jax.jacfwd(f)(flat0), np.float64)
    f0 = np.asarray(f(flat0), np.float64)
    d = np.zeros(flat0.shape)
    for _ in range(steps):
        d -= lr * jac.T @ (f0 + jac @ d - np.asarray(y, np.float64).reshape(-1)) / 8
    np.testing.assert_allclose(ravel_pytree(result.tangent)[0], d, rtol=1e-4, atol=1e-6)
    assert result.losses.shape == (steps,) and result.losses[-1] < result.losses[0]
    with pytest.raises(ValueError, match=r"batch_size must be .* \[1, 8\]"):
        tangent.fit(model, x, y, loss="mse", optimizer=optax.sgd(lr), steps=1, batch_size=9)
    with pytest.raises(ValueError, match="shared leading"):
        tangent.fit(model, x, y[:5], loss="mse", optimizer=optax.sgd(lr), steps=1)


def shards(k=3, n=12):
    x = normal(5, (k, n, 4))
    labels = jnp.asarray(np.random.default_rng(6).integers(0, 3, (k, n)))
    return x, labels


def test_components_with_vmap_equal_one_by_one():
    x, labels = shards()
    model = tangent.linearize(net, PARAMS)
    keys = jax.random.split(jax.random.key(1), 3)
    opt = optax.adam(0.05)
    together = tangent.fit_components(model, x, labels, optimizer=opt, steps=6, batch_size=5, keys=keys,
                                      log_every=4)
    for i, vector in enumerate(tangent.unstack(together.tangent)):
        alone = tangent.fit(model, x[i], labels[i], optimizer=opt, steps=6, batch_size=5, key=keys[i])
        np.testing.assert_allclose(together.losses[i], alone.losses, rtol=1e-5, atol=1e-6)
        for path in model.trainable:
            np.testing.assert_allclose(vector[path], alone.tangent[path], rtol=1e-5, atol=1e-6)


def test_components_mesh_axis_across_two_devices():
    """Also: the library runs with only its core dependencies (the optional ones blocked)."""
    script = textwrap.dedent("""
        import sys
        for name in ("tensorflow", "tensorflow_datasets", "dp_accounting", "tqdm", "matplotlib"):
            sys.modules[name] = None  # import raises ImportError
        import jax, numpy as np, optax
        from jax.sharding import Mesh
        from tests.test_tangent_train import PARAMS, net, shards
        import tangent
        x, labels = shards(k=4)
        model = tangent.linearize(net, PARAMS)
        mesh = Mesh(np.array(jax.devices()), ("components",))
        kw = dict(optimizer=optax.sgd(0.1), steps=3)
        sharded = tangent.fit_components(model, x, labels, mesh=mesh, **kw)
        plain = tangent.fit_components(model, x, labels, **kw)
        leaf = sharded.tangent["w1"]
        assert len(leaf.sharding.device_set) == 2, leaf.sharding
        np.testing.assert_allclose(leaf, plain.tangent["w1"], rtol=1e-5, atol=1e-6)
        try:
            tangent.epsilon(1.0, batch_size=2, dataset_size=8, steps=3, delta=1e-5)
        except ImportError as e:
            assert "pip install dp-accounting" in str(e), e
        else:
            raise AssertionError("epsilon ran without dp-accounting")
        print("ok")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_dp_clipping_noise_scale_and_accountant():
    model = tangent.linearize(net, PARAMS)
    x, labels = shards(k=1, n=16)
    loss_of = lambda d, f, y: tangent.cross_entropy(model.apply_features(d, f), y)
    d = tangent.TangentVector(jax.tree.map(lambda a: 3.0 * a, dict(model.primal())))
    _, grads = jax.jit(lambda d, f, y: tangent.per_example_grads(loss_of, d, f, y))(d, (x[0],), labels[0])
    flat = np.concatenate([np.asarray(grads[p]).reshape(16, -1) for p in sorted(grads)], axis=1)
    norms = np.linalg.norm(flat, axis=1)
    c = float(np.median(norms))  # half the examples get clipped
    clipped = jax.jit(tangent.clip)(grads, c)
    flat_c = np.concatenate([np.asarray(clipped[p]).reshape(16, -1) for p in sorted(clipped)], axis=1)
    np.testing.assert_allclose(np.linalg.norm(flat_c, axis=1), np.minimum(norms, c), rtol=1e-5)
    # Without noise the private gradient is the mean of the clipped gradients (NumPy reference).
    ref = flat * np.minimum(1.0, c / norms)[:, None]
    privatize = jax.jit(tangent.privatize)
    g = privatize(grads, c, 0.0, jax.random.key(0))
    np.testing.assert_allclose(np.concatenate([np.asarray(g[p]).reshape(-1) for p in sorted(g)]),
                               ref.mean(0), rtol=1e-5, atol=1e-7)
    # Noise: zero gradients, batch 4, 40000 coordinates -> std sigma * C / 4.
    zeros = {"a": jnp.zeros((4, 40000))}
    noisy = privatize(zeros, 2.0, 1.5, jax.random.key(1))["a"]
    np.testing.assert_allclose(np.std(np.asarray(noisy)), 1.5 * 2.0 / 4, rtol=0.03)
    result = tangent.fit(model, x[0], labels[0], optimizer=optax.sgd(0.1), steps=3, batch_size=4,
                         dp=tangent.DPSGD(l2_clip=1.0, noise_multiplier=1.1), delta=1e-5)
    assert np.isfinite(result.losses).all() and 0 < result.epsilon < np.inf


def analytic_gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon of a Gaussian mechanism with sensitivity / std = mu (Balle & Wang 2018):
    delta(eps) = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu), solved by bisection."""
    from math import erf, exp, sqrt
    phi = lambda t: 0.5 * (1 + erf(t / sqrt(2)))
    lo, hi = 0.0, 100.0
    for _ in range(200):
        eps = (lo + hi) / 2
        lo, hi = (eps, hi) if phi(mu / 2 - eps / mu) - exp(eps) * phi(-mu / 2 - eps / mu) > delta else (lo, eps)
    return hi


def test_accountant_describes_what_ran():
    # Full batch (q = 1): T steps of the Gaussian mechanism. Replace-one changes the clipped sum by
    # up to 2C, so with noise std sigma C the composition is one Gaussian with mu = 2 sqrt(T) / sigma;
    # RDP is an upper bound on its exact epsilon, and a tight one.
    sigma, steps, delta = 3.0, 4, 1e-5
    exact = analytic_gaussian_epsilon(2 * np.sqrt(steps) / sigma, delta)
    rdp = tangent.epsilon(sigma, batch_size=16, dataset_size=16, steps=steps, delta=delta)
    assert exact <= rdp <= 1.3 * exact, (exact, rdp)
    # Subsampling amplifies; more noise or fewer steps spend less; Poisson (add/remove, sensitivity C)
    # spends less than sampling without replacement (replace-one) at the same rate.
    eps = lambda sigma, steps, **kw: tangent.epsilon(sigma, batch_size=8, dataset_size=800, steps=steps,
                                                     delta=delta, **kw)
    assert eps(2.0, 100) < eps(1.0, 100) < eps(1.0, 1000) < tangent.epsilon(
        1.0, batch_size=800, dataset_size=800, steps=1000, delta=delta)
    assert eps(1.0, 100, sampling="poisson") < eps(1.0, 100)
    dp = tangent.DPSGD(l2_clip=1.0, noise_multiplier=sigma)
    assert dp.epsilon(steps=steps, batch_size=16, dataset_size=16, delta=delta) == rdp


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), float("inf"), "1"])
def test_clip_must_be_a_positive_finite_number(bad):
    grads = {"a": jnp.ones((3, 4))}
    with pytest.raises(ValueError, match="l2_clip=.*positive finite"):
        tangent.clip(grads, bad)
    with pytest.raises(ValueError, match="l2_clip=.*positive finite"):
        tangent.privatize(grads, bad, 1.0, jax.random.key(0))
    with pytest.raises(ValueError, match="l2_clip=.*positive finite"):
        tangent.DPSGD(l2_clip=bad, noise_multiplier=1.0)


def test_fit_refuses_bad_arguments_before_training():
    model = tangent.linearize(net, PARAMS)
    x, y = normal(3, (8, 4)), normal(4, (8, 3))
    kw = dict(loss="mse", optimizer=optax.sgd(0.1))
    for steps in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"steps=.*positive integer"):
            tangent.fit(model, x, y, steps=steps, **kw)
    with pytest.raises(ValueError, match="noise_multiplier=0.0 with delta"):
        tangent.fit(model, x, y, steps=1, dp=tangent.DPSGD(1.0, 0.0), delta=1e-5, **kw)
    with pytest.raises(ValueError, match="noise_multiplier=-1"):
        tangent.DPSGD(1.0, -1.0)
    with pytest.raises(ValueError, match="delta=1e-05 without dp"):
        tangent.fit(model, x, y, steps=1, delta=1e-5, **kw)
    with pytest.raises(ValueError, match="penalty=-1"):
        tangent.fit(model, x, y, steps=1, penalty=-1.0, **kw)
    with pytest.raises(ValueError, match=r"sample_weights must be \(8,\)"):
        tangent.fit(model, x, y, steps=1, sample_weights=np.ones(3), **kw)


def test_non_finite_loss_stops_naming_the_step():
    model = tangent.linearize(net, PARAMS)
    x, y = normal(3, (8, 4)), normal(4, (8, 3))
    # Step 0 evaluates the loss at d = 0 (finite); a nan learning rate makes d nan from step 1 on.
    with pytest.raises(FloatingPointError, match="is nan at step 1"):
        tangent.fit(model, x, y, loss="mse", optimizer=optax.sgd(float("nan")), steps=4, log_every=2)
    with pytest.raises(FloatingPointError, match=r"loss of component 1 is (nan|inf) at step 0"):
        tangent.fit_components(model, jnp.stack([x, x.at[2, 0].set(jnp.inf)]), jnp.stack([y, y]),
                               loss="mse", optimizer=optax.sgd(0.1), steps=2)


def explicit_jacobian(params, x, paths=("w2", "b1")):
    """(f0 (n*3,), J (n*3, p)) in float64 of ``net`` at ``params`` in the parameters ``paths``."""
    w0 = {p: params[p] for p in paths}
    flat0, unravel = ravel_pytree(w0)
    f = lambda w_flat: net(dict(params, **unravel(w_flat)), x).reshape(-1)
    return np.asarray(f(flat0), np.float64), np.asarray(jax.jacfwd(f)(flat0), np.float64)


def test_recipe_rsl_schedule_and_norm_penalty_against_numpy():
    x = normal(3, (8, 4))
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    model = tangent.linearize(net, PARAMS, "w2|b1")
    steps, lr, kappa, beta, penalty = 6, 0.2, 2.0, 5.0, 0.05
    recipe = tangent.Recipe(loss="rsl", kappa=kappa, beta=beta, optimizer="sgd", learning_rate=lr,
                            decay_at=(0.5, 0.8), decay_factor=0.1, penalty=penalty)
    rates = [lr * 0.1 ** ((t >= 3) + (t >= 5)) for t in range(steps)]  # boundaries round(0.5*6), round(0.8*6)
    start = {p: normal(7 + i, a.shape, 0.1) for i, (p, a) in enumerate(model.primal().items())}
    result = tangent.fit(model, x, labels, steps=steps, tangent=start, **recipe.fit_kwargs(steps))
    # Reference: RSL gradient of f = f0 + J d in float64, plus penalty * d / ||d||.
    f0, jac = explicit_jacobian(PARAMS, x)
    onehot = np.eye(3)[labels]
    target = (beta * onehot).reshape(-1)
    weight = np.where(onehot, kappa, 1.0).reshape(-1)
    d = np.asarray(ravel_pytree(tangent.TangentVector(start))[0], np.float64)
    for rate in rates:
        residual = f0 + jac @ d - target
        grad = jac.T @ (2 * weight * residual) / (8 * 3) + penalty * d / np.linalg.norm(d)
        d -= rate * grad
    np.testing.assert_allclose(ravel_pytree(result.tangent)[0], d, rtol=1e-4, atol=1e-6)
    # At d = 0 the penalty's gradient is 0 (not nan).
    zero = tangent.fit(model, x, labels, steps=2, **recipe.fit_kwargs(2))
    assert all(np.isfinite(np.asarray(v)).all() for v in zero.tangent.values())
    assert tangent.recipe("tmc_data").beta == 5 and tangent.recipe("tmc_class").beta == 15
    # The rate and the run's length live in the optimizer state: one compiled update for all of them.
    assert recipe.make_optimizer(6).update is recipe.replace(learning_rate=1.0).make_optimizer(9).update
    with pytest.raises(ValueError, match="kappa=0"):
        tangent.Recipe(kappa=0)
    with pytest.raises(ValueError, match="decay_at"):
        tangent.Recipe(decay_at=(0.8, 0.5))


def test_sample_weights_restrict_and_mix_the_batches():
    model = tangent.linearize(net, PARAMS, "w2|b1")
    x, y = normal(3, (8, 4)), normal(4, (8, 3))
    kw = dict(loss="mse", optimizer=optax.sgd(0.3), steps=4)
    weights = np.array([1, 1, 0, 1, 0, 1, 1, 0], np.float64)
    chosen = np.flatnonzero(weights)
    weighted = tangent.fit(model, x, y, batch_size=5, sample_weights=weights, **kw)
    only = tangent.fit(model, x[chosen], y[chosen], **kw)  # full batch of the 5 weighted examples
    np.testing.assert_allclose(ravel_pytree(weighted.tangent)[0], ravel_pytree(only.tangent)[0], rtol=1e-5)
