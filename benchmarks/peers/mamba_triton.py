"""Mamba-2's Triton SSD kernel (``mamba_chunk_scan_combined``) as a peer of ``ssm_kernels.ssd``.

Only the Triton modules of the ``mamba-ssm`` source distribution are imported: the package's own
``__init__``, which loads its CUDA extension (never built here), is skipped. The sdist is kept in
``benchmarks/.peers/`` (git-ignored, never committed) and reaches a machine without network through
the device tool's ``carry``. Bring it, once, on a machine with network:

    python -m benchmarks.peers.mamba_triton download

which runs ``pip download --no-deps --no-binary :all: mamba-ssm==2.3.2.post1 -d benchmarks/.peers``.
pip prepares an sdist's metadata by running its ``setup.py``, which imports torch; where torch is
not installed, the command puts a stand-in ``torch`` (version attributes only) on that step's path
and sets ``MAMBA_SKIP_CUDA_BUILD=TRUE``; nothing is built or installed.

Same computation as ``ssd(X, A, B, C)``: Mamba-2 takes ``x``, a step ``dt`` (batch, length, heads)
and one rate ``A_head`` per head, and scans ``x * dt`` with log decay ``dt * A_head``. With
``dt = -A`` (> 0 for decays), ``x = X / dt`` and ``A_head = -1`` both are ``X`` and ``A``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

from benchmarks.peers import PeerUnavailable

VERSION = "2.3.2.post1"
PEERS_DIR = Path(__file__).resolve().parents[1] / ".peers"
DEFAULT_CHUNK = 256  # Mamba-2's default chunk_size

_STAND_IN = {  # a stand-in torch for setup.py's metadata step (MAMBA_SKIP_CUDA_BUILD=TRUE)
    "torch/__init__.py": "__version__ = '0.0'\nfrom . import version\n\n\n"
                         "def __getattr__(name):\n    return None\n",
    "torch/version.py": "cuda = None\nhip = None\n",
    "torch/utils/__init__.py": "",
    "torch/utils/cpp_extension.py": "def __getattr__(name):\n    return None\n",
}


def sdist_path(folder: Path = PEERS_DIR) -> Path:
    return Path(folder) / f"mamba_ssm-{VERSION}.tar.gz"


def download(folder: Path = PEERS_DIR) -> Path:
    """``pip download`` the pinned sdist into ``folder``; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"mamba-ssm=={VERSION}", "-d", str(folder)]
    env = dict(os.environ, MAMBA_SKIP_CUDA_BUILD="TRUE")
    with tempfile.TemporaryDirectory() as stand_in:
        if importlib.util.find_spec("torch") is None:
            for name, text in _STAND_IN.items():
                (Path(stand_in) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(stand_in) / name).write_text(text)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [stand_in, env.get("PYTHONPATH")]))
            command.insert(command.index("--no-deps"), "--no-build-isolation")
        subprocess.run(command, env=env, check=True)
    return sdist_path(folder)


def load(folder: Path = PEERS_DIR):
    """``mamba_chunk_scan_combined`` from the sdist's Triton modules, or ``PeerUnavailable``."""
    tarball = sdist_path(folder)
    if not tarball.exists():
        raise PeerUnavailable(f"{tarball} is missing: run `python -m benchmarks.peers.mamba_triton "
                              "download` on a machine with network, then carry benchmarks/.peers")
    missing = [m for m in ("torch", "triton", "einops") if importlib.util.find_spec(m) is None]
    if missing:
        raise PeerUnavailable(f"Mamba-2's Triton kernel needs {', '.join(missing)} (not installed)")
    import torch

    if not torch.cuda.is_available():
        raise PeerUnavailable("Mamba-2's Triton kernel needs a CUDA device; torch sees none")
    if "mamba_ssm" not in sys.modules:
        root = Path(tempfile.mkdtemp(prefix="mamba_ssm-"))
        with tarfile.open(tarball) as tar:
            sources = [m for m in tar.getmembers()
                       if "/mamba_ssm/" in m.name and m.name.endswith(".py")]
            tar.extractall(root, members=sources, filter="data")
        package = types.ModuleType("mamba_ssm")  # its __init__ (CUDA extension) is never run
        package.__path__ = [str(root / f"mamba_ssm-{VERSION}" / "mamba_ssm")]
        sys.modules["mamba_ssm"] = package
    try:
        module = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
    except Exception as err:  # a Triton or torch API the pinned sources do not match
        raise PeerUnavailable(f"importing mamba_ssm.ops.triton.ssd_combined failed: "
                              f"{type(err).__name__}: {err}") from err
    return module.mamba_chunk_scan_combined


def ssd_runners(X, A, B, C, chunk_size: int = DEFAULT_CHUNK) -> dict:
    """``{"fwd": (fn, args, sync), "fwd+bwd": ...}`` running Mamba-2's kernel on the JAX arrays
    ``X, A, B, C`` of ``ssd`` (shared through DLPack); ``fn(*args)`` returns ``(Y, final)`` or,
    for "fwd+bwd", the gradients of ``sum(Y) + sum(final)`` w.r.t. ``x, dt, A_head, B, C``."""
    scan = load()
    import torch

    X, A, B, C = (torch.from_dlpack(a) for a in (X, A, B, C))
    dt = -A.float()
    x = (X.float() / dt[..., None]).to(X.dtype)
    a_head = -torch.ones(X.shape[2], device=X.device, dtype=torch.float32)
    inputs = (x, dt, a_head, B, C)

    def forward(*inputs):
        return scan(*inputs, chunk_size, return_final_states=True)

    def forward_backward(*inputs):
        inputs = [t.detach().requires_grad_() for t in inputs]
        loss = sum(o.float().sum() for o in forward(*inputs))
        return torch.autograd.grad(loss, inputs)

    def sync(_):
        torch.cuda.synchronize()

    return {"fwd": (forward, inputs, sync), "fwd+bwd": (forward_backward, inputs, sync)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["download"],
                        help=f"download: fetch the mamba-ssm {VERSION} sdist into {PEERS_DIR}")
    parser.add_argument("--dir", type=Path, default=PEERS_DIR, help="destination folder")
    args = parser.parse_args(argv)
    print(f"saved {download(args.dir)}")


if __name__ == "__main__":
    main()
