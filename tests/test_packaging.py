"""Packaging: the core library (ssm_kernels, bmojo, tangent) needs only jax, flax, optax,
orbax-checkpoint, chex and numpy; what only experiments use sits in the `experiments` extra."""

import pathlib
import subprocess
import sys
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
CORE = {"jax", "flax", "optax", "orbax-checkpoint", "chex", "numpy"}
# Import names of packages in the `experiments` extra; none may be imported by the core library.
EXPERIMENTS_ONLY = ("tensorflow", "tensorflow_datasets", "tensorboard", "tqdm", "matplotlib",
                    "dp_accounting", "safetensors", "tokenizers")


def _name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()


def test_core_dependencies_and_extras():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert {_name(r) for r in project["dependencies"]} == CORE
    assert project["requires-python"] == ">=3.11"
    extras = project["optional-dependencies"]
    assert {"tensorflow-datasets", "tqdm", "matplotlib", "dp-accounting"} <= {
        _name(r) for r in extras["experiments"]}
    assert "pytest" in {_name(r) for r in extras["test"]}


def test_importing_the_library_imports_no_experiment_dependency():
    code = ("import sys, ssm_kernels, bmojo, tangent; "
            f"print(' '.join(m for m in {EXPERIMENTS_ONLY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=True)
    # tangent imports dp_accounting and tqdm only inside the functions that use them (privacy
    # accounting, progress bars), so they are absent here like the rest.
    assert done.stdout.split() == []
