"""bmojo from Flax NNX: a small NNX model holding a BMojoLayer trains (its loss falls) with
nnx.Optimizer, and the layer's recurrent steps give its parallel output."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import bmojo
import bmojo.nnx

CONFIG = bmojo.preset("bmojo", vocab_size=16, d_model=16, n_layers=1, n_heads=2, window=4,
                      memory_slots=2, ssm_state=4, max_len=64)


class TinyLM(nnx.Module):
    """Embedding, one B'MOJO layer with a residual, a linear head: tokens (batch, L) -> logits."""

    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(CONFIG.vocab_size, CONFIG.d_model, rngs=rngs)
        self.mixer = bmojo.nnx.BMojoLayer(CONFIG, "bmojo", rngs=rngs)
        self.head = nnx.Linear(CONFIG.d_model, CONFIG.vocab_size, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        y, aux = self.mixer(x)
        return self.head(x + y), aux


def test_nnx_model_with_a_bmojo_layer_trains():
    model = nnx.jit(lambda: TinyLM(nnx.Rngs(0)))()  # made under jit: the eager init is slow on CPU
    assert any("mixer" in str(path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)
    # a fixed batch of sequences that repeat with period 4: predictable from the recent window
    tokens = jnp.tile(jax.random.randint(jax.random.key(1), (4, 4), 0, CONFIG.vocab_size), (1, 4))

    def loss_fn(model):
        logits, aux = model(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean() + aux

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer)) for _ in range(8)]
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses


def test_nnx_layer_decode_equals_parallel():
    layer = nnx.jit(lambda: bmojo.nnx.BMojoLayer(CONFIG, "bmojo", rngs=nnx.Rngs(2)))()
    x = jax.random.normal(jax.random.key(3), (2, 16, CONFIG.d_model))  # 16 > 2W: the store is used
    parallel, _ = nnx.jit(lambda layer, x: layer(x))(layer, x)
    step = nnx.jit(lambda layer, x_t, cache, t: layer.step(x_t, cache, t))
    cache, steps = layer.init_cache(2), []
    for t in range(x.shape[1]):
        y, cache = step(layer, x[:, t], cache, jnp.int32(t))
        steps.append(y)
    np.testing.assert_allclose(np.stack(steps, axis=1), parallel, rtol=1e-4, atol=1e-5)
    assert int((cache.memory.store.pos >= 0).sum()) > 0  # tokens entered the eidetic store
