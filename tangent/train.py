"""Training tangent vectors with optax: one model, or K components at once.

``fit`` minimises ``mean_batch loss(f_lin(x; d), y) + penalty * ||d||_2`` over the tangent
vector ``d`` only (the norm unsquared, as in the authors' TMC code; its gradient at ``d = 0`` is
taken as 0). The frozen features ``model.features(x)`` are computed once for the whole training
set and reused at every step. Steps run inside one ``lax.scan`` per call (``log_every`` splits the
run into calls for a progress bar); each step's minibatch of ``batch_size`` examples is drawn
without replacement with the key ``fold_in(key, step)`` (uniformly, or with probabilities
proportional to ``sample_weights``). A non-finite loss stops training with a
``FloatingPointError`` naming the step.

``fit_components`` trains K components (e.g. one per data shard) together: the same step
``vmap``-ed over a leading components axis of data, keys and initial vectors. With a
``mesh`` that has a ``components`` axis, that axis is sharded across devices.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tangent import losses as losses_lib
from tangent.linearize import TangentModel
from tangent.privacy import DPSGD, check_positive_finite
from tangent.vectors import dot


@dataclasses.dataclass
class FitResult:
    """``tangent``: the trained vector (stacked (K, ...) for components); ``losses``: per
    step ((steps,) or (K, steps)); ``epsilon``: privacy spent (DP-SGD with ``delta`` only)."""

    tangent: object
    losses: np.ndarray
    epsilon: float | None = None


def _take(tree, idx):
    return jax.tree.map(lambda a: a[idx], tree)


def norm_penalty(d) -> jax.Array:
    """``||d||_2`` with gradient 0 at ``d = 0`` (where the norm is not differentiable)."""
    square = dot(d, d)
    positive = square > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, square, 1.0)), 0.0)


def _run(model: TangentModel, d, opt_state, features, targets, key, first_step, probs, *,
         loss_fn: Callable, update: optax.TransformUpdateFn, n_steps: int,
         batch_size: int | None, dp: DPSGD | None, penalty: float):
    """``n_steps`` optimizer steps from step number ``first_step``; returns (d, opt_state, losses).
    ``probs``: (n,) sampling probabilities of the examples, or None (uniform)."""
    n = jax.tree.leaves(targets)[0].shape[0]

    def loss_of(d, f, y):
        return loss_fn(model.apply_features(d, f), y)

    def body(carry, step):
        d, opt_state = carry
        k_batch, k_noise = jax.random.split(jax.random.fold_in(key, step))
        f, y = features, targets
        if batch_size is not None and batch_size < n:
            idx = jax.random.choice(k_batch, n, (batch_size,), replace=False, p=probs)
            f, y = _take(features, idx), _take(targets, idx)
        if dp is None:
            loss, grads = jax.value_and_grad(loss_of)(d, f, y)
        else:
            loss, grads = dp.value_and_grad(loss_of, d, f, y, k_noise)
        if penalty:  # data-independent: added after any privatization, at no privacy cost
            value, penalty_grads = jax.value_and_grad(norm_penalty)(d)
            loss = loss + penalty * value
            grads = jax.tree.map(lambda g, p: g + penalty * p, grads, penalty_grads)
        updates, opt_state = update(grads, opt_state, d)
        return (optax.apply_updates(d, updates), opt_state), loss

    steps = first_step + jnp.arange(n_steps)
    (d, opt_state), losses = jax.lax.scan(body, (d, opt_state), steps)
    return d, opt_state, losses


def _compiled(loss_fn, optimizer, batch_size, dp, penalty, vmapped: bool):
    """``_jitted_run`` cached by its settings when they are hashable. Only the optimizer's
    ``update`` is traced (``init`` runs before), so optimizers sharing it share the compilation
    (e.g. ``Recipe.make_optimizer`` for any learning rate)."""
    try:
        return _jitted_run(loss_fn, optimizer.update, batch_size, dp, penalty, vmapped)
    except TypeError:  # unhashable settings: compile without the cache
        return _jitted_run.__wrapped__(loss_fn, optimizer.update, batch_size, dp, penalty, vmapped)


@functools.lru_cache(maxsize=64)
def _jitted_run(loss_fn, update, batch_size, dp, penalty, vmapped: bool):
    """The jitted ``_run`` (vmapped over components if asked), cached so that repeated fits
    with the same loss, optimizer update and settings (e.g. one per shard) compile once."""
    run = functools.partial(_run, loss_fn=loss_fn, update=update, batch_size=batch_size, dp=dp,
                            penalty=penalty)

    def run_all(model, d, opt_state, f, y, key, first, probs, *, n_steps):
        return jax.vmap(functools.partial(run, n_steps=n_steps), in_axes=(None, 0, 0, 0, 0, 0, None, None))(
            model, d, opt_state, f, y, key, first, probs)

    return jax.jit(run_all if vmapped else run, static_argnames="n_steps")


_features = jax.jit(lambda model, *inputs: model.features(*inputs))
_component_features = jax.jit(lambda model, *inputs: jax.vmap(model.features)(*inputs))


def _as_tuple(inputs) -> tuple:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def compute_features(model: TangentModel, inputs, chunk: int = 1024):
    """``model.features(*inputs)`` over the leading (example) axis, ``chunk`` examples per call."""
    inputs = _as_tuple(inputs)
    n = inputs[0].shape[0]
    parts = [_features(model, *_take(inputs, slice(i, i + chunk))) for i in range(0, n, chunk)]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)


def _check_batch(batch_size, n: int) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or not 1 <= batch_size <= n):
        raise ValueError(f"batch_size must be None (full batch) or an integer in [1, {n}] (the number of "
                         f"examples); got {batch_size!r}")


def _check_data(inputs, targets, lead: tuple[int, ...]) -> int:
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    shapes = [tuple(a.shape) for a in inputs + tuple(jax.tree.leaves(targets))]
    want = len(lead) + 1
    if any(len(s) < want or s[:want] != shapes[0][:want] for s in shapes):
        axes = "(components, examples, ...)" if lead else "(examples, ...)"
        raise ValueError(f"inputs and targets have shapes {shapes}; expected a shared leading {axes} axis")
    return shapes[0][len(lead)]


def _check_steps(steps, log_every, penalty) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: expected a positive integer")
    if log_every is not None and (isinstance(log_every, bool) or not isinstance(log_every, int)
                                  or log_every < 1):
        raise ValueError(f"log_every={log_every!r}: expected None or a positive integer")
    if penalty != 0:
        check_positive_finite("penalty", penalty)


def _check_finite(losses: np.ndarray, done: int) -> None:
    """FloatingPointError naming the first step (and component) whose loss is not finite."""
    bad = np.argwhere(~np.isfinite(losses))
    if len(bad):
        where = tuple(int(i) for i in bad[0])
        step = done + where[-1]
        component = f" of component {where[0]}" if losses.ndim == 2 else ""
        raise FloatingPointError(f"the training loss{component} is {losses[where]} at step {step}: "
                                 "stopping (lower the learning rate, or check the inputs for nan/inf)")


def _loop(run, carry, n_steps, log_every, progress, desc):
    log_every = n_steps if not log_every else min(log_every, n_steps)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError as e:
            raise ImportError("progress=True needs tqdm: pip install tqdm "
                              "(or the project's 'experiments' extra)") from e
        bar = tqdm(total=n_steps, desc=desc)
    all_losses, done = [], 0
    while done < n_steps:
        count = min(log_every, n_steps - done)
        d, opt_state, losses = run(*carry, jnp.int32(done), n_steps=count)
        carry = (d, opt_state) + carry[2:]
        all_losses.append(np.asarray(losses))
        _check_finite(all_losses[-1], done)
        done += count
        if bar is not None:
            bar.update(count)
            bar.set_postfix(loss=float(np.mean(all_losses[-1])))
    if bar is not None:
        bar.close()
    return carry[0], np.concatenate(all_losses, axis=-1)


def _sampling_probs(sample_weights, n: int, dp) -> jax.Array | None:
    if sample_weights is None:
        return None
    w = np.asarray(sample_weights, np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError(f"sample_weights must be ({n},) finite non-negative weights, not all zero; "
                         f"got shape {w.shape}")
    if dp is not None:
        raise ValueError("sample_weights with dp: the accountant assumes uniform sampling; drop one")
    return jnp.asarray(w / w.sum(), jnp.float32)


def fit(model: TangentModel, inputs, targets, *, optimizer: optax.GradientTransformation,
        steps: int, loss: str | Callable = "cross_entropy", batch_size: int | None = None,
        key: jax.Array | None = None, tangent=None, dp: DPSGD | None = None,
        delta: float | None = None, penalty: float = 0.0, sample_weights=None, precomputed: bool = False,
        log_every: int | None = None, progress: bool = False) -> FitResult:
    """Train a tangent vector from ``tangent`` (default zeros) on ``(inputs, targets)``.

    ``inputs``: an array (examples, ...) or a tuple of such arrays (the model's positional
    inputs); ``targets``: (examples, ...). ``penalty``: the weight of ``||d||_2`` in the loss.
    ``sample_weights`` (examples,): draw minibatches with probabilities proportional to them
    (e.g. to mix a replay buffer into each batch). ``precomputed``: ``inputs`` are already the
    features ``model.features(x)`` (e.g. from ``compute_features``, shared by many fits). ``dp``:
    DP-SGD settings; with ``delta`` the result carries the epsilon of what ran
    (``tangent.privacy``). Every argument is checked before any training.
    """
    n = _check_data(inputs, targets, ())
    _check_batch(batch_size, n)
    _check_steps(steps, log_every, penalty)
    if delta is not None and dp is None:
        raise ValueError(f"delta={delta!r} without dp: epsilon is reported for DP-SGD runs only")
    if dp is not None and delta is not None:
        if not dp.noise_multiplier > 0:
            raise ValueError(f"dp.noise_multiplier={dp.noise_multiplier!r} with delta={delta!r}: without "
                             "noise there is no finite epsilon; use noise > 0 or delta=None")
        if not 0 < delta < 1:
            raise ValueError(f"delta={delta!r}: expected a number in (0, 1)")
    probs = _sampling_probs(sample_weights, n, dp)
    key = jax.random.key(0) if key is None else key
    d = model.zeros() if tangent is None else model.as_vector(tangent)
    features = _as_tuple(inputs) if precomputed else compute_features(model, inputs)
    run = _compiled(losses_lib.get(loss), optimizer, batch_size, dp, float(penalty), vmapped=False)

    carry = (d, optimizer.init(d), features, targets, key)
    d, losses = _loop(lambda *a, n_steps: run(model, *a, probs, n_steps=n_steps), carry, steps, log_every,
                      progress, "tangent fit")
    eps = None
    if dp is not None and delta is not None:
        eps = dp.epsilon(steps=steps, batch_size=batch_size or n, dataset_size=n, delta=delta)
    return FitResult(d, losses, eps)


def fit_components(model: TangentModel, inputs, targets, *, optimizer: optax.GradientTransformation,
                   steps: int, loss: str | Callable = "cross_entropy", batch_size: int | None = None,
                   keys: jax.Array | None = None, tangents=None, dp: DPSGD | None = None,
                   penalty: float = 0.0, precomputed: bool = False, mesh: jax.sharding.Mesh | None = None,
                   log_every: int | None = None, progress: bool = False) -> FitResult:
    """Train K components at once: ``inputs``/``targets`` are (K, examples, ...), ``keys``
    (K,) (default ``split(key(0), K)``), ``tangents`` stacked (K, ...) (default zeros).

    Equal to K calls of ``fit`` with ``key=keys[k]``. ``mesh``: a ``jax.sharding.Mesh``
    with a ``components`` axis whose size divides K; the components are spread over it.
    ``precomputed``: ``inputs`` are already the (K, examples, ...) features.
    """
    _check_batch(batch_size, _check_data(inputs, targets, (0,)))
    _check_steps(steps, log_every, penalty)
    k = jax.tree.leaves(targets)[0].shape[0]
    keys = jax.random.split(jax.random.key(0), k) if keys is None else keys
    if tangents is None:
        tangents = jax.tree.map(lambda z: jnp.zeros((k,) + z.shape, z.dtype), model.zeros())
    inputs = _as_tuple(inputs)
    features = inputs if precomputed else _component_features(model, *inputs)
    opt_state = jax.vmap(optimizer.init)(tangents)
    carry = (tangents, opt_state, features, targets, keys)
    if mesh is not None:
        if "components" not in mesh.axis_names or k % mesh.shape["components"]:
            raise ValueError(f"mesh must have a 'components' axis dividing K={k}; got axes {dict(mesh.shape)}")
        shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("components"))
        carry = jax.device_put(carry, shard)
        model = jax.device_put(model, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    run = _compiled(losses_lib.get(loss), optimizer, batch_size, dp, float(penalty), vmapped=True)
    d, losses = _loop(lambda *a, n_steps: run(model, *a, None, n_steps=n_steps), carry, steps, log_every,
                      progress, f"tangent fit x{k}")
    return FitResult(d, losses)
