"""Output projection and cross-entropy in one pass over row chunks.

``F.cross_entropy(F.linear(h, W, b), t)`` materialises the ``(N, V)`` logits, runs a
separate log-softmax over them and, in the backward, two more passes (the softmax
gradient, then the two GEMMs). :func:`linear_cross_entropy` instead walks ``h`` in
chunks of rows; for each chunk it computes the logits, their logsumexp, the loss and,
when a gradient is wanted, the gradient ``softmax - onehot`` in place, and from it the
chunk's gradient with respect to ``h`` and its share of the gradients of ``W`` and
``b``. Only one chunk of logits exists at a time (it stays in cache) and the
backward only scales the stored gradients by the incoming one.

The FLOPs are those of the unfused version (three ``N x D x V`` GEMMs); what goes is
the traffic of the full logits and their gradient, and their memory.

On the CPU, when a gradient is wanted, a chunk's logits go through one fused softmax
(not a log-softmax and then an ``exp``), and the loss is the log of each target's
probability; a target whose probability underflowed is scored from the logits
instead. One V-wide pass fewer per chunk: a tiny-preset CLM step on a 2-core Zen 4
EPYC went from 0.560 to 0.517 s in fp32 and from 0.329 to 0.314 s in bf16 (medians of
10 alternating pairs of steps in one process with bench/train_throughput.py's batches,
by a timing script not kept); at electra-small widths, where the vocabulary projection
is a smaller share, the two were within the noise.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..kernels.cpu_linear import dense, hooked, uses_onednn

__all__ = ["linear_cross_entropy", "fusable", "DEFAULT_CHUNK_ELEMS"]

#: logits per chunk (rows x V): 2^22 fp32 = 16 MiB (512 rows of an 8192-token vocabulary),
#: within the last-level cache of the CPUs measured and few enough chunks that the
#: per-op overhead stays small (bench/train_throughput.py).
DEFAULT_CHUNK_ELEMS = 1 << 22


def fusable(*modules: nn.Module) -> bool:
    """Whether ``modules`` can be bypassed for their weights: each a plain float module
    of its own class (a quantized replacement is another class) that no hook watches
    (``headwise.formats``' bf16 casts, inspection hooks and a user's forward or backward
    hooks must still run)."""
    for m in modules:
        if hooked(m):
            return False
        w = getattr(m, "weight", None)
        if w is not None and not w.is_floating_point():
            return False
    return True


def _row_chunks(n: int, rows: int) -> Iterator[slice]:
    """Consecutive row slices of ``rows`` covering ``0 .. n`` (the last one shorter)."""
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def _target_log_probs(logits: Tensor, probs: Tensor, targets: Tensor) -> Tensor:
    """``log softmax(logits)[i, targets[i]]`` (``targets (N, 1)``) from ``probs``, the
    softmax: ``log`` of the target's probability, which keeps float rounding where that
    probability is a normal float; where it underflowed (below ``finfo.tiny``), from the
    logits themselves (``z_t - logsumexp(z)``, for those rows only). CPU tensors: the
    check costs no device sync there."""
    p_t = probs.gather(1, targets).squeeze(1)
    out = p_t.log()
    low = p_t < torch.finfo(probs.dtype).tiny
    if low.any():
        rows = low.nonzero().squeeze(1)
        z = logits[rows]
        out[rows] = z.gather(1, targets[rows]).squeeze(1) - torch.logsumexp(z, 1)
    return out


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, chunk_rows, compute_dtype,
                grad_h_wanted, grad_w_wanted, grad_b_wanted, want_hits):
        n = hidden.shape[0]
        acc = torch.promote_types(compute_dtype, torch.float32)
        h = hidden.to(compute_dtype)
        w = weight.to(compute_dtype)
        b = None if bias is None else bias.to(acc)
        any_grad = grad_h_wanted or grad_w_wanted or grad_b_wanted
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        hits = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_h = torch.empty_like(hidden) if grad_h_wanted else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if grad_b_wanted else None
        # Chunk-sized buffers serve every chunk (the logits, the log-probabilities that
        # become the gradient): a fresh 16 MiB tensor per chunk can cost the first touch
        # of each of its pages, as the allocator hands large blocks back to the OS.
        rows_max, v = min(chunk_rows, n), weight.shape[0]
        # float32 on a CPU where oneDNN's GEMMs beat torch's (kernels/cpu_linear.py)
        on_cpu = h.device.type == "cpu"
        dnn = (compute_dtype == torch.float32 and on_cpu
               and not torch.compiler.is_compiling() and uses_onednn())
        z_buf = None if dnn else hidden.new_empty((rows_max, v), dtype=compute_dtype)
        p_buf = hidden.new_empty((rows_max, v), dtype=acc)  # log-probabilities or softmax, then gradient
        # under autocast the logits leave the GEMM in bf16 and are scored in float32
        zacc_buf = None if compute_dtype == acc else hidden.new_empty((rows_max, v), dtype=acc)
        # oneDNN accumulates W's gradient transposed: its (D, V) output reads g as a view
        grad_wt = torch.zeros(weight.shape[::-1], dtype=acc) if dnn and grad_w_wanted else None
        grad_w = (torch.zeros(weight.shape, dtype=acc, device=weight.device)
                  if grad_w_wanted and not dnn else None)
        for rows in _row_chunks(n, chunk_rows):
            hc = h[rows]
            r = hc.shape[0]
            z = dense(hc, w, None, True) if dnn else torch.mm(hc, w.t(), out=z_buf[:r])
            if zacc_buf is not None:
                z = zacc_buf[:r].copy_(z)
            if b is not None:
                z += b
            tgt = targets[rows]
            valid = tgt != ignore_index
            safe = tgt.masked_fill(~valid, 0).unsqueeze(1)
            validf = valid.to(acc)
            if want_hits:
                hits += ((z.argmax(dim=1) == tgt) & valid).sum()
            if not any_grad or not on_cpu:
                # one fused pass: logits -> log-probabilities (then -> softmax below)
                z = torch._log_softmax(z, 1, False, out=p_buf[:r])
                loss -= (z.gather(1, safe).squeeze(1) * validf).sum()
                if not any_grad:
                    continue
                z.exp_()
            else:
                # on the CPU, where each V-wide pass costs memory traffic: the softmax in
                # one fused pass, the loss from the targets' probabilities
                logits = z
                z = torch._softmax(logits, 1, False, out=p_buf[:r])
                loss -= (_target_log_probs(logits, z, safe) * validf).sum()
            # z becomes d(loss)/d(logits) = softmax - onehot for the scored rows. The rows
            # of ignored targets keep their softmax: instead of zeroing V-wide rows, their
            # weight 0 is applied to the narrow factors below (hc's rows, grad_h's rows).
            z.scatter_add_(1, safe, -validf.unsqueeze(1))
            if grad_b_wanted:
                grad_b += validf @ z
            g = z if z.dtype == compute_dtype else z_buf[:r].copy_(z)
            if grad_h_wanted:
                gh = grad_h[rows]
                if dnn:
                    gh.copy_(dense(g, w.t(), None, True))
                elif gh.dtype == g.dtype:
                    torch.mm(g, w, out=gh)
                else:
                    gh.copy_(g @ w)
                gh.mul_(validf.to(gh.dtype).unsqueeze(1))
            if grad_w_wanted:
                hv = hc * validf.to(hc.dtype).unsqueeze(1)
                if dnn:
                    grad_wt += dense(hv.t(), g.t(), None, True)
                elif compute_dtype == acc:
                    grad_w.addmm_(g.t(), hv)
                else:
                    grad_w += (g.t() @ hv).to(acc)
        if grad_wt is not None:
            grad_w = grad_wt.t().contiguous()
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(hits)
        return loss, hits

    @staticmethod
    def backward(ctx, grad_loss, _grad_hits):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        if grad_h is not None:
            grad_h = grad_h * grad_loss.to(grad_h.dtype)
        if grad_w is not None:
            grad_w = (grad_w * grad_loss.to(grad_w.dtype)).to(w_dtype)
        if grad_b is not None:
            grad_b = (grad_b * grad_loss.to(grad_b.dtype)).to(b_dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None, None, None


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    *,
    ignore_index: int = -100,
    chunk_rows: int | None = None,
    return_hits: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Summed cross-entropy of ``hidden (N, D) @ weight (V, D).T + bias (V,)`` against
    ``targets (N,)`` (rows whose target is ``ignore_index`` count for nothing), and,
    with ``return_hits``, how many scored rows have their target as the argmax (a long
    scalar tensor; else None).

    Equal to ``F.cross_entropy(F.linear(hidden, weight, bias), targets,
    ignore_index=ignore_index, reduction="sum")`` in value and gradients. Divide by the
    count of scored rows for the mean. The loss is float32 (float64 for float64
    inputs). Under ``torch.autocast`` the GEMMs run in the autocast dtype and the
    softmax in float32; gradients come back in the inputs' dtypes.

    When a gradient is wanted, it is computed during the forward, one chunk at a time,
    and ``backward`` only scales it: a loss computed and then not backpropagated costs
    the backward's GEMMs too (evaluation runs under ``no_grad``, which skips them).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden must be (N, D) and weight (V, D), got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be ({hidden.shape[0]},), got {tuple(targets.shape)}")
    device = hidden.device.type
    if torch.is_autocast_enabled(device) and hidden.is_floating_point():
        compute_dtype = torch.get_autocast_dtype(device)
    else:
        compute_dtype = hidden.dtype
    v = weight.shape[0]
    if chunk_rows is None:
        chunk_rows = max(1, DEFAULT_CHUNK_ELEMS // v)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    grad = torch.is_grad_enabled()
    hidden, targets = hidden.contiguous(), targets.long()
    with torch.autocast(device, enabled=False):
        loss, hits = _LinearCrossEntropy.apply(
            hidden, weight, bias, targets, ignore_index, chunk_rows, compute_dtype,
            grad and hidden.requires_grad, grad and weight.requires_grad,
            grad and bias is not None and bias.requires_grad, return_hits,
        )
    return loss, (hits if return_hits else None)
