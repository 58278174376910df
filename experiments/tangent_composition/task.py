"""Backbones cut before any block, their tangent (TAFT-k) and non-linear models, and the data.

A ``Task`` is a pretrained classifier with a new head and labelled data. Its *features at
position p* (0 <= p <= depth) are the activations entering block p, a tuple of arrays with the
examples on the leading axis: for BERT ``(hidden (n, length, width), attention_mask)``, for the
ViT ``(tokens (n, 1 + patches, width),)``, or the images at p = 0. TAFT-k linearizes the last k
blocks and the head, so the features at ``cut = depth - k`` are frozen and cached once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import tangent
from experiments.backbones import ViT, bert, loaders
from experiments.data import sentiment
from experiments.tangent_composition.config import VADER, Config


@dataclasses.dataclass(frozen=True)
class Task:
    """A classifier ``module`` at ``variables`` (pretrained backbone + new head) and its data.

    ``embed(m, *raw) -> features at 0``; ``blocks(m, h, start, stop) -> features at stop`` from
    those at start; ``head(m, h, start) -> logits (n, classes)`` (blocks start.. and the head).
    ``block``: regex of one block's path segment for ``tangent.taft``; ``extra``: modules after
    the blocks that TAFT-k (k >= 1) also linearizes. ``last_cut``: the deepest position whose
    features can be cached. ``train``/``test``: tuples of raw input arrays (n, ...).
    """

    name: str
    module: nn.Module
    variables: dict
    depth: int
    last_cut: int
    block: str
    extra: tuple[str, ...]
    embed: Callable
    blocks: Callable
    head: Callable
    train: tuple
    train_labels: np.ndarray
    test: tuple
    test_labels: np.ndarray
    num_classes: int

    def cut(self, k: int) -> int:
        """Position of the cached features of TAFT-k (k = 0: the linear probe)."""
        return min(self.depth - k, self.last_cut)


def taft_model(task: Task, k: int, source: int | None = None) -> tangent.TangentModel:
    """TAFT-k of ``task``: ``f(x; w0) + J d`` in the last k blocks and the head (k = 0: the head
    alone, i.e. a linear probe, which is exactly linear).

    Inputs: the raw inputs (``source=None``) or the features at position ``source <= cut``;
    ``model.features`` maps them to the features at ``cut`` (the identity if ``source == cut``).
    """
    cut = task.cut(k)
    selector = tangent.taft(task.variables["params"], k, block=task.block,
                            extra=task.extra if k else ("head",))

    def features(m, *x):
        start = source
        if source is None:
            x, start = task.embed(m, *x), 0
        return x if start == cut else task.blocks(m, x, start, cut)

    return tangent.from_linen(task.module, task.variables, selector, features=features,
                              method=lambda m, h: task.head(m, h, cut))


@jax.tree_util.register_pytree_node_class
class Nonlinear(tangent.TangentModel):
    """The network itself at ``w0 + d`` in place of ``f_lin(x; d)`` (same parameters selected),
    so that ``tangent.fit``/``fit_components`` train non-linear fine-tuning of the same blocks
    with the same data, batches and optimizer."""

    @classmethod
    def of(cls, model: tangent.TangentModel) -> "Nonlinear":
        if model.features_fn is None:
            raise ValueError("Nonlinear.of needs a model with a features function")
        return cls(model.apply_fn, model.params0, model.trainable, model.features_fn)

    def apply_features(self, d, features):
        """``f(h; w0 + d)`` from cached features ``h``."""
        w = jax.tree.map(jnp.add, self.primal(), self.as_vector(d))
        return self.apply_fn(self.merge(w), features)


def cache_features(task: Task, raw: tuple, cuts) -> dict[int, tuple]:
    """{cut: features at cut} for every position in ``cuts``, one pass through the blocks:
    each position is computed from the previous one (``tangent.compute_features``)."""
    out, source, inputs = {}, None, raw
    for cut in sorted(set(cuts)):
        model = taft_model(task, task.depth - cut, source)
        inputs = out[cut] = tangent.compute_features(model, inputs)
        source = cut
    return out


def _drop_blocks(params: dict, prefix: str, keep: int) -> dict:
    """``params`` without its entries ``{prefix}{i}`` for ``i >= keep``."""
    def dropped(name: str) -> bool:
        index = name.removeprefix(prefix)
        return name.startswith(prefix) and index.isdigit() and int(index) >= keep
    return {k: v for k, v in params.items() if not dropped(k)}


def _new_head(num_classes: int, width: int, seed: int) -> dict:
    return nn.Dense(num_classes).init(jax.random.key(seed), jnp.zeros((1, width)))["params"]


def vader_minilm(config: Config) -> Task:
    """The installed all-MiniLM-L6-v2 (mean pooling + new linear head) on the VADER lexicon."""
    bert_config, params, tokenizer = loaders.installed_minilm()
    if config.layers is not None:
        _check_layers(config.layers, bert_config.num_layers)
        bert_config = dataclasses.replace(bert_config, num_layers=config.layers)
        params = {**params, "encoder": _drop_blocks(params["encoder"], "layer_", config.layers)}
    train, test = sentiment.sentiment_splits(tokenizer, num_classes=config.num_classes,
                                             max_length=config.max_length, seed=config.seed)
    train, test = (s.take(np.arange(min(len(s), n or len(s)))) for s, n in
                   ((train, config.train_limit), (test, config.test_limit)))
    module = bert.BertClassifier(bert_config, config.num_classes)
    head = _new_head(config.num_classes, bert_config.hidden_size, config.seed)
    return Task(
        name=f"all-MiniLM-L6-v2 ({bert_config.num_layers} blocks) on VADER, {config.num_classes} classes",
        module=module, variables={"params": {"bert": params, "head": head}},
        depth=bert_config.num_layers, last_cut=bert_config.num_layers, block=r"layer_(\d+)",
        extra=("head",),
        embed=lambda m, ids, mask: (m.bert.embed(ids), mask),
        blocks=lambda m, h, start, stop: (m.bert.encode(h[0], h[1], start, stop), h[1]),
        head=lambda m, h, start: m.from_block(h[0], h[1], start),
        train=(train.input_ids, train.attention_mask), train_labels=train.labels,
        test=(test.input_ids, test.attention_mask), test_labels=test.labels,
        num_classes=config.num_classes)


def tfds_images(name: str, split: str, *, data_dir: str | None, image_size: int,
                limit: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """(images uint8 (n, size, size, 3), labels int32 (n,), classes) of a prepared TFDS dataset,
    resized to ``image_size``; ValueError if it is not prepared (nothing is downloaded)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tf.config.set_visible_devices([], "GPU")  # keep TensorFlow off the accelerator JAX uses
    try:
        ds, info = tfds.load(name, split=split if limit is None else f"{split}[:{limit}]",
                             data_dir=data_dir, download=False, with_info=True, as_supervised=True)
    except (AssertionError, ValueError) as e:
        raise ValueError(f"--dataset={name!r}, split {split!r}: not a prepared tensorflow-datasets "
                         f"image dataset in {data_dir or 'the default data_dir'} (prepare it first, "
                         f"e.g. `tfds build {name}`; nothing is downloaded at run time): {e}") from e

    def prepare(image, label):
        image = tf.image.resize(image, (image_size, image_size))
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), tf.cast(label, tf.int32)

    parts = list(tfds.as_numpy(ds.map(prepare).batch(1024)))
    images = np.concatenate([p[0] for p in parts])[:limit]
    labels = np.concatenate([p[1] for p in parts])[:limit]
    return images, labels, info.features["label"].num_classes


def vit_task(vit_config, params: dict, name: str, train: np.ndarray, train_labels: np.ndarray,
             test: np.ndarray, test_labels: np.ndarray) -> Task:
    """A ``ViT(vit_config)`` at ``params`` on uint8 images (n, size, size, 3), scaled to [-1, 1]
    as in big_vision. Its features are cached before the last block at the deepest, since the
    final norm runs with the head."""

    def blocks(m, h, start, stop):
        return (m(h[0], start=start, stop=stop),)

    return Task(
        name=name, module=ViT(vit_config), variables={"params": params}, depth=vit_config.depth,
        last_cut=vit_config.depth - 1, block=r"encoderblock_(\d+)", extra=("encoder_norm", "head"),
        embed=lambda m, images: (images.astype(jnp.float32) / 127.5 - 1.0,),
        blocks=blocks, head=lambda m, h, start: m(h[0], start=start),
        train=(train,), train_labels=train_labels, test=(test,), test_labels=test_labels,
        num_classes=vit_config.num_classes)


def tfds_vit(config: Config) -> Task:
    """The ViT of ``config.checkpoint`` (new head) on the TFDS image dataset ``config.dataset``."""
    vit_config = loaders.vit_config_from_npz(config.checkpoint)
    load = dict(data_dir=config.data_dir, image_size=vit_config.image_size)
    train, train_labels, classes = tfds_images(config.dataset, config.train_split,
                                               limit=config.train_limit, **load)
    test, test_labels, _ = tfds_images(config.dataset, config.test_split, limit=config.test_limit, **load)
    vit_config = dataclasses.replace(vit_config, num_classes=classes)
    images = jax.ShapeDtypeStruct((1,) + train.shape[1:], jnp.float32)
    template = jax.eval_shape(ViT(vit_config).init, jax.random.key(0), images)
    params = loaders.load_vit_npz(config.checkpoint, template["params"], reinit=("^head/",))
    params["head"] = _new_head(classes, vit_config.width, config.seed)
    if config.layers is not None:
        _check_layers(config.layers, vit_config.depth)
        vit_config = dataclasses.replace(vit_config, depth=config.layers)
        params["Transformer"] = _drop_blocks(params["Transformer"], "encoderblock_", config.layers)
    name = f"ViT ({vit_config.depth} blocks, width {vit_config.width}) on {config.dataset}, {classes} classes"
    return vit_task(vit_config, params, name, train, train_labels, test, test_labels)


def _check_layers(layers: int, depth: int) -> None:
    if not 1 <= layers <= depth:
        raise ValueError(f"--layers={layers} must lie in [1, {depth}] (the backbone's blocks)")


def load_task(config: Config) -> Task:
    """The task of ``config.dataset``: VADER on MiniLM, or a TFDS image dataset on a ViT."""
    return vader_minilm(config) if config.dataset == VADER else tfds_vit(config)
