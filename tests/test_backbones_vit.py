"""experiments.backbones.ViT: output shapes, big_vision parameter names, block ranges."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.backbones import ViT, ViTConfig


def shapes(cfg, batch=2):
    x = jax.ShapeDtypeStruct((batch, cfg.image_size, cfg.image_size, 3), jnp.float32)
    variables = jax.eval_shape(ViT(cfg).init, jax.random.key(0), x)
    return ViT(cfg), variables, x


def test_vit_b16_shapes_names_and_parameter_count():
    vit, variables, x = shapes(ViTConfig.preset("B/16"))
    params = variables["params"]
    assert set(params) == {"embedding", "cls", "pos_embedding", "Transformer", "head"}
    assert set(params["Transformer"]) == {f"encoderblock_{i}" for i in range(12)} | {"encoder_norm"}
    assert set(params["Transformer"]["encoderblock_0"]) == {
        "LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"}
    assert params["pos_embedding"].shape == (1, 196, 768)
    assert params["embedding"]["kernel"].shape == (16, 16, 3, 768)
    # The published size of ViT-B/16 with a 1000-class head is 86,567,656 parameters, with a
    # position embedding for the cls token too; big_vision (and this model) has none for it.
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params)) == 86_567_656 - 768
    assert jax.eval_shape(vit.apply, variables, x).shape == (2, 1000)


def test_vit_tiny_block_ranges_and_errors():
    vit, variables, x = shapes(ViTConfig.preset("tiny"))
    tokens = jax.eval_shape(lambda v, x: vit.apply(v, x, stop=5), variables, x)
    assert tokens.shape == (2, 17, 64)
    logits = jax.eval_shape(lambda v, h: vit.apply(v, h, start=5), variables, tokens)
    assert logits.shape == (2, 10)
    with pytest.raises(ValueError, match="tokens have shape"):
        jax.eval_shape(lambda v, x: vit.apply(v, x, start=5), variables, x)
    with pytest.raises(ValueError, match="images have shape"):
        jax.eval_shape(vit.apply, variables, jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32))
    with pytest.raises(ValueError, match="unknown ViT preset"):
        ViTConfig.preset("L/14")
