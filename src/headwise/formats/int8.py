"""int8 modules: a Linear with per-output-channel symmetric int8 weights and dynamically
quantised int8 activations, and the int8 variant of :class:`MultiHeadAttention`.

Weights: ``w ~= w_int8 * scale[:, None]`` with ``scale = max|w[row]| / 127`` and
``w_int8`` in ``[-127, 127]`` (symmetric: no zero point, so ``0.0`` stays exact).

Activations are quantised at every call, from the values of that call:

* CPU (kernel ``"qcpu"``): PyTorch's quantized CPU op ``quantized::linear_dynamic``
  on weights packed once (oneDNN on CPUs with AMX-INT8, else the engine in
  ``torch.backends.quantized.engine``: x86/fbgemm/onednn/qnnpack). The op quantises
  its input per tensor (asymmetric uint8: scale and zero point from the tensor's
  min/max), so a token's result depends on the other tokens of the call. In a decoder
  (``Int8Linear.token_scales``) each token is first divided by its own ``max|x|`` and the
  range pinned to [-1, 1] (``Int8Linear._qcpu_per_token``): one scale per token, and a
  causal model stays causal. It accumulates in int32. On CPUs without VNNI it
  uses 7-bit activations (``reduce_range``) so that the int16 pair sums of
  ``vpmaddubsw`` cannot saturate.
* CUDA (kernel ``"int_mm"``): per-token symmetric int8 activations
  (``scale_t = max|x[t]| / 127``) and ``torch._int_mm`` (cuBLASLt IMMA, int32
  accumulation), then ``acc * scale_t * scale_w + bias``. ``torch._int_mm`` also
  runs on the CPU, which is how the CUDA path is tested here.
* ``"emulate"``: the same per-token arithmetic with a float matmul of the integer
  values: a readable reference, on any device.

The quantized CPU ops are deprecated in PyTorch 2.13 and warn when weights are packed;
those warnings are silenced locally (see docs/formats.md).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import MultiHeadAttention
from ..checks import check_int, check_real

__all__ = [
    "Int8Linear",
    "Int8MultiHeadAttention",
    "quantize_per_channel",
    "quantize_per_token",
    "int8_kernel_for",
    "KERNELS",
]

KERNELS = ("auto", "qcpu", "int_mm", "emulate")
_CPU_ENGINES = ("x86", "fbgemm", "onednn", "qnnpack")


@contextmanager
def _quiet_quantized_ops():
    # torch 2.13 deprecates quantized tensors and their ops with a UserWarning on every
    # packing; the ops still are PyTorch's int8 CPU GEMM, so the noise is kept local.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantiz.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def quantize_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8: ``weight (N, K)`` -> ``(w_int8 (N, K) int8,
    scale (N,) float32)`` with ``weight ~= w_int8 * scale[:, None]``; an all-zero row
    gets scale 1 (its int8 values are 0 either way)."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    w_int8 = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return w_int8, scale


def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: ``x (M, K)`` -> ``(x_int8 (M, K), scale (M, 1) float32)``."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127.0
    return torch.round(xf / scale).clamp_(-127, 127).to(torch.int8), scale


def _cpu_has_vnni() -> bool:
    caps = _cpu_capabilities()
    return bool(caps.get("avx512_vnni") or caps.get("avx_vnni") or caps.get("amx_int8"))


def _cpu_capabilities() -> dict:
    try:
        caps = torch._C._cpu._get_cpu_capability()  # a dict of flags in torch >= 2.8
        return caps if isinstance(caps, dict) else {}
    except Exception:  # older or other builds: no flags to read
        return {}


def cpu_int8_engine() -> str:
    """The quantized engine the CPU weights are packed for: ``"onednn"`` on CPUs with
    AMX-INT8 (oneDNN runs the int8 GEMM on AMX tiles: ~6x fp32 here, against ~2.5x for
    fbgemm's AVX-512 VNNI kernels), else ``torch.backends.quantized.engine``."""
    if _cpu_capabilities().get("amx_int8") and "onednn" in torch.backends.quantized.supported_engines:
        return "onednn"
    return torch.backends.quantized.engine


def int8_kernel_for(device: torch.device) -> str | None:
    """The int8 GEMM that serves ``device`` (``"qcpu"`` on CPU, ``"int_mm"`` on
    CUDA), or ``None`` when this PyTorch build has no int8 path there."""
    if device.type == "cpu":
        engine = torch.backends.quantized.engine
        if engine in _CPU_ENGINES and engine in torch.backends.quantized.supported_engines:
            return "qcpu"
        return None
    if device.type == "cuda" and hasattr(torch, "_int_mm"):
        # cuBLASLt's int8 tensor-core GEMM (IMMA) needs Turing (sm_75) or newer
        if torch.cuda.get_device_capability(device) >= (7, 5):
            return "int_mm"
    return None


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with int8 weights (per output channel) and int8 activations
    (quantised per call); ``x (..., in_features)`` -> ``y (..., out_features)`` in
    ``x``'s dtype. Gradients reach ``x`` as through a float linear of the dequantised
    :attr:`weight` (straight-through); the buffers get none.

    Buffers (all in the state dict): ``weight_int8 (out, in)`` int8, ``weight_scale
    (out,)`` float32, ``bias (out,)`` float32 or None. Packed weights for the CPU op and
    transposed ones for ``torch._int_mm`` are caches, rebuilt when the buffers change
    (``load_state_dict``, ``.to(device)``) and never saved.

    Args:
        kernel: ``"auto"`` (qcpu on CPU, int_mm on CUDA), ``"qcpu"``, ``"int_mm"``
            or ``"emulate"`` (see the module docstring).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 kernel: str = "auto", device=None) -> None:
        super().__init__()
        check_int("in_features", in_features)
        check_int("out_features", out_features)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.in_features, self.out_features = in_features, out_features
        self.kernel = kernel
        #: qcpu: one activation scale per token, not per tensor (:func:`quantize` sets it in
        #: decoders, whose tokens must not see later ones through the scale)
        self.token_scales = False
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8,
                                                        device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        # SmoothQuant's per-input-channel factors s: the weight holds W * s, the input is
        # divided by s before it is quantised (all ones, and skipped, without calibration)
        self.register_buffer("input_smooth", torch.ones(in_features, device=device))
        self.smoothed = False
        self.register_load_state_dict_post_hook(_after_load)
        self._cache: tuple[tuple, object] | None = None

    @classmethod
    def from_float(cls, weight: Tensor, bias: Tensor | None = None, *, kernel: str = "auto",
                   input_absmax: Tensor | None = None, alpha: float = 0.75) -> Int8Linear:
        """Quantise a float ``weight (out, in)`` (and ``bias (out,)``) into a new module.

        With ``input_absmax (in,)``, the largest ``|x|`` seen per input channel on
        calibration data, outlier channels are smoothed first (SmoothQuant, Xiao et al.
        2023): ``s_j = absmax_j^alpha / max_i |W_ij|^(1 - alpha)``, the weight becomes
        ``W * s`` and inputs are divided by ``s``, which moves the activations' range
        into the weights, where per-channel scales absorb it."""
        if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            raise ValueError(f"weight must be a floating-point tensor (out, in), got "
                             f"{getattr(weight, 'dtype', type(weight).__name__)} {tuple(getattr(weight, 'shape', ()))}")
        out_features, in_features = weight.shape
        if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (out_features,)):
            raise ValueError(f"bias must be None or a tensor of shape (out,) = ({out_features},), got "
                             f"{tuple(getattr(bias, 'shape', ()))}")
        check_real("alpha", alpha, minimum=0, maximum=1)
        m = cls(in_features, out_features, bias is not None, kernel=kernel, device=weight.device)
        weight = weight.detach().float()
        if input_absmax is not None:
            if input_absmax.shape != (in_features,):
                raise ValueError(f"input_absmax must have shape ({in_features},), got {tuple(input_absmax.shape)}")
            w_max = weight.abs().amax(dim=0).clamp_min(1e-5)
            smooth = (input_absmax.float().to(weight.device).clamp_min(1e-5) ** alpha / w_max ** (1 - alpha))
            smooth = smooth.clamp(1e-2, 1e2)  # a dead channel must not blow up its weights
            weight = weight * smooth[None, :]
            m.input_smooth.copy_(smooth)
            m.smoothed = True
        w_int8, scale = quantize_per_channel(weight)
        m.weight_int8.copy_(w_int8)
        m.weight_scale.copy_(scale)
        if bias is not None:
            m.bias.copy_(bias.detach().float())
        return m

    @property
    def weight(self) -> Tensor:
        """The dequantised weight ``(out, in)`` float32: a new tensor at each access (for
        inspection, e.g. ``layer.heads``), not a parameter."""
        w = self.weight_int8.float() * self.weight_scale[:, None]
        return w / self.input_smooth if self.smoothed else w

    def __getstate__(self):
        # packed CPU weights are opaque C++ objects: copies and pickles rebuild them
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def _kernel(self, device: torch.device) -> str:
        if self.kernel != "auto":
            return self.kernel
        kernel = int8_kernel_for(device)
        if kernel is None:
            raise RuntimeError(f"no int8 GEMM serves device {device}; use kernel='emulate'")
        return kernel

    def _cached(self, kernel: str, build):
        key = (kernel, self.weight_int8.device, self.weight_int8.data_ptr(), self.weight_int8._version,
               self.weight_scale._version, None if self.bias is None else self.bias._version,
               cpu_int8_engine() if kernel.startswith("qcpu") else None)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, build())
        return self._cache[1]

    def _packed(self, with_bias: bool = True):
        def build():
            n = self.out_features
            previous = torch.backends.quantized.engine
            with _quiet_quantized_ops():
                try:
                    # packing picks its implementation from the global engine; the packed
                    # weights keep it whatever the engine is when they are used
                    torch.backends.quantized.engine = cpu_int8_engine()
                    qw = torch._make_per_channel_quantized_tensor(
                        self.weight_int8.cpu(), self.weight_scale.double().cpu(),
                        torch.zeros(n, dtype=torch.long), 0)
                    bias = self.bias.cpu() if with_bias and self.bias is not None else None
                    return torch.ops.quantized.linear_prepack(qw, bias)
                finally:
                    torch.backends.quantized.engine = previous
        return self._cached("qcpu" if with_bias else "qcpu-unbiased", build)

    def _int_mm_weight(self) -> Tensor:
        def build():
            # cuBLASLt wants K and N multiples of 8: zero rows/columns add nothing
            n, k = self.weight_int8.shape
            return F.pad(self.weight_int8, (0, (-k) % 8, 0, (-n) % 8)).contiguous()
        return self._cached("int_mm", build)

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():  # (the result would be cast back to x's integer dtype)
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must have last dimension {self.in_features}, got shape {tuple(x.shape)}")
        if x.requires_grad and torch.is_grad_enabled():
            return _StraightThrough.apply(x, self)
        return self._int8_forward(x)

    def _int8_forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.smoothed:
            x2 = x2.float() / self.input_smooth
        kernel = self._kernel(x.device)
        if kernel == "qcpu" and self.token_scales:
            y = self._qcpu_per_token(x2.float())
        elif kernel == "qcpu":
            with _quiet_quantized_ops():
                y = torch.ops.quantized.linear_dynamic(x2.float().contiguous(), self._packed(),
                                                       not _cpu_has_vnni())
        elif kernel == "int_mm":
            y = self._int_mm(x2)
        else:
            xq, sx = quantize_per_token(x2)
            y = (xq.float() @ self.weight_int8.float().t()) * sx * self.weight_scale
            if self.bias is not None:
                y = y + self.bias
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def _qcpu_per_token(self, x2: Tensor) -> Tensor:
        """``quantized::linear_dynamic`` of ``x2 (M, K)`` float32 with a scale per token
        (:attr:`token_scales`). The op quantises its input with one scale for the whole
        tensor, from its min and max, which makes each token's result depend on the other
        tokens of the batch (a causal model's on later ones). So each row is first divided
        by its own ``max|x|`` and two rows of +1 and -1 are appended: the tensor's range is
        then [-1, 1] whatever the rows hold, the op's scale a constant, and each row's
        result (times its ``max|x|`` afterwards) its own. The extra passes cost ~45% of an
        encoder's int8 forward, which is why only decoders take them."""
        m = x2.shape[0]
        amax = torch.maximum(x2.amax(dim=1, keepdim=True), x2.amin(dim=1, keepdim=True).neg_())
        amax = torch.where(amax > 0, amax, 1.0)
        rows = torch.empty(m + 2, x2.shape[1], dtype=x2.dtype, device=x2.device)
        torch.div(x2, amax, out=rows[:m])
        rows[m], rows[m + 1] = 1.0, -1.0
        with _quiet_quantized_ops():
            y = torch.ops.quantized.linear_dynamic(rows, self._packed(with_bias=False), not _cpu_has_vnni())[:m]
        # in place: a new (M, N) output costs more than the GEMM's own
        return y.mul_(amax) if self.bias is None else torch.addcmul(self.bias, y, amax, out=y)

    def _int_mm(self, x2: Tensor) -> Tensor:
        w = self._int_mm_weight()
        m, k = x2.shape
        xq, sx = quantize_per_token(x2)
        # torch._int_mm needs more than 16 rows and K a multiple of 8
        xq = F.pad(xq, (0, w.shape[1] - k, 0, max(0, 17 - m)))
        acc = torch._int_mm(xq, w.t())[:m, : self.out_features]
        y = acc.float() * sx * self.weight_scale
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, kernel={self.kernel!r}, smoothed={self.smoothed}"
                + (", token_scales=True" if self.token_scales else ""))


class _StraightThrough(torch.autograd.Function):
    """The int8 result forward; backward, ``x``'s gradient through the dequantised weight
    (:attr:`Int8Linear.weight`), as if the layer were that float linear (the int8 ops have
    none: without this it came only through the activation scale's ``max``, or not at all)."""

    @staticmethod
    def forward(ctx, x: Tensor, module: Int8Linear) -> Tensor:
        ctx.module = module
        return module._int8_forward(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad @ ctx.module.weight.to(grad.dtype), None


def _after_load(module: Int8Linear, incompatible) -> None:
    module.smoothed = bool((module.input_smooth != 1).any())


class Int8MultiHeadAttention(MultiHeadAttention):
    """:class:`MultiHeadAttention` whose projections are :class:`Int8Linear` modules,
    given to it through the layer's public projection arguments (see
    :class:`headwise.attention.Projection`): the fused ``qkv_proj`` (one int8 GEMM for
    every head's Q, K and V; or ``q_proj``/``k_proj``/``v_proj`` for cross-attention
    layers) and ``out_proj``. Attention itself runs in the input's float dtype with the
    layer's backend; inputs of any float dtype are accepted (the projections quantise
    them).

    Made by :meth:`convert` from a float layer; ``layer.heads[i]`` then shows
    dequantised copies, not views. Inference only: there are no parameters.
    """

    @classmethod
    def convert(cls, layer: MultiHeadAttention, *, kernel: str = "auto",
                input_absmax: dict[str, Tensor] | None = None, alpha: float = 0.75) -> Int8MultiHeadAttention:
        """A new int8 layer with ``layer``'s projections quantised (``layer`` itself is
        left as it was): its sizes, backend, dropout, training mode, rotary embedding
        and head hooks are carried over (see
        :meth:`MultiHeadAttention.with_projections`); put it where ``layer`` was.
        ``input_absmax`` may hold calibration statistics for ``"qkv_proj"`` and
        ``"out_proj"`` (see :meth:`Int8Linear.from_float`)."""
        if not isinstance(layer, MultiHeadAttention) or isinstance(layer, Int8MultiHeadAttention):
            raise TypeError(f"layer must be a float MultiHeadAttention, got {type(layer).__name__}")
        stats = input_absmax or {}
        wq, wk, wv = layer.projection_weights()
        bq, bk, bv = layer.projection_biases()
        if layer.fused:
            qkv_bias = None if bq is None else torch.cat([bq, bk, bv])
            inputs = {"qkv_proj": Int8Linear.from_float(torch.cat([wq, wk, wv]), qkv_bias, kernel=kernel,
                                                        input_absmax=stats.get("qkv_proj"), alpha=alpha)}
        else:
            inputs = {f"{p}_proj": Int8Linear.from_float(w, b, kernel=kernel)
                      for p, w, b in (("q", wq, bq), ("k", wk, bk), ("v", wv, bv))}
        out = Int8Linear.from_float(layer.out_proj.weight, layer.out_proj.bias, kernel=kernel,
                                    input_absmax=stats.get("out_proj"), alpha=alpha)
        return cls.with_projections(layer, out_proj=out, **inputs)  # type: ignore[return-value]

    def reset_parameters(self) -> None:
        raise RuntimeError("an int8 attention layer has no parameters to reset; quantise a float layer")
