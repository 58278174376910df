"""One process of tests/test_harness_distributed.py (not a test itself): trains the harness's tiny
problem for 4 steps with a checkpoint, then resumes from it up to 6 steps, over the mesh of every
process's devices with FSDP-sharded parameters; prints the gathered parameters after "RESULT".

    python tests/multiprocess_worker.py OUT_DIR   (JAX_COORDINATOR_ADDRESS etc. for several processes)
"""

import json
import pathlib
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import harness  # noqa: E402

harness.distributed.initialize()

import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from tests.test_experiments_harness import _problem  # noqa: E402

out = pathlib.Path(sys.argv[1])
params, batches, loss_fn = _problem(batch=8)
opt = optax.adam(1e-2)
step = harness.make_train_step(loss_fn, opt)
results = harness.Results(out / "results")
state = harness.TrainState.create(params, opt, 0)
for steps in (4, 6):  # the second call resumes from the checkpoint of step 4
    final = harness.fit(state, step, batches, steps=steps, mesh=harness.make_mesh(),
                        param_rule=harness.shard_largest_axis(min_size=64), checkpoint_dir=str(out / "ckpt"),
                        checkpoint_every=4, results=results, run="tiny", log_every=1, progress=False)
sharded = any("data" in tuple(x.sharding.spec) for x in jax.tree.leaves(final.params))
gathered = multihost_utils.process_allgather(final.params, tiled=True)
print("RESULT" + json.dumps({"processes": jax.process_count(), "devices": jax.device_count(), "sharded": sharded,
                             "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(gathered)]}))
