"""Backbones cut before any block, their tangent (TAFT-k) and non-linear models, and the data.

A ``Task`` is a pretrained classifier with a new head and labelled data. Its *features at
position p* (0 <= p <= depth) are the activations entering block p, a tuple of arrays with the
examples on the leading axis: for BERT ``(hidden (n, length, width), attention_mask)``, for the
ViT ``(tokens (n, 1 + patches, width),)``, or the images at p = 0. TAFT-k linearizes the last k
blocks and the head, so the features at ``cut = depth - k`` are frozen and cached once.

Text tasks: the installed all-MiniLM-L6-v2 (mean pooling + new linear head) on a corpus of
``experiments.data`` (Rotten Tomatoes snippets, BBC News topics). Image tasks: a big_vision ViT
on a prepared tensorflow-datasets dataset.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import tangent
from experiments.backbones import ViT, bert, loaders
from experiments.data import bbc_news, labelled_text, rotten_tomatoes
from experiments.tangent_composition.config import TEXT_DATASETS, Config

CORPORA = {"rotten_tomatoes": rotten_tomatoes.load, "bbc_news": bbc_news.load}


@dataclasses.dataclass(frozen=True)
class Task:
    """A classifier ``module`` at ``variables`` (pretrained backbone + new head) and its data.

    ``embed(m, *raw) -> features at 0``; ``blocks(m, h, start, stop) -> features at stop`` from
    those at start; ``head(m, h, start) -> logits (n, classes)`` (blocks start.. and the head).
    ``block``: regex of one block's path segment for ``tangent.taft``; ``extra``: modules after
    the blocks that TAFT-k (k >= 1) also linearizes. ``last_cut``: the deepest position whose
    features can be cached. ``inputs[split]``/``labels[split]`` for split in train, validation,
    test: tuples of raw input arrays (n, ...) and int labels (n,). ``classes``: class names.
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
    inputs: dict[str, tuple]
    labels: dict[str, np.ndarray]
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

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


def reseed(model: tangent.TangentModel, seed: int) -> tangent.TangentModel:
    """``model`` with its head re-initialised from ``seed`` (the frozen features are unchanged):
    the head's parameters are moved to a fresh ``nn.Dense`` initialisation with ``around``."""
    w0 = model.primal()
    kernel = next(p for p in w0 if re.search(r"(^|/)head/kernel$", p))
    fresh = nn.Dense(w0[kernel].shape[1]).init(jax.random.key(seed), jnp.zeros((1, w0[kernel].shape[0])))
    move = {p: (fresh["params"][p.rsplit("/", 1)[1]] - w0[p]) if re.search(r"(^|/)head/", p)
            else jnp.zeros_like(w0[p]) for p in w0}
    return model.around(move)


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


def minilm_text(config: Config, dataset: str) -> Task:
    """The installed all-MiniLM-L6-v2 (mean pooling + new linear head) on a text corpus, split into
    train / validation / test by ``config``'s fractions (after keeping ``config.limit`` examples)."""
    bert_config, params, tokenizer = loaders.installed_minilm()
    if config.layers is not None:
        _check_layers(config.layers, bert_config.num_layers)
        bert_config = dataclasses.replace(bert_config, num_layers=config.layers)
        params = {**params, "encoder": _drop_blocks(params["encoder"], "layer_", config.layers)}
    corpus = CORPORA[dataset]()
    n = min(len(corpus.labels), config.limit or len(corpus.labels))
    validation, test = (max(1, round(n * f)) for f in (config.validation_fraction, config.test_fraction))
    train, val, test = labelled_text.split(corpus, tokenizer, max_length=config.max_length,
                                           validation=validation, test=test, seed=config.seed,
                                           train_limit=n - validation - test)
    classes = len(corpus.classes)
    module = bert.BertClassifier(bert_config, classes)
    head = _new_head(classes, bert_config.hidden_size, config.seed)
    return Task(
        name=f"all-MiniLM-L6-v2 ({bert_config.num_layers} blocks) on {corpus.name} ({classes} classes)",
        module=module, variables={"params": {"bert": params, "head": head}},
        depth=bert_config.num_layers, last_cut=bert_config.num_layers, block=r"layer_(\d+)",
        extra=("head",),
        embed=lambda m, ids, mask: (m.bert.embed(ids), mask),
        blocks=lambda m, h, start, stop: (m.bert.encode(h[0], h[1], start, stop), h[1]),
        head=lambda m, h, start: m.from_block(h[0], h[1], start),
        inputs={name: (s.input_ids, s.attention_mask) for name, s in
                (("train", train), ("validation", val), ("test", test))},
        labels={"train": train.labels, "validation": val.labels, "test": test.labels},
        classes=corpus.classes)


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


def vit_task(vit_config, params: dict, name: str, inputs: dict[str, np.ndarray],
             labels: dict[str, np.ndarray], classes: tuple[str, ...]) -> Task:
    """A ``ViT(vit_config)`` at ``params`` on uint8 images (n, size, size, 3) per split, scaled to
    [-1, 1] as in big_vision. Its features are cached before the last block at the deepest, since
    the final norm runs with the head."""

    def blocks(m, h, start, stop):
        return (m(h[0], start=start, stop=stop),)

    return Task(
        name=name, module=ViT(vit_config), variables={"params": params}, depth=vit_config.depth,
        last_cut=vit_config.depth - 1, block=r"encoderblock_(\d+)", extra=("encoder_norm", "head"),
        embed=lambda m, images: (images.astype(jnp.float32) / 127.5 - 1.0,),
        blocks=blocks, head=lambda m, h, start: m(h[0], start=start),
        inputs={k: (v,) for k, v in inputs.items()}, labels=labels, classes=classes)


def tfds_vit(config: Config) -> Task:
    """The ViT of ``config.checkpoint`` (new head) on the TFDS image dataset ``config.dataset``; the
    validation examples are the last ``validation_fraction`` of the training split."""
    vit_config = loaders.vit_config_from_npz(config.checkpoint)
    load = dict(data_dir=config.data_dir, image_size=vit_config.image_size, limit=config.limit)
    train, train_labels, classes = tfds_images(config.dataset, config.train_split, **load)
    test, test_labels, _ = tfds_images(config.dataset, config.test_split, **load)
    n_val = max(1, round(len(train_labels) * config.validation_fraction))
    if n_val >= len(train_labels):
        raise ValueError(f"Config.validation_fraction = {config.validation_fraction}: leaves no training "
                         f"images of {len(train_labels)}")
    vit_config = dataclasses.replace(vit_config, num_classes=classes)
    images = jax.ShapeDtypeStruct((1,) + train.shape[1:], jnp.float32)
    template = jax.eval_shape(ViT(vit_config).init, jax.random.key(0), images)
    params = loaders.load_vit_npz(config.checkpoint, template["params"], reinit=("^head/",))
    params["head"] = _new_head(classes, vit_config.width, config.seed)
    if config.layers is not None:
        _check_layers(config.layers, vit_config.depth)
        vit_config = dataclasses.replace(vit_config, depth=config.layers)
        params["Transformer"] = _drop_blocks(params["Transformer"], "encoderblock_", config.layers)
    name = f"ViT ({vit_config.depth} blocks, width {vit_config.width}) on {config.dataset} ({classes} classes)"
    split = len(train_labels) - n_val
    return vit_task(vit_config, params, name,
                    {"train": train[:split], "validation": train[split:], "test": test},
                    {"train": train_labels[:split], "validation": train_labels[split:], "test": test_labels},
                    tuple(str(i) for i in range(classes)))


def _check_layers(layers: int, depth: int) -> None:
    if not 1 <= layers <= depth:
        raise ValueError(f"Config.layers = {layers}; expected an integer in [1, {depth}] (the backbone's blocks)")


def load_task(config: Config, dataset: str) -> Task:
    """The task of ``dataset``: a text corpus on MiniLM, or a TFDS image dataset on a ViT."""
    return minilm_text(config, dataset) if dataset in TEXT_DATASETS else tfds_vit(config)
