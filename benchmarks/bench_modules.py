"""Module schedules: nldsl's chunked linear-memory path against token loops and a plain WY delta rule.

    .venv/bin/python benchmarks/bench_modules.py [--batch 2] [--tokens 1024] [--heads 4]
        [--head-dim 64] [--dim 256] [--block 64] [--reps 7] [--slow-reps 3] [--threads 2]
        [--specs deltanet_recurrence deltanet gated_deltanet_recurrence gated_deltanet]
        [--no-peer] [--keep-freed-memory] [--json out.json]

One process, flush-to-zero on (torch.set_flush_denormal(True)), 2 threads. Per spec (the bare
recurrences of examples/ and the stdlib layers with their convs and norms), forward (no_grad)
and forward+backward (y.sum().backward()), tokens/s = batch * tokens / median call time:

  chunked     nldsl.compile(spec, schedule="chunked"): the whole module
  reference   nldsl.compile(spec, schedule="reference"): the per-token interpreter
  kernel      delta_chunk.linear_delta_blocks alone, on the tensors the chunked module hands it
  loop        delta_chunk.linear_delta_loop (a token loop of the same recurrence), same tensors

and the `delta` section of ../shared/bench/peers.py (imported at run time): its plain WY delta
rule and its token loop, beside nldsl's kernel on the same q, k, v (M_t = M - lr (M k - v) k^T),
and, beside the deltanet_recurrence module (same group, round-robin):

  WY layer    the module's projections, l2norms and output projection, in plain torch, around
              peers.py's WY recurrence: the layer minus its beta projection, as the peer's rule
              has one constant rate (lr 0.1) where the module's beta_t is per token and head
Contenders of a group are timed round-robin (one call each per round) after warm-up, so drift of
the host hits them alike; medians reported. Matmul FLOPs are counted on one warm-up call
(mm/bmm/baddbmm/... with torch's formulas, a triangular solve with m right-hand sides of size n
as n^2 m); "util" = counted FLOPs / median time / peak GEMM rate (fp32 1024^3 mm, best sample,
measured at the start and the end).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import nldsl.module.chunked as chunked
from nldsl.module import compile as compile_module
from nldsl.module.delta_chunk import linear_delta_blocks, linear_delta_loop
from nldsl.runtime import functions as nldsl_functions

ROOT = Path(__file__).resolve().parents[1]
SPECS = {"deltanet_recurrence": str(ROOT / "examples" / "deltanet_recurrence.nl"),
         "deltanet": "deltanet",
         "gated_deltanet_recurrence": str(ROOT / "examples" / "gated_deltanet_recurrence.nl"),
         "gated_deltanet": "gated_deltanet"}


class MatmulFlops(TorchDispatchMode):
    """Matmul-class FLOPs of the aten ops torch.utils.flop_counter has a formula for, plus
    triangular solves (n^2 m)."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        elif func._overloadpacket is torch.ops.aten.linalg_solve_triangular:
            self.flops += args[0].shape[-1] * args[1].numel()
        return out


def count_flops(fn) -> int:
    with MatmulFlops() as counter:
        fn()
    return counter.flops


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks instead of returning them to the system (no
    mmap for big blocks, no trimming), so that a big temporary reuses memory already mapped
    instead of page-faulting fresh pages on every call: what jemalloc or tcmalloc, which
    PyTorch's CPU performance guide recommends, do by default. One setting for the whole
    process, so every contender of a run gets it. False where this is not glibc."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        m_trim_threshold, m_mmap_threshold = -1, -3               # glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and \
            bool(libc.mallopt(m_trim_threshold, (1 << 31) - 1))
    except (OSError, AttributeError, TypeError):
        return False


def cpu_times(group: dict, reps: int, grad: bool = False) -> dict[str, float]:
    """Median CPU seconds per call, round-robin after one untimed call each; without autograd
    unless `grad`."""
    times = {name: [] for name in group}
    with torch.set_grad_enabled(grad):
        for fn in group.values():
            fn()
        for _ in range(reps):
            for name, fn in group.items():
                start = time.process_time()
                fn()
                times[name].append(time.process_time() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_gemm(n: int = 1024, samples: int = 5) -> tuple[float, float]:
    """(best, median) GFLOP/s of an fp32 n^3 mm."""
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    inner = max(1, int(0.2e9 / (2 * n ** 3)) * 4)
    for _ in range(3):
        torch.mm(a, b, out=c)
    rates = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=c)
        rates.append(2 * n ** 3 * inner / (time.perf_counter() - start) / 1e9)
    return max(rates), statistics.median(rates)


def time_group(contenders: dict, reps: int, warmup: int, clock=time.perf_counter,
               summary=statistics.median) -> dict[str, dict]:
    """Round-robin timing: `warmup` untimed calls each (the first also counts FLOPs), then `reps`
    rounds of one call each, by `clock`; "median_s" holds `summary` of the times (by default
    wall time and the median)."""
    result = {}
    for name, fn in contenders.items():
        result[name] = {"flops": count_flops(fn), "times": []}
        for _ in range(warmup - 1):
            fn()
    for _ in range(reps):
        for name, fn in contenders.items():
            start = clock()
            fn()
            result[name]["times"].append(clock() - start)
    for r in result.values():
        r["median_s"] = summary(r["times"])
    return result


def forward(fn):
    def call():
        with torch.no_grad():
            fn()
    return call


def leaves(tensors):
    return [t.detach().clone().requires_grad_(True) if t is not None and t.requires_grad else t
            for t in tensors]


def capture_kernel_inputs(module, x):
    """The arguments the chunked module passes to linear_delta_blocks, detached; requires_grad
    kept as a flag (the tensors that carry a gradient in the module's backward)."""
    seen = []

    def spy(s0, a, c, k, w, queries, block):
        flags = lambda t: None if t is None else t.detach().clone().requires_grad_(t.requires_grad)
        seen.append((flags(s0), flags(a), flags(c), flags(k), flags(w),
                     [(flags(q), before) for q, before in queries], block))
        return linear_delta_blocks(s0, a, c, k, w, queries, block)

    chunked.linear_delta_blocks = spy
    try:
        y, _ = module(x)
        y.sum().backward()
    finally:
        chunked.linear_delta_blocks = linear_delta_blocks
    module.zero_grad(set_to_none=True)
    assert len(seen) == 1, "expected one linear level"
    return seen[0]


def kernel_contenders(inputs):
    s0, a, c, k, w, queries, block = inputs
    qs = [q for q, _ in queries]
    befores = [b for _, b in queries]

    def run(kernel, tensors, **kw):
        s0_, a_, c_, k_, w_, *qs_ = tensors
        ys, s = kernel(s0_, a_, c_, k_, w_, list(zip(qs_, befores)), **kw)
        return ys, s

    def fb(kernel, **kw):
        def call():
            ys, s = run(kernel, leaves([s0, a, c, k, w, *qs]), **kw)
            (sum(y.sum() for y in ys) + s.sum()).backward()
        return call

    plain = [t.detach() if t is not None else None for t in (s0, a, c, k, w, *qs)]
    return ({"kernel": forward(lambda: run(linear_delta_blocks, plain, block=block)),
             "loop": forward(lambda: run(linear_delta_loop, plain))},
            {"kernel": fb(linear_delta_blocks, block=block), "loop": fb(linear_delta_loop)})


def load_peers():
    path = ROOT.parent / "shared" / "bench"
    if not (path / "peers.py").exists():
        return None
    sys.path.insert(0, str(path))
    try:
        import peers  # noqa: PLC0415  (sets 2 threads and flush-to-zero too: the same settings)
    except Exception as e:  # noqa: BLE001
        print(f"(peers.py not importable: {type(e).__name__}: {e})")
        return None
    return peers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--block", type=int, default=64, help="block size of the chunked schedule")
    parser.add_argument("--reps", type=int, default=7, help="timed rounds of the fast contenders")
    parser.add_argument("--slow-reps", type=int, default=3, help="timed rounds of the token loops")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--specs", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--no-peer", action="store_true", help="skip ../shared/bench/peers.py")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="keep freed heap blocks mapped, for every contender (keep_freed_memory)")
    parser.add_argument("--json", help="also write every measurement to this file")
    args = parser.parse_args()
    kept = keep_freed_memory() if args.keep_freed_memory else False

    peers = None if args.no_peer else load_peers()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    bsz, steps = args.batch, args.tokens
    tokens = bsz * steps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, flush-to-zero on "
          f"(torch.set_flush_denormal(True)), cpu: {_cpu_name()}, freed memory kept: {kept}")
    print(f"B {bsz}, T {steps}, dim {args.dim}, {args.heads} heads of {args.head_dim}, "
          f"block {args.block}, reps {args.reps} (token loops {args.slow_reps}), medians")
    peak_start = peak_gemm()
    print(f"peak fp32 GEMM 1024^3: best {peak_start[0]:.0f} GFLOP/s, median {peak_start[1]:.0f}")

    rows = []
    hp = dict(dim=args.dim, heads=args.heads, head_dim=args.head_dim)
    x = torch.randn(bsz, steps, args.dim)
    started = time.perf_counter()
    for spec in args.specs:
        fast = compile_module(SPECS[spec], schedule="chunked", block_size=args.block, **hp)
        ref = compile_module(SPECS[spec], schedule="reference", **hp)
        ref.load_state_dict(fast.state_dict())
        assert fast.fast_paths, f"{spec}: no fast path"
        with torch.no_grad():
            err = ((fast(x)[0] - ref(x)[0]).abs().max() / ref(x)[0].abs().max()).item()

        def fb(module):
            def call():
                y, _ = module(x)
                y.sum().backward()
            return call

        inputs = capture_kernel_inputs(fast, x)
        kernel_fwd, kernel_fb = kernel_contenders(inputs)
        layers = {}
        if peers is not None and spec == "deltanet_recurrence":
            layer = wy_layer(peers, fast, args.heads, args.head_dim)
            layers = {"fwd": {"WY layer": forward(lambda: layer(x))},
                      "fwd+bwd": {"WY layer": lambda: layer(x).sum().backward()}}
        dv = inputs[4].shape[-1]
        desc = f"{spec} (dk {args.head_dim}, dv {dv})"
        for mode, module_fn, kernels in (("fwd", lambda m: forward(lambda: m(x)), kernel_fwd),
                                         ("fwd+bwd", fb, kernel_fb)):
            quick = time_group({"chunked": module_fn(fast), "kernel": kernels["kernel"],
                                **layers.get(mode, {})}, args.reps, warmup=2)
            slow = time_group({"reference": module_fn(ref), "loop": kernels["loop"]},
                              args.slow_reps, warmup=1)
            for name, r in {**quick, **slow}.items():
                rows.append(dict(spec=spec, desc=desc, mode=mode, contender=name, median_s=r["median_s"],
                                 tok_s=tokens / r["median_s"], flops=r["flops"],
                                 rel_err_chunked_vs_reference=err))
        fast.zero_grad(set_to_none=True)
        ref.zero_grad(set_to_none=True)
        print(f"{spec}: measured ({time.perf_counter() - started:.0f} s)", flush=True)

    if peers is not None:
        rows += peer_rows(peers, args, tokens)

    peak_end = peak_gemm()
    peak = max(peak_start[0], peak_end[0])
    print(f"peak fp32 GEMM 1024^3 at the end: best {peak_end[0]:.0f} GFLOP/s, median {peak_end[1]:.0f}")
    for r in rows:
        r["util"] = r["flops"] / r["median_s"] / 1e9 / peak if r["flops"] else None
    report(rows, peak)
    if args.json:
        env = dict(torch=torch.__version__, python=platform.python_version(), threads=args.threads,
                   cpu=_cpu_name(), flush_denormal=True, freed_memory_kept=kept, peak_gflops=peak,
                   args=vars(args))
        with open(args.json, "w") as f:
            json.dump(dict(env=env, rows=rows), f, indent=1)


def wy_layer(peers, module, heads: int, head_dim: int):
    """x -> l2norm(x Wq), l2norm(x Wk), x Wv per head -> peers.delta_wy (lr 0.1) -> merged @ Wo,
    on the module's own parameters (so its backward reaches them, as the module's does)."""
    p = dict(module.named_parameters())
    l2norm = nldsl_functions.l2norm

    def layer(x):
        bsz, steps = x.shape[:2]
        split = lambda t: t.view(bsz, steps, heads, head_dim).transpose(1, 2)  # [B, H, T, d]
        q, k = l2norm(split(x @ p["Wq"])), l2norm(split(x @ p["Wk"]))
        y = peers.delta_wy(q, k, split(x @ p["Wv"]), 0.1)                      # [B, H, T, d]
        return y.transpose(1, 2).reshape(bsz, steps, heads * head_dim) @ p["Wo"]
    return layer


def peer_rows(peers, args, tokens):
    """peers.py's `delta` section: its WY and token loop beside nldsl's kernel on the same q, k, v."""
    bsz, heads, steps, d, lr = args.batch, args.heads, args.tokens, args.head_dim, 0.1
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(bsz, heads, steps, d, generator=g), dim=-1)
    k = F.normalize(torch.randn(bsz, heads, steps, d, generator=g), dim=-1)
    v = torch.randn(bsz, heads, steps, d, generator=g)
    rate, s0 = q.new_full((bsz, heads, steps), lr), q.new_zeros(bsz, heads, d, d)

    def nldsl_kernel(q, k, v, lr):        # M_t = M - lr (M k - v) k^T: no decay, c = lr, w = lr v
        (y,), _ = linear_delta_blocks(s0, None, rate, k, lr * v, [(q, False)], args.block)
        return y

    with torch.no_grad():
        reference = peers.delta_loop(q, k, v, lr)
        errors = {name: ((fn(q, k, v, lr) - reference).abs().max() / reference.abs().max()).item()
                  for name, fn in (("peer WY", peers.delta_wy), ("nldsl kernel", nldsl_kernel))}
    print("peer delta section: max|y - y_loop| / max|y_loop|: "
          + ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
    grads = [t.clone().requires_grad_(True) for t in (q, k, v)]

    def fb(fn):
        return lambda: fn(*grads, lr).sum().backward()

    rows = []
    fns = {"peer WY": peers.delta_wy, "nldsl kernel": nldsl_kernel, "peer loop": peers.delta_loop}
    for mode, wrap in (("fwd", lambda fn: forward(lambda: fn(q, k, v, lr))), ("fwd+bwd", fb)):
        quick = time_group({n: wrap(fns[n]) for n in ("peer WY", "nldsl kernel")}, args.reps, warmup=2)
        slow = time_group({"peer loop": wrap(fns["peer loop"])}, args.slow_reps, warmup=1)
        for name, r in {**quick, **slow}.items():
            rows.append(dict(spec="peer delta", desc=f"peers.py delta (d {d}, lr {lr})", mode=mode,
                             contender=name, median_s=r["median_s"], tok_s=tokens / r["median_s"],
                             flops=r["flops"], rel_err_vs_peer_loop=errors.get(name)))
    return rows


def report(rows, peak):
    print(f"\n{'spec':<28} {'mode':<8} {'contender':<13} {'median ms':>10} {'tok/s':>10} "
          f"{'MM GFLOP':>9} {'util':>6}")
    for r in rows:
        util = "" if r["util"] is None else f"{100 * r['util']:.1f}%"
        print(f"{r['spec']:<28} {r['mode']:<8} {r['contender']:<13} {r['median_s'] * 1e3:>10.2f} "
              f"{r['tok_s']:>10,.0f} {r['flops'] / 1e9:>9.3f} {util:>6}")
    at = {(r["spec"], r["mode"], r["contender"]): r["tok_s"] for r in rows}
    print(f"\nratios (tok/s over tok/s; util against peak {peak:.0f} GFLOP/s):")
    for spec in dict.fromkeys(r["spec"] for r in rows if r["spec"] != "peer delta"):
        for mode in ("fwd", "fwd+bwd"):
            get = lambda name: at[(spec, mode, name)]
            print(f"  {spec:<26} {mode:<8} (a) chunked / reference {get('chunked') / get('reference'):6.1f}x"
                  f"   kernel / loop {get('kernel') / get('loop'):6.1f}x")
    for mode in ("fwd", "fwd+bwd"):
        wy = at.get(("peer delta", mode, "peer WY"))
        if wy is None:
            continue
        line = f"  (b) {mode:<8} vs peer WY {wy:,.0f} tok/s: nldsl kernel (same q, k, v) " \
               f"{at[('peer delta', mode, 'nldsl kernel')] / wy:.2f}x"
        if ("deltanet_recurrence", mode, "chunked") in at:
            line += (f", deltanet_recurrence module {at[('deltanet_recurrence', mode, 'chunked')] / wy:.2f}x"
                     f", its kernel {at[('deltanet_recurrence', mode, 'kernel')] / wy:.2f}x")
        print(line)
        if ("deltanet_recurrence", mode, "WY layer") in at:
            layer = at[("deltanet_recurrence", mode, "WY layer")]
            print(f"  (c) {mode:<8} vs the WY layer {layer:,.0f} tok/s: deltanet_recurrence module "
                  f"{at[('deltanet_recurrence', mode, 'chunked')] / layer:.2f}x")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except Exception:  # noqa: BLE001
        return platform.processor()


if __name__ == "__main__":
    main()
