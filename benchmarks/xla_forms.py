"""Every XLA form of each op against its reference and the JAX peers that compute the same thing.

For each op and length, in one process: every XLA implementation of the op
(``ssm_kernels.implementations(op)`` less "pallas" and "interpret"), forward and forward+backward
(``kernels.forward_backward``: the gradient of the sum of all outputs w.r.t. every float input),
float32, each compiled ahead of time; the median time of the timed calls and the compiled
temporaries (``compiled.memory_analysis().temp_size_in_bytes``), with ratios to the op's
"reference" form and to the fastest peer of the same (op, length, mode). Shapes ("full"):

- selective_scan (batch 1, dim 256, length, state 16), ``delta_softplus``, with D;
  peer: recurrentgemma's linear scan (``recurrentgemma.jax.scan.linear_scan``, its native
  ``lax.scan`` and its associative scan) over the dim*state channels of
  ``h_t = a_t * h_{t-1} + x_t``, ``a_t = exp(dt_t A)``, ``x_t = dt_t B_t u_t``, then
  ``y_t = sum_n C_t[n] h_t[n] + D u_t``.
- ssd (batch 1, length, 4 heads, headdim 64, state 16: the same 256 x 16 states); we know of no
  JAX package with an SSD op (tokamax has none), so the peer is the same linear scan over the
  heads*headdim*state channels, ``a_t = exp(A_t)`` per head, ``x_t = X_t B_t^T``, ``Y_t = h_t C_t``.
- bmojo_attention (batch 1, length, 4 heads, 4 kv heads, head_dim 64, window W = 256, no fading
  window, no memory): peers ``jax.nn.dot_product_attention(is_causal=True,
  local_window_size=(W - 1, 0), implementation="xla")`` and tokamax's "xla" and "xla_chunked"
  attention with the same window (the output only; ours also returns the log-sum-exp, not used).

Every peer's forward output is compared with ours (the "reference" form where it ran, else "xla")
before the peer is timed: a peer whose ``rel_err`` (``common.rel_err``) exceeds ``PEER_TOLERANCE``
is recorded as disagreeing and not timed. An entry whose compiled temporaries exceed
``--max-temp-gib`` is compiled but not run (the quadratic attention forms at long lengths); an entry
whose first call (which also gives the output checked) takes longer than ``--slow-call-s`` is
timed by that one call. Peers are optional (``pip install -e ".[peers]"``, then recurrentgemma with
``--no-deps``, see the README); a missing one is noted and skipped.

    python -m benchmarks.xla_forms                      # 2K, 8K, 32K on this machine
    python -m benchmarks.xla_forms --lengths 2048,8192 --ops selective_scan
    python -m benchmarks.xla_forms --sizes quick        # tiny shapes: the whole run in seconds
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import time

import jax
import jax.numpy as jnp

import ssm_kernels
from benchmarks import common, kernels
from benchmarks.peers import PeerUnavailable

OPS = ("selective_scan", "ssd", "bmojo_attention")
SIZES = {
    # shapes with the length as None; window of bmojo_attention; chunk size of ssd
    "full": {"lengths": (2048, 8192, 32768), "selective_scan": (1, 256, None, 16),
             "ssd": (1, None, 4, 64, 16), "bmojo_attention": (1, None, 4, 4, 64),
             "window": 256, "chunk_size": 64},
    "quick": {"lengths": (32,), "selective_scan": (1, 8, None, 4), "ssd": (1, None, 2, 4, 4),
              "bmojo_attention": (1, None, 2, 2, 8), "window": 16, "chunk_size": 16},
}
NOT_XLA = ("pallas", "interpret")
MODES = ("fwd", "fwd+bwd")
PEER_TOLERANCE = 1e-4
PEER_PACKAGES = ("recurrentgemma", "tokamax")


def our_forms(op: str) -> tuple[str, ...]:
    """The XLA implementations of ``op``, its "reference" first."""
    forms = [f for f in ssm_kernels.implementations(op) if f not in NOT_XLA]
    return tuple(sorted(forms, key=lambda f: f != "reference"))


def shape_at(op: str, spec: dict, length: int) -> tuple[int, ...]:
    """The shape of ``op`` in ``spec`` at sequence length ``length``."""
    return tuple(length if s is None else s for s in spec[op])


def _linear_scan(scan_type: str):
    """recurrentgemma's ``linear_scan`` of ``scan_type`` ("LINEAR_NATIVE", "ASSOCIATIVE_NATIVE"):
    (x, a) of shape (batch, length, channels) -> (h, h_last)."""
    try:
        from recurrentgemma import common as rg_common
        from recurrentgemma.jax import scan as rg_scan
    except ImportError as err:
        raise PeerUnavailable(f"recurrentgemma is not installed ({err}); "
                              "pip install --no-deps recurrentgemma") from err
    kind = rg_common.ScanType[scan_type]
    return lambda x, a: rg_scan.linear_scan(x, a, scan_type=kind)


def selective_scan_peer(scan):
    """``f(u, delta, A, B, C, D) -> (y, last_state)``: ``selective_scan(..., delta_softplus=True)``
    computed by ``scan`` over (batch, length, dim * state) channels."""

    def run(u, delta, A, B, C, D):
        batch, dim, length = u.shape
        state = A.shape[1]
        dt = jnp.swapaxes(jax.nn.softplus(delta), 1, 2)                  # (batch, length, dim)
        a = jnp.exp(dt[..., None] * A)                          # (batch, length, dim, state)
        x = (dt * jnp.swapaxes(u, 1, 2))[..., None] * jnp.swapaxes(B, 1, 2)[:, :, None, :]
        h, last = scan(x.reshape(batch, length, -1), a.reshape(batch, length, -1))
        y = jnp.einsum("bldn,bnl->bdl", h.reshape(batch, length, dim, state), C)
        return y + D[:, None] * u, last.reshape(batch, dim, state)

    return run


def ssd_peer(scan):
    """``f(X, A, B, C) -> (Y, last_state)`` of ``ssd`` (no initial state, one group per head)
    computed by ``scan`` over (batch, length, heads * headdim * state) channels."""

    def run(X, A, B, C):
        batch, length, heads, headdim = X.shape
        state = B.shape[-1]
        a = jnp.broadcast_to(jnp.exp(A)[..., None, None], (batch, length, heads, headdim, state))
        x = X[..., None] * B[:, :, :, None, :]                  # (b, l, heads, headdim, state)
        h, last = scan(x.reshape(batch, length, -1), a.reshape(batch, length, -1))
        Y = jnp.einsum("blhpn,blhn->blhp", h.reshape(x.shape), C)
        return Y, last.reshape(batch, heads, headdim, state)

    return run


def attention_peer(name: str, window: int):
    """``f(q, k, v) -> out`` of causal sliding-window attention (``window`` keys) by a peer."""
    local = (window - 1, 0)
    if name == "jax.nn (xla)":
        return lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, local_window_size=local, implementation="xla")
    try:
        import tokamax
    except ImportError as err:
        raise PeerUnavailable(f"tokamax is not installed ({err}); pip install tokamax") from err
    from absl import flags  # a dependency of tokamax

    if not flags.FLAGS.is_parsed():  # tokamax would parse our command line as absl flags
        flags.FLAGS.mark_as_parsed()
    implementation = name.removeprefix("tokamax (").removesuffix(")")
    return lambda q, k, v: tokamax.dot_product_attention(
        q, k, v, is_causal=True, local_window_size=local, implementation=implementation)


PEERS = {"selective_scan": ("recurrentgemma (linear)", "recurrentgemma (associative)"),
         "ssd": ("recurrentgemma (linear)", "recurrentgemma (associative)"),
         "bmojo_attention": ("jax.nn (xla)", "tokamax (xla)", "tokamax (xla_chunked)")}
_SCAN_TYPES = {"recurrentgemma (linear)": "LINEAR_NATIVE",
               "recurrentgemma (associative)": "ASSOCIATIVE_NATIVE"}


def entry(op: str, shape: tuple[int, ...], spec: dict):
    """(positional float32 arrays, form or peer name -> function of them) of one (op, shape)."""
    if op == "bmojo_attention":
        a = kernels.attention_inputs(shape, fading=False)
        args = (a["q"], a["k"], a["v"])
        window = spec["window"]

        def make(form):
            if form in PEERS[op]:
                return attention_peer(form, window)
            return lambda q, k, v: ssm_kernels.bmojo_attention(
                q, k, v, window=window, implementation=form)[0]
        return args, make
    args, _, _, ours = kernels.case(op, shape, jnp.float32, spec["chunk_size"])
    peer = selective_scan_peer if op == "selective_scan" else ssd_peer

    def make(form):
        return peer(_linear_scan(_SCAN_TYPES[form])) if form in PEERS[op] else ours(form)
    return args, make


def compile_modes(fn, args) -> dict:
    """``{mode: compiled}``: ``fn`` and its forward+backward, compiled ahead of time."""
    return {"fwd": jax.jit(fn).lower(*args).compile(),
            "fwd+bwd": jax.jit(kernels.forward_backward(fn)).lower(*args).compile()}


def temp_bytes(compiled) -> int | None:
    analysis = compiled.memory_analysis()
    return None if analysis is None else int(analysis.temp_size_in_bytes)


def first_call(compiled, args) -> tuple[float, object]:
    """(seconds, output) of one call of ``compiled``: its warm-up, and the check of its output."""
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return time.perf_counter() - start, out


def timed(compiled, args, first_s: float, repeats: int, slow_call_s: float) -> tuple[float, int]:
    """(median seconds, calls timed): the first call's ``first_s`` alone when it exceeds
    ``slow_call_s``, else the median of ``repeats`` more calls."""
    if first_s > slow_call_s:
        return first_s, 1
    return common.time_fn(compiled, *args, warmup=0, repeats=repeats), repeats


def measure(op, length, spec, repeats, max_temp, slow_call_s, cap) -> list[dict]:
    """The rows of every form and peer of ``op`` at ``length``, forward and forward+backward."""
    shape = shape_at(op, spec, length)
    args, make = entry(op, shape, spec)
    rows, base = [], None  # base: (name, forward output) of our first form that ran
    for form in our_forms(op) + PEERS[op]:
        kind = "peer" if form in PEERS[op] else "ours"
        head = {"op": op, "length": length, "shape": str(shape), "impl": form, "kind": kind}
        fwd, bwd = dict(head, mode="fwd"), dict(head, mode="fwd+bwd")
        rows += [fwd, bwd]
        if cap.expired():
            fwd["skipped"] = bwd["skipped"] = "time cap"
            continue
        try:
            compiled = compile_modes(make(form), args)
        except PeerUnavailable as err:
            print(f"note: {op} peer {form!r} skipped: {err}")
            fwd["skipped"] = bwd["skipped"] = f"not installed: {err}"
            continue
        except Exception as err:  # a compile failure: record it, go on
            fwd["error"] = bwd["error"] = f"{type(err).__name__}: {str(err)[:200]}"
            continue
        for row in (fwd, bwd):
            row["temp_bytes"] = temp_bytes(compiled[row["mode"]])
            row["temp_mib"] = None if row["temp_bytes"] is None else row["temp_bytes"] / 2**20
            if row["temp_bytes"] is not None and row["temp_bytes"] > max_temp:
                row["skipped"] = (f"temporaries {row['temp_bytes'] / 2**30:.1f} GiB > "
                                  f"--max-temp-gib {max_temp / 2**30:g}")
        for row in (fwd, bwd):
            if "skipped" in row:
                continue
            if cap.expired():
                row["skipped"] = "time cap"
                continue
            first_s, out = first_call(compiled[row["mode"]], args)
            if row is fwd:
                out = common.first_output(out)
                if base is None and kind == "ours":
                    base = (form, out)
                if base is not None:
                    fwd["rel_err"], fwd["rel_err_vs"] = common.rel_err(out, base[1]), base[0]
                if kind == "peer":
                    fwd["agrees"] = fwd.get("rel_err", float("inf")) <= PEER_TOLERANCE
                    if not fwd["agrees"]:  # not timed: it does not compute what ours computes
                        fwd["error"] = bwd["error"] = (
                            f"forward disagrees with ours ({base and base[0]}): rel_err "
                            f"{fwd.get('rel_err')} > {PEER_TOLERANCE}")
                        break
            seconds, calls = timed(compiled[row["mode"]], args, first_s, repeats, slow_call_s)
            row.update(ms=1e3 * seconds, calls=calls)
            mib = "?" if row["temp_mib"] is None else f"{row['temp_mib']:.4g}"
            print(f"{op} {length} {form} {row['mode']}: {row['ms']:.4g} ms, {mib} MiB temporaries",
                  flush=True)
    return rows


def add_ratios(rows: list[dict]) -> None:
    """speedup_vs_reference / temp_vs_reference against the op's "reference" form, and
    speedup_vs_peer / temp_vs_peer against the fastest peer, per (op, length, mode)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["op"], r["length"], r["mode"]), []).append(r)
    for group in groups.values():
        timed_rows = [r for r in group if "ms" in r]
        ref = next((r for r in timed_rows if r["impl"] == "reference"), None)
        peers = [r for r in timed_rows if r["kind"] == "peer"]
        peer = min(peers, key=lambda r: r["ms"]) if peers else None
        for r in timed_rows:
            for name, other in (("reference", ref), ("peer", peer)):
                if other is None:
                    continue
                r[f"speedup_vs_{name}"] = other["ms"] / r["ms"]
                if r["temp_bytes"] is not None and other["temp_bytes"]:
                    r[f"temp_vs_{name}"] = r["temp_bytes"] / other["temp_bytes"]
            if peer is not None:
                r["peer"] = peer["impl"]


def peer_versions() -> dict:
    versions = {}
    for name in PEER_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def positive_ints(text: str) -> tuple[int, ...]:
    """argparse type of ``--lengths``: comma-separated positive integers."""
    try:
        values = tuple(int(t) for t in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers; got {text!r}")
    return values


def op_names(text: str) -> tuple[str, ...]:
    """argparse type of ``--ops``: comma-separated names from ``OPS``."""
    names = tuple(text.split(","))
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown ops {unknown} in {text!r}; expected names from {OPS}")
    return names


COLUMNS = ["op", "length", "impl", "mode", "ms", "temp_mib", "speedup_vs_reference",
           "temp_vs_reference", "peer", "speedup_vs_peer", "temp_vs_peer", "rel_err", "calls",
           "error", "skipped"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", choices=sorted(SIZES), default="full",
                        help="full: the shapes above at 2K, 8K, 32K (default); quick: tiny shapes "
                             "at length 32 (the whole run in seconds)")
    parser.add_argument("--lengths", type=positive_ints, default=None,
                        help="comma-separated sequence lengths (default: the sizes' lengths)")
    parser.add_argument("--ops", type=op_names, default=OPS,
                        help="comma-separated ops (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per entry (median)")
    parser.add_argument("--max-temp-gib", type=float, default=6.0,
                        help="entries whose compiled temporaries exceed this many GiB are not run")
    parser.add_argument("--slow-call-s", type=float, default=10.0,
                        help="an entry whose first call takes longer is timed by that call alone")
    common.add_output_args(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats}: expected a positive integer")
    for name in ("max_temp_gib", "slow_call_s"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)}: "
                         "expected a positive number")

    spec = dict(SIZES[args.sizes], **({"lengths": args.lengths} if args.lengths else {}))
    cap = common.TimeCap(args.time_cap)
    load_start = os.getloadavg()
    rows = []
    for op in args.ops:
        for length in spec["lengths"]:
            rows += measure(op, length, spec, args.repeats, args.max_temp_gib * 2**30,
                            args.slow_call_s, cap)
    add_ratios(rows)
    print(f"{common.device_info()['device_kind']}, jax {jax.__version__}, peers {peer_versions()}; "
          "float32, compiled ahead of time, median ms; temp = compiled temporaries")
    print(common.format_table(rows, COLUMNS))
    path = common.write_results(
        "xla_forms", rows, out_dir=args.out, sizes=args.sizes, lengths=list(spec["lengths"]),
        shapes={op: str(spec[op]) + " (None: the length)" for op in args.ops},
        window=spec["window"], chunk_size=spec["chunk_size"], dtype="float32",
        peer_versions=peer_versions(), peer_tolerance=PEER_TOLERANCE,
        peer_check=("each peer's forward output is compared with ours (rel_err_vs) before it is "
                    "timed; agrees: rel_err <= peer_tolerance"),
        max_temp_gib=args.max_temp_gib, slow_call_s=args.slow_call_s, repeats=args.repeats,
        time_cap_s=args.time_cap, load_average={"start": load_start, "end": os.getloadavg()})
    print(f"\nwrote {path}")
    print("speedup_vs_X = time of X / time of the row (> 1: the row is faster); "
          "temp_vs_X = the row's temporaries / X's")


if __name__ == "__main__":
    main()
