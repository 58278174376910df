"""Section 5: SAFE shard graphs, accuracy against the expected cost of forgetting an example."""

from __future__ import annotations

import time

import jax
import numpy as np

import tangent
from experiments.harness import markdown_table
from experiments.tangent_composition import measure
from experiments.tangent_composition.training import TANGENT, Setup, chunk


def graph_name(degree: int) -> str:
    return "disconnected" if degree == 0 else f"ring, degree {degree}"


def run(setup: Setup) -> tuple[str, dict]:
    c, k, data, num = setup.config, setup.config.k, setup.main, setup.config.shards[0]
    lr = setup.summaries["taft"]["lr"][f"{k}/{TANGENT if k else 'probe'}"]
    test_h, labels = data.h(k, "test"), data.labels("test")
    recipe = data.recipe.replace(learning_rate=lr)
    rows, points = [], {}
    for degree in c.graph_degrees:
        graph = tangent.ShardGraph.ring(num, degree)
        accs, forget_record = [], None
        for seed in setup.seeds:
            setup.log(f"5/6 SAFE, {graph_name(degree)} graph of {num} shards, seed {seed}")
            index = measure.shard_indices(data.n_train, num, seed)
            safe = tangent.ShardedComposition(
                data.model(k, TANGENT, seed), graph, data.h(k), data.labels(), list(index), steps=data.steps_for,
                key=jax.random.key(seed), batch_size=c.batch_size, progress=c.progress, loss=recipe.loss_fn(),
                optimizer=recipe.make_optimizer, penalty=recipe.penalty, log_every=chunk, precomputed=True)
            accs.append(measure.accuracy(measure.logits(safe.model, safe.vector(), test_h), labels))
            if seed == setup.seeds[0]:  # forget one example and time the retraining
                example = int(index[c.forget][0])
                start = time.perf_counter()
                retrained = safe.forget([example])
                forget_record = {"example": example, "retrained": list(retrained),
                                 "seconds": time.perf_counter() - start,
                                 "test_acc_after": measure.accuracy(measure.logits(safe.model, safe.vector(), test_h),
                                                                    labels)}
                if retrained != graph.holders(c.forget):
                    raise AssertionError(f"retrained {retrained}, expected the holders {graph.holders(c.forget)}")
        cost = graph.expected_cost([index.shape[1]] * num)
        setup.results.log({"section": "safe", "degree": degree, "shards": num, "test_acc": accs, **cost,
                           "forget": forget_record})
        rows.append([graph_name(degree), num, degree + 1, measure.pm(accs), cost["components"],
                     f"{cost['fraction']:.2f}", forget_record["retrained"], forget_record["seconds"]])
        points[degree] = (cost["fraction"], accs)
    paragon = setup.summaries["taft"]["test"][f"{k}/{TANGENT}"]
    rows.append(["complete (one model on all data, section 1)", 1, num, measure.pm(paragon), 1, "1.00", "[0]", "-"])
    text = f"""## 5. SAFE: shard graphs, accuracy against forgetting cost

The training set of {data.task.name.split(' on ')[1]} is cut into {num} random shards, the nodes of a
graph (`tangent.ShardGraph`); each node's tangent component trains on its own shard and its
neighbours' (`tangent.ShardedComposition`, as many epochs as one model on all data), and the model
is their uniform composition. Forgetting an example retrains exactly the components whose data
held it (asserted for one example, first seed; its wall time includes compilation). Expected cost
per deleted example, averaged over examples: components retrained, and the examples they train on
again as a fraction of the training set. Mean ± std over {c.seeds} seeds.

{markdown_table(["graph", "nodes", "shards per component", "test accuracy", "components retrained per deletion",
                 "data retrained per deletion (fraction)", "retrained for one example", "forget s"], rows)}"""
    xs = [points[g][0] for g in c.graph_degrees] + [1.0]
    ys = [float(np.mean(points[g][1])) for g in c.graph_degrees] + [float(np.mean(paragon))]
    setup.results.plot("safe", [{"title": f"SAFE, {num} shards", "xlabel": "data retrained per deletion (fraction)",
                                 "ylabel": "test accuracy", "logx": True,
                                 "series": {"shard graphs, then one model": (xs, ys)}}])
    return text, {}
