"""headwise's tiled Triton attention against PyTorch's fused attention on one GPU.

TFLOP/s of the forward pass and of forward + backward, bf16, 16 heads, head dims
64 and 128, causal and not, sequence lengths 512 ... 16k at a fixed 16k tokens
per batch (batch = 16384 // T). Peers, on the same inputs: F.scaled_dot_product_
attention restricted to each of its fused kernels (FLASH_ATTENTION,
CUDNN_ATTENTION, EFFICIENT_ATTENTION; each skipped if unavailable), compiled
FlexAttention (a causal block mask when causal) and FlashAttention-4
(``flash_attn.cute.flash_attn_func`` of the ``flash-attn-4`` package, CuTe DSL;
its column appears only when the package imports). Times are medians of
triton.testing.do_bench. FLOPs: 4 * B * H * T^2 * D for the forward (two
matmuls), 2.5x that for the backward, halved when causal.

Two more columns (leave them out with ``--no-auto``) measure headwise's layer-level
``attend``: ``sdpa`` (``backend="sdpa"``: torch's own choice of fused kernel) and
``auto`` (``backend="auto"``: the backend measured fastest for the shape class on
this GPU; its measurement runs in the untimed first calls). ``auto / best`` divides
auto's TFLOP/s by the better of ``sdpa`` and ``headwise`` (the tiled kernels), so
1.00 within noise means auto picked the faster one; which one it picked is in the
JSON (``auto_choice``).

    PYTHONPATH=src python bench/gpu_attention.py            # ~4 minutes on an H100
    PYTHONPATH=src python bench/gpu_attention.py --quick    # smoke run, one shape
    # focused: D=128 only, both masks, three lengths, against flash and cuDNN (~1.5 min)
    PYTHONPATH=src python bench/gpu_attention.py --head-dims 128 --causal both \
        --seqs 1024 4096 16384 --peers flash cudnn

``--variants`` adds columns for headwise's kernel choices forced one way, measured on
the same inputs in the same run: ``ptr+split`` (pointer loads, dQ in its own pass:
the kernels before TMA), ``tma+fused`` (dQ added atomically by the dK/dV pass),
``ptr+fused``, ``tma+split`` (the default on Hopper and later), ``desc`` and ``ws``
(the non-causal forward with device-side tensor descriptors, and with those and a
warp-specialised key loop: ``TiledOptions(fwd=...)``; causal shapes run the default),
``pers`` (the dK/dV pass on a persistent grid: ``TiledOptions(dkdv="persistent")``).
Each variant's options are passed to ``tiled_attention(..., options=...)``; the
``headwise`` column runs the options that the ``HEADWISE_TILED_*`` variables select
(read once at start, as the ``headwise`` command does; e.g. ``HEADWISE_TILED_AUTOTUNE=0``).

Prints a markdown table per pass with the ratio headwise / best torch kernel and
headwise's fraction of the GPU's dense bf16 peak; writes
bench/results/gpu_attention.json (and $OUT/gpu_attention.json when OUT is set),
rewritten after every shape so that an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from headwise.kernels import TiledOptions, get_tiled_options, set_tiled_options

RESULTS = Path(__file__).resolve().parent / "results"
TOKENS = 16384
HEADS = 16
SEQS = [512, 1024, 2048, 4096, 8192, 16384]
HEAD_DIMS = [64, 128]
TORCH_IMPLS = ["flash", "cudnn", "efficient", "flex"]
OTHER_PEERS = ["fa4"]  # FlashAttention-4 (flash-attn-4, CuTe DSL), when installed
AUTO_IMPLS = ["sdpa", "auto"]  # headwise's attend(backend=...), layer level
# headwise's kernel choices (changes to its TiledOptions), besides its default
VARIANTS = {
    "ptr+split": {"tma": False, "bwd": "split"},
    "tma+split": {"tma": None, "bwd": "split"},
    "tma+fused": {"tma": None, "bwd": "fused"},
    "ptr+fused": {"tma": False, "bwd": "fused"},
    # the forward with device-side descriptors, and with a warp-specialised key loop
    # (non-causal only; causal shapes run the default kernel under these names)
    "desc": {"fwd": "desc"},
    "ws": {"fwd": "ws"},
    # the dK/dV pass on a persistent grid (one program per SM looping over key tiles)
    "pers": {"dkdv": "persistent"},
}
# dense bf16 tensor-core peak (no sparsity), TFLOP/s
PEAKS = [("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4),
         ("A100", 312.0), ("L40S", 362.1), ("B200", 2250.0)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one small shape per setting (smoke)")
    p.add_argument("--peak", type=float, default=None,
                   help="dense bf16 peak TFLOP/s of this GPU (default: from its name)")
    p.add_argument("--budget-s", type=float, default=240.0,
                   help="stop starting new shapes after this many seconds (default 240)")
    p.add_argument("--flex-compile-budget-s", type=float, default=100.0,
                   help="skip FlexAttention once its compilations took this long (default 100)")
    p.add_argument("--no-flex", action="store_true", help="leave FlexAttention out")
    p.add_argument("--head-dims", type=int, nargs="+", default=None, metavar="D",
                   help=f"head dims to measure (default {' '.join(map(str, HEAD_DIMS))})")
    p.add_argument("--seqs", type=int, nargs="+", default=None, metavar="T",
                   help=f"sequence lengths (default {' '.join(map(str, SEQS))}); batch is "
                        f"{TOKENS} // T")
    p.add_argument("--causal", choices=["no", "yes", "both"], default="both",
                   help="which masks (default both)")
    p.add_argument("--peers", nargs="+", choices=TORCH_IMPLS + OTHER_PEERS,
                   default=TORCH_IMPLS + OTHER_PEERS,
                   help="kernels to compare against (default all: "
                        f"{' '.join(TORCH_IMPLS + OTHER_PEERS)}; fa4 only when flash-attn-4 is "
                        "installed); leaving out flex skips its compilation")
    p.add_argument("--no-auto", action="store_true",
                   help="leave out the sdpa and auto columns (headwise's attend, layer level)")
    p.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=[],
                   help="also time these kernel choices of headwise (columns headwise[NAME])")
    p.add_argument("--warmup-ms", type=float, default=None,
                   help="do_bench warm-up per measurement (default 25, --quick 5)")
    p.add_argument("--rep-ms", type=float, default=None,
                   help="do_bench measuring time per measurement (default 100, --quick 20)")
    p.add_argument("--precompile", action="store_true",
                   help="only compile headwise's kernels for every autotune config of the "
                        "planned head dims and masks (Triton's on-disk cache then serves a "
                        "later run); no timing, so it can overlap other work")
    p.add_argument("--precompile-jobs", type=int, default=4,
                   help="processes for --precompile (default 4)")
    p.add_argument("--precompile-slice", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS / "gpu_attention.json")
    args = p.parse_args(argv)
    if args.precompile_jobs < 1:
        p.error(f"--precompile-jobs must be >= 1, got {args.precompile_jobs}")
    if args.peak is not None and not (args.peak > 0):
        p.error(f"--peak must be a positive number of TFLOP/s, got {args.peak}")
    for name in ("head_dims", "seqs"):
        values = getattr(args, name)
        if values is not None and any(x <= 0 for x in values):
            p.error(f"--{name.replace('_', '-')} must be positive integers, got {values}")
    if args.head_dims is not None and any(d > 256 for d in args.head_dims):
        p.error(f"--head-dims must be <= 256 (the kernels' limit), got {args.head_dims}")
    for name in ("warmup_ms", "rep_ms"):
        value = getattr(args, name)
        if value is not None and not (value > 0):
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if "flex" not in args.peers:
        args.no_flex = True
    return args


def plan(args: argparse.Namespace) -> list[tuple[int, bool, int]]:
    """(head_dim, causal, seq) in measuring order: per head dim, per length, the
    masks side by side, so that a run cut short by --budget-s still compares
    causal and non-causal at the lengths it reached."""
    if args.quick:
        head_dims, seqs = [64], [512]
    else:
        head_dims = args.head_dims or HEAD_DIMS
        seqs = args.seqs or SEQS
    masks = {"no": [False], "yes": [True], "both": [False, True]}[args.causal]
    return [(d, c, t) for d in head_dims for t in seqs for c in masks]


def flops(batch: int, seq: int, head_dim: int, causal: bool, mode: str) -> float:
    """Matmul FLOPs of one attention call over (batch, HEADS, seq, head_dim)."""
    fwd = 4.0 * batch * HEADS * seq * seq * head_dim
    total = fwd if mode == "fwd" else 3.5 * fwd
    return total / 2 if causal else total


def detect_peak(name: str) -> float | None:
    for key, peak in PEAKS:
        if key.lower() in name.lower():
            return peak
    return None


class Flex:
    """Compiled FlexAttention, one compiled callable for every shape (dynamic
    shapes), with a time budget for its compilations."""

    def __init__(self, budget_s: float) -> None:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        self.flex_attention = flex_attention
        self.dynamic = True  # one compilation for every length; static shapes if that fails
        self.fn = torch.compile(flex_attention, dynamic=True)
        self.create_block_mask = create_block_mask
        self.budget_s = budget_s
        self.spent_s = 0.0
        self.masks: dict[int, object] = {}

    def call(self, q, k, v, causal: bool):
        mask = None
        if causal:
            t = q.shape[2]
            if t not in self.masks:
                self.masks[t] = self.create_block_mask(
                    lambda b, h, qi, ki: qi >= ki, None, None, t, t, device=q.device
                )
            mask = self.masks[t]
        try:
            return self.fn(q, k, v, block_mask=mask)
        except Exception:
            if not self.dynamic:
                raise
            self.dynamic = False
            self.fn = torch.compile(self.flex_attention, dynamic=False)
            return self.fn(q, k, v, block_mask=mask)


def fa4_function():
    """FlashAttention-4's ``flash_attn_func`` (package ``flash-attn-4``), or the reason
    it cannot be used here."""
    try:
        from flash_attn.cute import flash_attn_func
    except Exception as e:  # not installed, or its CuTe DSL / CUDA bindings are missing
        return None, f"flash-attn-4 unavailable: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return flash_attn_func, None


def make_impls(flex: Flex | None, peers: list[str] = TORCH_IMPLS, variants: list[str] = (),
               fa4=None, auto: bool = False):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from headwise.attention import attend
    from headwise.attention.masks import MaskSpec
    from headwise.kernels import tiled_attention

    def sdpa(backend):
        def run(q, k, v, causal):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        return run

    def headwise(options=None):
        def run(q, k, v, causal):
            return tiled_attention(q, k, v, causal=causal, options=options)

        return run

    # a variant is the same call with its options (the default's, changed)
    impls = {"headwise": headwise(), **{
        f"headwise[{name}]": headwise(get_tiled_options().replace(**VARIANTS[name]))
        for name in variants}}
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    for name in TORCH_IMPLS:
        if name in peers and name in backends:
            impls[name] = sdpa(backends[name])
    if flex is not None and "flex" in peers:
        impls["flex"] = flex.call
    if fa4 is not None and "fa4" in peers:
        def fa4_run(q, k, v, causal):  # it takes (B, T, H, D): our buffers' own layout
            res = fa4(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal)
            out = res[0] if isinstance(res, tuple) else res  # (out, lse) in 4.0 betas
            return out.transpose(1, 2)

        impls["fa4"] = fa4_run
    if auto:
        def layer_level(backend):
            def run(q, k, v, causal):
                mask = MaskSpec(q.shape[0], q.shape[2], k.shape[2], causal=causal)
                return attend(q, k, v, mask, backend=backend)[0]

            return run

        impls.update({name: layer_level(name) for name in AUTO_IMPLS})
    return impls


def auto_choices(q, k, v, causal) -> dict[str, str]:
    """What backend="auto" runs for the forward (inference) and forward + backward
    (training) classes of these inputs, with its measured times."""
    from headwise.attention import explain_backend

    with torch.no_grad():
        fwd = explain_backend(q, k, v, causal=causal, measure=False)
    train = explain_backend(q, k, v, causal=causal, measure=False)
    return {"fwd": str(fwd), "fwd+bwd": str(train)}


def bench_point(impls, flex, head_dim, seq, causal, warmup, rep):
    """Times (ms) and TFLOP/s of every implementation at one shape."""
    batch = max(1, TOKENS // seq)
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd():  # (B, H, T, D) views of (B, T, H, D) buffers, as the layer makes them
        x = torch.randn(batch, seq, HEADS, head_dim, device="cuda", dtype=torch.bfloat16,
                        generator=g)
        return x.transpose(1, 2).requires_grad_()

    q, k, v = rnd(), rnd(), rnd()
    dout = torch.randn(batch, HEADS, seq, head_dim, device="cuda", dtype=torch.bfloat16,
                       generator=g)
    row = {"head_dim": head_dim, "seq": seq, "batch": batch, "causal": causal,
           "ms": {"fwd": {}, "fwd+bwd": {}}, "tflops": {"fwd": {}, "fwd+bwd": {}},
           "errors": {}, "max_abs_diff_vs_first_torch": None, "headwise_configs": {}}
    reference_out = hw_out = None
    for name, fn in impls.items():
        if name == "flex" and flex.spent_s > flex.budget_s:
            row["errors"][name] = f"skipped: flex compile budget ({flex.budget_s:.0f} s) spent"
            continue
        out = _measure(row, name, fn, flex, q, k, v, dout, causal, warmup, rep)
        if out is None:
            continue
        if name == "headwise":
            hw_out = out
        elif reference_out is None and name in TORCH_IMPLS:
            reference_out = out  # the first torch kernel
        if name == "auto":
            row["auto_choice"] = auto_choices(q, k, v, causal)
    if reference_out is not None and hw_out is not None:
        diff = (hw_out.float() - reference_out.float()).abs().max().item()
        row["max_abs_diff_vs_first_torch"] = diff
    return row


def _measure(row, name, fn, flex, q, k, v, dout, causal, warmup, rep):
    """Run ``fn`` forward and backward once, then time both passes into ``row``;
    returns its forward output, or None if it failed (the error is in ``row``)."""
    from triton.testing import do_bench

    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            out = fn(q, k, v, causal)
        fn(q, k, v, causal).backward(dout)
        torch.cuda.synchronize()
    except Exception as e:  # an unavailable kernel or an unsupported shape
        row["errors"][name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        torch.cuda.synchronize()
        return None
    finally:
        if name == "flex":
            flex.spent_s += time.perf_counter() - t0

    def fwd():
        with torch.no_grad():
            fn(q, k, v, causal)

    def fwd_bwd():
        fn(q, k, v, causal).backward(dout)

    for mode, f in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        ms = do_bench(f, warmup=warmup, rep=rep, grad_to_none=[q, k, v], return_mode="median")
        row["ms"][mode][name] = ms
        row["tflops"][mode][name] = flops(row["batch"], row["seq"], row["head_dim"], causal, mode) / ms * 1e-9
    if name.startswith("headwise"):
        row["headwise_configs"][name] = tuned_configs()
    return out


def tuned_configs() -> dict[str, str]:
    """The config each of headwise's autotuners picked last (this shape's, since
    every kernel just ran): which tiles win is what the next tuning step needs."""
    from headwise.kernels import runtime

    picked = {}
    for (kind, dim_class, tma), tuner in runtime.TUNERS.items():
        best = getattr(tuner, "best_config", None)
        if best is not None:
            picked[f"{kind}/{dim_class}{'/tma' if tma else ''}"] = str(best)
    return picked


def _best_torch(tflops: dict[str, float]) -> float | None:
    """The fastest torch kernel measured at one shape and pass."""
    return max((tflops[n] for n in TORCH_IMPLS if n in tflops), default=None)


def _auto_ratio(tflops: dict[str, float]) -> float | None:
    """auto's TFLOP/s over the better of the two backends it chooses between."""
    best = max((tflops[n] for n in ("sdpa", "headwise") if n in tflops), default=None)
    return None if (best is None or "auto" not in tflops) else tflops["auto"] / best


def precompile_items(args: argparse.Namespace) -> list[tuple[int, bool, int, str]]:
    """(head_dim, causal, config index, variant): one forward and one backward each."""
    from headwise.kernels import tiled_configs

    items = []
    for head_dim, causal in dict.fromkeys((d, c) for d, c, _ in plan(args)):
        dim_class = tiled_configs.dim_class(tiled_configs.pad_dim(head_dim))
        n = max(len(tiled_configs.CONFIGS[k][dim_class]) for k in ("fwd", "dkdv", "dq"))
        items += [(head_dim, causal, i, v) for v in ("default", *args.variants) for i in range(n)]
    return items


def precompile_worker(items: list[tuple[int, bool, int, str]]) -> int:
    """Run the forward and backward kernels once per item with only its config in
    the lists (config i of each kind, the last one where a list is shorter), on
    small inputs laid out as bench_point's, so that Triton specializes them the
    same way and the compiled kernels land in its cache under the keys the
    autotuned run will look up."""
    from headwise.kernels import reset_autotune_cache, tiled_configs, tiled_launch

    fixed = get_tiled_options().replace(autotune=False)  # each item's one config, no timing
    originals = {k: {c: list(v) for c, v in tiled_configs.CONFIGS[k].items()}
                 for k in ("fwd", "dkdv", "dq")}
    failures = 0
    for head_dim, causal, i, variant in items:
        dim_class = tiled_configs.dim_class(tiled_configs.pad_dim(head_dim))
        for kind, lists in originals.items():
            cfgs = lists[dim_class]
            tiled_configs.CONFIGS[kind][dim_class] = [cfgs[min(i, len(cfgs) - 1)]]
        reset_autotune_cache()
        batch, seq = 2, 256
        x = [torch.randn(batch, seq, HEADS, head_dim, device="cuda", dtype=torch.bfloat16)
             .transpose(1, 2) for _ in range(3)]
        dout = torch.randn(batch, HEADS, seq, head_dim, device="cuda", dtype=torch.bfloat16)
        scale = head_dim ** -0.5
        try:
            options = fixed.replace(**VARIANTS.get(variant, {}))
            out, lse = tiled_launch.forward(*x, None, causal, scale, options)
            tiled_launch.backward(dout, *x, out, lse, None, None, causal, scale, options)
            torch.cuda.synchronize()
        except Exception as e:  # e.g. OutOfResources: the autotuner skips it too
            failures += 1
            print(f"precompile D={head_dim} causal={causal} config {i} {variant}: "
                  f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
    for kind, lists in originals.items():
        tiled_configs.CONFIGS[kind].update(lists)
    return 0 if failures < len(items) else 1


def precompile(args: argparse.Namespace, argv: list[str]) -> int:
    """--precompile: split the items over --precompile-jobs processes."""
    items = precompile_items(args)
    if args.precompile_slice is not None:
        j, n = (int(x) for x in args.precompile_slice.split("/"))
        return precompile_worker(items[j::n])
    t0 = time.perf_counter()
    jobs = min(args.precompile_jobs, len(items))
    procs = [subprocess.Popen([sys.executable, __file__, *argv, "--precompile-slice",
                               f"{j}/{jobs}"]) for j in range(jobs)]
    rcs = [proc.wait() for proc in procs]
    print(f"precompiled {len(items)} (head dim, mask, config) items in {jobs} processes "
          f"in {time.perf_counter() - t0:.1f} s; exit codes {rcs}", flush=True)
    return max(rcs)


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:
        return None


def fmt(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def tables(rows: list[dict], peak: float | None) -> str:
    out = []
    for mode in ("fwd", "fwd+bwd"):
        out.append(f"\n### {mode}, bf16, {HEADS} heads, {TOKENS} tokens per batch (TFLOP/s)\n")
        extra = sorted({n for r in rows for n in r["tflops"][mode] if n.startswith("headwise[")})
        seen = {n for r in rows for n in r["tflops"][mode]}
        # torch's kernels always (a dash where one failed); the others where measured
        columns = ["headwise", *TORCH_IMPLS, *(n for n in OTHER_PEERS + AUTO_IMPLS if n in seen)]
        auto = "auto" in seen
        out.append("| D | causal | T | B | " + " | ".join(columns)
                   + " | headwise / best torch | headwise % of peak |"
                   + (" auto / best |" if auto else "")
                   + "".join(f" {n} / best |" for n in extra))
        out.append("|---|---|---|---|" + "---|" * (len(columns) + 2 + auto + len(extra)))
        for r in rows:
            tf = r["tflops"][mode]
            torch_best = _best_torch(tf)
            hw = tf.get("headwise")
            ratio = None if (hw is None or not torch_best) else hw / torch_best
            frac = None if (hw is None or peak is None) else 100 * hw / peak
            cells = [fmt(tf.get(n)) for n in columns]
            variants = [None if (tf.get(n) is None or not torch_best) else tf[n] / torch_best
                        for n in extra]
            out.append(f"| {r['head_dim']} | {'yes' if r['causal'] else 'no'} | {r['seq']} "
                       f"| {r['batch']} | " + " | ".join(cells)
                       + f" | {fmt(ratio, 2)} | {fmt(frac, 1)} |"
                       + (f" {fmt(_auto_ratio(tf), 2)} |" if auto else "")
                       + "".join(f" {fmt(x, 2)} |" for x in variants))
    return "\n".join(out)


def write(payload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    if os.environ.get("OUT"):
        out_dir = Path(os.environ["OUT"])
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / path.name).write_text(json.dumps(payload, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # this script is a top-level program: like the headwise command, it takes the
    # kernels' default options from the HEADWISE_TILED_* variables, once
    set_tiled_options(TiledOptions.from_env(os.environ))
    if not torch.cuda.is_available():
        print("bench/gpu_attention.py needs a CUDA GPU (torch.cuda.is_available() is False); "
              "nothing was measured.", file=sys.stderr)
        return 2
    if args.precompile:
        return precompile(args, list(argv if argv is not None else sys.argv[1:]))
    import triton

    name = torch.cuda.get_device_name()
    peak = args.peak if args.peak is not None else detect_peak(name)
    points = plan(args)
    warmup, rep = (5, 20) if args.quick else (25, 100)
    warmup = args.warmup_ms if args.warmup_ms is not None else warmup
    rep = args.rep_ms if args.rep_ms is not None else rep
    flex = None
    flex_error = None
    if not args.no_flex:
        try:
            flex = Flex(args.flex_compile_budget_s)
        except Exception as e:
            flex_error = f"{type(e).__name__}: {e}"
    fa4, fa4_error = (None, "not asked for (--peers)")
    if "fa4" in args.peers:
        fa4, fa4_error = fa4_function()
        if fa4_error:
            print(f"# {fa4_error}: no fa4 column", flush=True)
    impls = make_impls(flex, args.peers, args.variants, fa4=fa4, auto=not args.no_auto)
    payload = {
        "device": name, "peak_tflops_bf16_dense": peak, "torch": torch.__version__,
        "triton": triton.__version__, "python": platform.python_version(),
        "dtype": "bfloat16", "heads": HEADS, "tokens_per_batch": TOKENS,
        "flops": "4*B*H*T^2*D forward, x3.5 forward+backward, /2 causal",
        "timing": f"triton.testing.do_bench median, warmup={warmup} ms, rep={rep} ms",
        "flex_error": flex_error, "flex_dynamic_shapes": None, "skipped_for_time": [],
        "fa4_error": fa4_error, "fa4_version": _version("flash-attn-4") if fa4 else None,
        "command": " ".join(["bench/gpu_attention.py", *(argv if argv is not None
                                                        else sys.argv[1:])]),
        "autotune": get_tiled_options().autotune,
        "variants": {name: VARIANTS[name] for name in args.variants},
        "rows": [],
    }
    print(f"# {name}: peak {fmt(peak, 1)} TFLOP/s bf16 dense; torch {torch.__version__}, "
          f"triton {triton.__version__}", flush=True)
    start = time.perf_counter()
    for head_dim, causal, seq in points:
        if time.perf_counter() - start > args.budget_s:
            payload["skipped_for_time"].append([head_dim, causal, seq])
            continue
        t0 = time.perf_counter()
        row = bench_point(impls, flex, head_dim, seq, causal, warmup, rep)
        payload["rows"].append(row)
        payload["flex_dynamic_shapes"] = None if flex is None else flex.dynamic
        write(payload, args.out)
        tf = row["tflops"]
        print(f"D={head_dim} causal={causal} T={seq}: headwise fwd "
              f"{fmt(tf['fwd'].get('headwise'))} / fwd+bwd {fmt(tf['fwd+bwd'].get('headwise'))}"
              f" TFLOP/s (best torch {fmt(_best_torch(tf['fwd']))} / "
              f"{fmt(_best_torch(tf['fwd+bwd']))}), auto / best {fmt(_auto_ratio(tf['fwd']), 2)} / "
              f"{fmt(_auto_ratio(tf['fwd+bwd']), 2)}, diff vs torch "
              f"{row['max_abs_diff_vs_first_torch']}, errors {row['errors'] or '-'} "
              f"({time.perf_counter() - t0:.1f} s); configs {row['headwise_configs']}",
              flush=True)
    write(payload, args.out)
    print(tables(payload["rows"], peak))
    if payload["skipped_for_time"]:
        print(f"\nskipped for time (--budget-s {args.budget_s:.0f}): "
              f"{payload['skipped_for_time']}")
    print(f"\nwrote {args.out}" + (f" and $OUT/{args.out.name}" if os.environ.get("OUT") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
