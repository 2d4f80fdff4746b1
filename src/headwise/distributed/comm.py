"""How many bytes each rank sends per optimizer step in data parallel x head parallel
training, and a printout of it::

    python -m headwise.distributed.comm --preset gpt2-small --dp 8 --tp 2 --seq 1024 --batch 8

The model (ring all-reduce of ``n`` bytes over ``p`` ranks: every rank sends, and
receives, ``2 * (p - 1) / p * n`` bytes; NCCL's ring and gloo's ring both move that):

* data parallel: one all-reduce of every gradient this rank holds per optimizer step
  (micro-batches of an accumulated step skip it: ``no_sync``), over the ``dp`` replicas:
  ``2 (dp-1)/dp * params_per_rank * bytes``. With head parallelism a rank holds the
  replicated parameters plus ``1/tp`` of every attention layer's QKV and W_O.
* head parallel: per attention layer and micro-batch, one all-reduce of the
  ``(B, T, d_model)`` attention output in the forward and one of the same size (the
  input's gradient) in the backward, over the ``tp`` ranks:
  ``2 * n_layers * 2 (tp-1)/tp * B*T*d_model * bytes`` per micro-batch, where ``B`` is
  the sequences one replica processes per micro-batch.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..attention import MultiHeadAttention
from ..checks import check_int
from ..models import Decoder, EncoderForMLM, ModelConfig, get_preset
from .head_parallel import check_head_parallel

__all__ = ["communication_volume", "ring_allreduce_bytes", "model_parameters", "main"]

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}


def ring_allreduce_bytes(n_bytes: float, ranks: int) -> float:
    """Bytes each rank sends in a ring all-reduce of an ``n_bytes`` buffer over ``ranks``."""
    return 2.0 * (ranks - 1) / ranks * n_bytes if ranks > 1 else 0.0


def model_parameters(model_cfg: ModelConfig, kind: str = "decoder") -> tuple[int, int]:
    """``(total, attention_sharded)`` parameter counts of the model ``kind`` builds
    (``"decoder"``: :class:`Decoder`; ``"encoder"``: :class:`EncoderForMLM`), counted on
    the meta device (no memory). ``attention_sharded`` is what head parallelism splits:
    every attention layer's QKV weight and bias and W_O (not W_O's bias)."""
    if kind not in ("decoder", "encoder"):
        raise ValueError(f"kind must be 'decoder' or 'encoder', got {kind!r}")
    with torch.device("meta"):
        model = Decoder(model_cfg) if kind == "decoder" else EncoderForMLM(model_cfg)
    total = sum(p.numel() for p in model.parameters())
    sharded = 0
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            sharded += sum(p.numel() for n, p in m.named_parameters() if n != "out_proj.bias")
    return total, sharded


def communication_volume(model_cfg: ModelConfig, batch: int, seq: int, dp: int = 1, tp: int = 1,
                         dtype: str | torch.dtype = "fp32", *, accum: int = 1,
                         kind: str = "decoder") -> dict[str, float]:
    """Bytes each rank sends per optimizer step (see the module docstring for the model).

    Args:
        model_cfg: the model's config.
        batch: sequences one data-parallel replica processes per micro-batch (the global
            batch is ``batch * dp``).
        seq: tokens per sequence ``T``.
        dp, tp: data-parallel replicas and head-parallel degree (``dp * tp`` ranks).
        dtype: gradient/activation format: ``"fp32"``, ``"bf16"``, ``"fp16"`` or a torch dtype.
        accum: micro-batches per optimizer step.
        kind: ``"decoder"`` or ``"encoder"`` (which model's parameters to count).

    Returns a dict: ``params``, ``params_per_rank``, ``dp_buffer_bytes`` and
    ``dp_bytes`` (the gradient all-reduce), ``tp_buffer_bytes`` (one activation
    all-reduce), ``tp_allreduces`` (per step), ``tp_bytes``, ``total_bytes``.
    Raises ValueError when ``tp`` does not divide the heads."""
    for name, value in (("batch", batch), ("seq", seq), ("dp", dp), ("tp", tp), ("accum", accum)):
        check_int(name, value)
    if isinstance(dtype, torch.dtype):
        nbytes = torch.empty((), dtype=dtype).element_size()
    elif dtype in DTYPE_BYTES:
        nbytes = DTYPE_BYTES[dtype]
    else:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)} or a torch.dtype, got {dtype!r}")
    check_head_parallel(model_cfg.n_heads, model_cfg.n_kv_heads, tp)
    total, sharded = model_parameters(model_cfg, kind)
    per_rank = total - sharded + sharded // tp
    dp_buffer = per_rank * nbytes
    tp_buffer = batch * seq * model_cfg.d_model * nbytes
    n_attn = model_cfg.n_layers
    tp_allreduces = 2 * n_attn * accum if tp > 1 else 0
    dp_bytes = ring_allreduce_bytes(dp_buffer, dp)
    tp_bytes = tp_allreduces * ring_allreduce_bytes(tp_buffer, tp)
    return {
        "params": total,
        "params_per_rank": per_rank,
        "dp_buffer_bytes": dp_buffer,
        "dp_bytes": dp_bytes,
        "tp_buffer_bytes": tp_buffer,
        "tp_allreduces": tp_allreduces,
        "tp_bytes": tp_bytes,
        "total_bytes": dp_bytes + tp_bytes,
    }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    raise AssertionError


def render(name: str, v: dict[str, float], *, batch: int, seq: int, dp: int, tp: int, dtype: str, accum: int,
           bandwidth_gbs: float | None = None) -> str:
    """The printout of :func:`communication_volume`'s result."""
    lines = [
        f"{name}: {dp * tp} ranks = dp {dp} x tp {tp}; {batch} x {seq} tokens per replica per micro-batch, "
        f"accum {accum}, {dtype}",
        f"  parameters            {v['params']:,} ({v['params_per_rank']:,} per rank)",
        f"  data parallel         all-reduce of {_size(v['dp_buffer_bytes'])} of gradients once per step "
        f"-> {_size(v['dp_bytes'])} sent per rank",
        f"  head parallel         {v['tp_allreduces']} all-reduces of {_size(v['tp_buffer_bytes'])} activations "
        f"-> {_size(v['tp_bytes'])} sent per rank",
        f"  total per step        {_size(v['total_bytes'])} sent per rank",
    ]
    if bandwidth_gbs:
        lines.append(f"  at {bandwidth_gbs:g} GB/s per rank  {v['total_bytes'] / (bandwidth_gbs * 1e9) * 1e3:.2f} ms "
                     "(no overlap with compute)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m headwise.distributed.comm",
                                description="Communication volume per optimizer step of dp x tp training.")
    p.add_argument("--preset", default="gpt2-small")
    p.add_argument("--kind", choices=["decoder", "encoder"], default=None,
                   help="which model to count (default: decoder for pre-norm presets, else encoder)")
    p.add_argument("--dp", type=int, default=1)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default: the preset's max_len)")
    p.add_argument("--batch", type=int, default=8, help="sequences per replica per micro-batch")
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="bf16")
    p.add_argument("--bandwidth", type=float, default=None, help="GB/s per rank, to turn bytes into time")
    args = p.parse_args(argv)
    try:
        cfg = get_preset(args.preset)
        kind = args.kind or ("decoder" if cfg.norm == "pre" else "encoder")
        seq = args.seq or cfg.max_len
        v = communication_volume(cfg, args.batch, seq, args.dp, args.tp, args.dtype, accum=args.accum, kind=kind)
    except (ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render(f"{args.preset} ({kind})", v, batch=args.batch, seq=seq, dp=args.dp, tp=args.tp, dtype=args.dtype,
                 accum=args.accum, bandwidth_gbs=args.bandwidth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
