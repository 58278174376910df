"""SAFE-style shard graphs: components trained on overlapping shards, forgotten exactly.

After "SAFE: Machine Unlearning With Shard Graphs" (Dukler et al., arXiv 2304.13169). The
training set is cut into shards ``S_0 .. S_{K-1}``, the nodes of an undirected graph. The
component of node ``i`` is a tangent vector trained on its closed neighbourhood::

    D_i = S_i  U  (union of S_j over the edges (i, j))

and the model is their uniform composition ``f_lin(x; (1/K) sum_i d_i)`` (= the ensemble of the
components, see ``tangent.composition``). Forgetting an example of shard ``s`` retrains exactly
the components whose data held it, ``{i : s in N[i]}``, on their data without it, and nothing
else: the result is the model trained without the example. Denser graphs give each component
more data (accuracy) and make each deletion retrain more (cost); from disconnected (independent
shards, SISA-like) through ``ring(K, degree)`` to ``complete(K)`` (every component sees all data).

Expected forgetting cost, averaged over the training examples ``e`` (each deleted once):
``components = E_e |{i : shard(e) in N[i]}|`` and ``examples = E_e sum_{i holding e} |D_i|``
(the data that must be trained on again).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import numpy as np

from tangent.composition import compose
from tangent.linearize import TangentModel
from tangent.train import fit_components
from tangent.vectors import TangentVector, unstack


@dataclasses.dataclass(frozen=True)
class ShardGraph:
    """An undirected graph on shards ``0 .. num_shards - 1``; ``edges``: pairs of shard indices."""

    num_shards: int
    edges: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        if isinstance(self.num_shards, bool) or not isinstance(self.num_shards, int) or self.num_shards < 1:
            raise ValueError(f"num_shards={self.num_shards!r}: expected a positive integer")
        edges = set()
        for edge in self.edges:
            if len(edge) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer))
                                     or not 0 <= s < self.num_shards for s in edge):
                raise ValueError(f"edge {tuple(edge)!r} names an unknown shard: shards are 0 .. "
                                 f"{self.num_shards - 1}")
            if edge[0] == edge[1]:
                raise ValueError(f"edge {tuple(edge)!r} is a self-loop (a node always holds its own shard)")
            edges.add((int(min(edge)), int(max(edge))))
        object.__setattr__(self, "edges", tuple(sorted(edges)))

    @classmethod
    def disconnected(cls, num_shards: int) -> "ShardGraph":
        return cls(num_shards)

    @classmethod
    def ring(cls, num_shards: int, degree: int) -> "ShardGraph":
        """Each node joined to its ``degree // 2`` nearest nodes on each side of a ring (even degree)."""
        if degree % 2 or not 0 <= degree < num_shards:
            raise ValueError(f"degree={degree!r}: expected an even number in [0, {num_shards})")
        return cls(num_shards, tuple((i, (i + j) % num_shards) for i in range(num_shards)
                                     for j in range(1, degree // 2 + 1)))

    @classmethod
    def complete(cls, num_shards: int) -> "ShardGraph":
        return cls(num_shards, tuple((i, j) for i in range(num_shards) for j in range(i + 1, num_shards)))

    def neighbourhood(self, node: int) -> tuple[int, ...]:
        """``N[node]``: the node's shard and its neighbours', in order."""
        return tuple(sorted({node} | {b for a, b in self.edges if a == node}
                            | {a for a, b in self.edges if b == node}))

    def holders(self, shard: int) -> tuple[int, ...]:
        """The components whose data holds ``shard`` (the graph is undirected: ``N[shard]``)."""
        return self.neighbourhood(shard)

    def expected_cost(self, shard_sizes: Sequence[int]) -> dict[str, float]:
        """Expected forgetting cost per deleted example: ``components`` retrained and ``examples``
        trained on again (averaged over examples), and its ``fraction`` of all the training data
        ``examples / n``."""
        sizes = np.asarray(shard_sizes, np.float64)
        data = np.array([sizes[list(self.neighbourhood(i))].sum() for i in range(self.num_shards)])
        held = [list(self.holders(s)) for s in range(self.num_shards)]
        total = sizes.sum()
        components = sum(sizes[s] * len(h) for s, h in enumerate(held)) / total
        examples = sum(sizes[s] * data[h].sum() for s, h in enumerate(held)) / total
        return {"components": float(components), "examples": float(examples), "fraction": float(examples / total)}


class ShardedComposition:
    """The components of ``graph`` trained on ``shards`` (one array of example ids per shard,
    indexing ``inputs``/``targets``), composed uniformly; ``forget`` deletes examples.

    ``steps(n) -> int``: the training steps of a component with ``n`` examples (e.g. a fixed
    number of epochs). Component ``i`` always trains with the key ``fold_in(key, i)``;
    components with equally many examples train together (``tangent.fit_components``).
    ``fit_kwargs``: ``optimizer``, ``loss``, ``batch_size``, ``penalty``... of
    ``tangent.fit_components`` (batch sizes are capped at a component's number of examples);
    ``optimizer`` and ``log_every`` may be functions of a component's steps (e.g.
    ``Recipe.make_optimizer``, whose schedule depends on the run's length).
    """

    def __init__(self, model: TangentModel, graph: ShardGraph, inputs, targets, shards: Sequence,
                 *, steps: Callable[[int], int], key: jax.Array | None = None, **fit_kwargs):
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        n = len(targets)
        if len(shards) != graph.num_shards:
            raise ValueError(f"shards: {len(shards)} index arrays for a graph of {graph.num_shards} shards")
        shards = [np.asarray(s, np.int64) for s in shards]
        flat = np.concatenate(shards) if shards else np.zeros(0, np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= n or len(np.unique(flat)) != len(flat)):
            raise ValueError(f"shards must hold distinct example ids in [0, {n}) (the examples)")
        if any(len(s) == 0 for s in shards):
            raise ValueError("every shard must hold at least one example")
        self.model, self.graph, self.inputs, self.targets = model, graph, inputs, targets
        self.shards, self.steps, self.fit_kwargs = shards, steps, fit_kwargs
        self.key = jax.random.key(0) if key is None else key
        self.components: dict[int, TangentVector] = {}
        self._train(range(graph.num_shards))

    def data(self, node: int) -> np.ndarray:
        """The example ids of ``D_node`` (its neighbourhood's shards, in shard order)."""
        return np.concatenate([self.shards[s] for s in self.graph.neighbourhood(node)])

    def _train(self, nodes) -> None:
        groups: dict[int, list[int]] = {}
        for node in nodes:
            groups.setdefault(len(self.data(node)), []).append(node)
        for size, group in groups.items():
            index = np.stack([self.data(i) for i in group])
            kwargs, steps = dict(self.fit_kwargs), self.steps(size)
            if kwargs.get("batch_size") is not None:
                kwargs["batch_size"] = min(kwargs["batch_size"], size)
            for name in ("optimizer", "log_every"):
                if callable(kwargs.get(name)):
                    kwargs[name] = kwargs[name](steps)
            keys = jax.vmap(lambda i: jax.random.fold_in(self.key, i))(np.asarray(group))
            out = fit_components(self.model, tuple(np.asarray(a)[index] for a in self.inputs),
                                 np.asarray(self.targets)[index], steps=steps, keys=keys, **kwargs)
            self.components.update(zip(group, unstack(out.tangent)))

    def vector(self) -> TangentVector:
        """``(1/K) sum_i d_i``: the composed tangent vector."""
        return compose([self.components[i] for i in range(self.graph.num_shards)])

    def shard_of(self, example: int) -> int:
        for s, ids in enumerate(self.shards):
            if np.any(ids == example):
                return s
        raise ValueError(f"example {example!r} is in no shard (already forgotten, or not a training example)")

    def forget(self, examples: Sequence[int]) -> tuple[int, ...]:
        """Delete ``examples`` (ids) from their shards and retrain exactly the components whose data
        held them; returns those components. ValueError, before any change, for an unknown id."""
        shards = sorted({self.shard_of(e) for e in examples})
        drop = np.asarray(list(examples))
        for s in shards:
            if len(np.setdiff1d(self.shards[s], drop)) == 0:
                raise ValueError(f"forgetting {list(examples)} would empty shard {s}")
        for s in shards:
            self.shards[s] = self.shards[s][~np.isin(self.shards[s], drop)]
        nodes = tuple(sorted({i for s in shards for i in self.graph.holders(s)}))
        self._train(nodes)
        return nodes
