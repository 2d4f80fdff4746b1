"""``quantize(model, "bf16" | "int8")``, the bf16 capability check, and saving/loading
quantised models."""

from __future__ import annotations

import copy
import json
import os
import uuid
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from ..attention import MultiHeadAttention
from ..attention.backends import check_backend_name
from ..hardware.precision import bf16_math_support
from ..models import Decoder, Encoder, EncoderForMLM, EncoderForRTD, ModelConfig
from .int8 import Int8Linear, Int8MultiHeadAttention, int8_kernel_for

__all__ = [
    "FORMATS",
    "quantize",
    "calibrate",
    "model_format",
    "bf16_math_support",
    "save_quantized",
    "load_quantized",
]

FORMATS = ("fp32", "bf16", "int8")
_FORMAT_ATTR = "_headwise_format"
# submodules a caller runs on their own (MaskedLM runs model.encoder then model.head):
# a bf16 model takes and returns float32 at each of them
_BF16_ENTRY_POINTS = ("encoder", "head", "lm_head")


# ------------------------------------------------------------------ quantize
def model_format(model: nn.Module) -> str:
    """``"int8"``, ``"bf16"`` or ``"fp32"``: the format :func:`quantize` gave ``model``
    (``"fp32"`` for a model it never touched)."""
    fmt = getattr(model, _FORMAT_ATTR, None)
    if fmt is not None:
        return fmt
    if any(isinstance(m, (Int8Linear, Int8MultiHeadAttention)) for m in model.modules()):
        return "int8"
    return "fp32"


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def quantize(model: nn.Module, format: str, *, inplace: bool = False, attention: str | None = None,
             kernel: str = "auto", calibration: Iterable[Any] | None = None,
             calibration_forward: Callable[[nn.Module, Any], Any] | None = None,
             smooth_alpha: float | None = None) -> nn.Module:
    """Return ``model`` in number ``format``: ``"fp32"`` (unchanged), ``"bf16"`` or ``"int8"``.

    * ``"bf16"``: weights and activations in bfloat16; the model (and its ``encoder``,
      ``head`` and ``lm_head`` submodules) take float32 inputs and return float32
      outputs, so losses and metrics are computed in float32. Warns (``UserWarning``)
      when the device has no native bf16 math, naming what is missing: it still works,
      slowly.
    * ``"int8"``: every ``nn.Linear`` (MLP, heads, ELECTRA's ``embed_proj``) becomes an
      :class:`Int8Linear` and every :class:`MultiHeadAttention` an
      :class:`Int8MultiHeadAttention` (int8 fused QKV and output projections).
      Embeddings and norms stay float32. CPU: PyTorch's quantized CPU kernels, one
      activation scale per tensor, or per token in a model holding a :class:`Decoder`
      (:attr:`Int8Linear.token_scales`: no token sees a later one through the scale);
      CUDA: ``torch._int_mm``, per token.

    Args:
        model: a float32 model (any ``nn.Module``; headwise models can also be saved
            with :func:`save_quantized`).
        format: one of :data:`FORMATS`.
        inplace: modify ``model`` itself instead of a deep copy (its attention layers
            are replaced by new int8 ones; a bare attention layer given as ``model`` is
            replaced too, so use the returned module).
        attention: ``"int8"`` also switches every attention layer to the int8 Triton
            backend (int8 Q K^T; CUDA, fp16/bf16 activations); None keeps each layer's
            backend.
        kernel: int8 GEMM of the new :class:`Int8Linear` modules (``"auto"`` picks per
            device; ``"emulate"`` is a float reference for tests).
        calibration: int8 only: a few input batches (e.g. ``input_ids (B, T)``) run
            through the float model to record each projection's largest ``|x|`` per
            input channel; outlier channels of the Q/K/V and MLP-input projections
            (:data:`SMOOTHED_PROJECTIONS`) are then smoothed into the weights
            (SmoothQuant). Recommended on CPU, where activations get one int8 scale
            per tensor: BERT-like models have a few channels 5x larger than the rest.
        calibration_forward: ``f(model, batch)`` to run a calibration batch; default
            ``model(batch)``.
        smooth_alpha: SmoothQuant's migration strength in [0, 1] (0: none; 1: all of
            the activations' range moves into the weights); with ``calibration`` only
            (default :data:`SMOOTH_ALPHA`).

    ``kernel``, ``calibration``, ``calibration_forward`` and ``smooth_alpha`` given
    where they would do nothing (another format than int8, or no calibration) are
    refused rather than ignored.

    Raises:
        ValueError: ``format`` is not one of :data:`FORMATS`, the model's device has no
            path for it (int8 needs PyTorch's quantized CPU engine or CUDA sm_75+), or
            the model was already quantised.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    _refuse_unused_settings(format, kernel=kernel, calibration=calibration,
                            calibration_forward=calibration_forward, smooth_alpha=smooth_alpha)
    smooth_alpha = SMOOTH_ALPHA if smooth_alpha is None else smooth_alpha
    current = model_format(model)
    if current != "fp32":
        raise ValueError(f"model is already in format {current!r}; quantize a float32 model")
    if attention not in (None, "int8"):
        raise ValueError(f"attention must be None or 'int8', got {attention!r}")
    if not 0.0 <= smooth_alpha <= 1.0:
        raise ValueError(f"smooth_alpha must be in [0, 1], got {smooth_alpha!r}")
    device = _device_of(model)
    if format == "int8" and kernel == "auto" and int8_kernel_for(device) is None:
        raise ValueError(
            f"format 'int8' has no int8 GEMM on device {device} (needs a CPU with one of PyTorch's "
            f"quantized engines {torch.backends.quantized.supported_engines}, engine now "
            f"{torch.backends.quantized.engine!r}, or CUDA sm_75+); accepted formats here: "
            f"{[f for f in FORMATS if f != 'int8']}"
        )
    stats = None if calibration is None else calibrate(model, calibration, calibration_forward)
    if not inplace:
        model = copy.deepcopy(model)
    if format == "bf16":
        _to_bf16(model, device)
    elif format == "int8":
        model = _to_int8(model, kernel, stats or {}, smooth_alpha)
        if any(isinstance(m, Decoder) for m in model.modules()):
            # causal: a token must not see later ones through the CPU op's one scale per tensor
            for m in model.modules():
                if isinstance(m, Int8Linear):
                    m.token_scales = True
    if attention == "int8":
        for m in model.modules():
            if isinstance(m, MultiHeadAttention):
                m.backend = "int8"
    setattr(model, _FORMAT_ATTR, format)
    return model


#: SmoothQuant's migration strength when :func:`quantize` is given none
SMOOTH_ALPHA = 0.75


def _refuse_unused_settings(format: str, *, kernel: str, calibration: Any, calibration_forward: Any,
                            smooth_alpha: float | None) -> None:
    """ValueError naming each :func:`quantize` argument given where it would do nothing."""
    settings = (  # (as named in the message, given, used)
        (f"kernel={kernel!r}", kernel != "auto", format == "int8"),
        ("calibration", calibration is not None, format == "int8"),
        ("calibration_forward", calibration_forward is not None, format == "int8" and calibration is not None),
        (f"smooth_alpha={smooth_alpha!r}", smooth_alpha is not None, format == "int8" and calibration is not None),
    )
    unused = [name for name, given, used in settings if given and not used]
    if not unused:
        return
    why = (f"with format {format!r} (used by format 'int8' only)" if format != "int8"
           else "without calibration (SmoothQuant needs calibration batches)")
    many = len(unused) > 1
    raise ValueError(f"{' and '.join(unused)} {'have' if many else 'has'} no effect {why}; "
                     f"drop {'them' if many else 'it'}" + ("" if format != "int8" else " or give calibration"))


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any],
              forward: Callable[[nn.Module, Any], Any] | None = None) -> dict[str, Tensor]:
    """Largest ``|x|`` per input channel ``(in,)`` of every projection over ``batches``:
    keys are the names of ``nn.Linear`` modules and ``"<attention layer>.qkv_proj"``
    for each fused attention projection."""
    forward = forward if forward is not None else (lambda m, b: m(b))
    stats: dict[str, Tensor] = {}

    def record(key: str, x: Tensor) -> None:
        a = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0).float()
        stats[key] = a if key not in stats else torch.maximum(stats[key], a)

    handles = []
    for name, m in model.named_modules():
        if type(m) is nn.Linear:
            handles.append(m.register_forward_pre_hook(lambda _m, args, _n=name: record(_n, args[0])))
        elif isinstance(m, MultiHeadAttention) and m.fused:
            # the fused Q/K/V projection reads the layer's input x (self-attention)
            handles.append(m.register_forward_pre_hook(
                lambda _m, args, _n=name: record(f"{_n}.qkv_proj" if _n else "qkv_proj", args[0])))
    was = model.training
    model.eval()
    n = 0
    try:
        for batch in batches:
            forward(model, batch)
            n += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    if n == 0:
        raise ValueError("calibration is empty: give at least one batch")
    return stats


# SmoothQuant smooths the projections that read a norm's output (attention's Q/K/V and
# the MLP's first layer), whose outliers sit in a few fixed channels; the inputs of
# out_proj and fc_out (after softmax-weighting and GELU) gain little from it, and
# fc_out's 4x-wide input is where the extra division would cost most.
SMOOTHED_PROJECTIONS = ("qkv_proj", "fc_in")


def _to_int8(model: nn.Module, kernel: str, stats: dict[str, Tensor], alpha: float) -> nn.Module:
    """``model`` with its attention layers replaced by int8 ones and its ``nn.Linear``
    modules by :class:`Int8Linear` (the int8 layer itself when ``model`` is one)."""
    stats = {k: v for k, v in stats.items() if k.rsplit(".", 1)[-1] in SMOOTHED_PROJECTIONS}

    def sub(prefix: str) -> dict[str, Tensor]:
        p = f"{prefix}." if prefix else ""
        return {k[len(p):]: v for k, v in stats.items() if k.startswith(p)}

    # attention first: its out_proj is an nn.Linear that the int8 layer quantises itself
    for name, m in list(model.named_modules()):
        if isinstance(m, MultiHeadAttention) and not isinstance(m, Int8MultiHeadAttention):
            q = Int8MultiHeadAttention.convert(m, kernel=kernel, input_absmax=sub(name), alpha=alpha)
            if not name:
                return q
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, q)
    for pname, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:  # subclasses (NonDynamicallyQuantizableLinear...) too risky
                full = f"{pname}.{name}" if pname else name
                setattr(parent, name, Int8Linear.from_float(child.weight, child.bias, kernel=kernel,
                                                            input_absmax=stats.get(full), alpha=alpha))
    if type(model) is nn.Linear:
        raise TypeError("quantize() replaces a model's submodules; wrap a bare nn.Linear in a module "
                        "or use Int8Linear.from_float")
    return model


def _to_bf16(model: nn.Module, device: torch.device) -> None:
    ok, why = bf16_math_support(device)
    if not ok:
        warnings.warn(
            f"format 'bf16' on {device} will be slow: {why}. The model is converted anyway; "
            f"fp32 is faster here.", UserWarning, stacklevel=3)
    model.to(torch.bfloat16)
    for name, m in model.named_modules():
        if m is model or name.rsplit(".", 1)[-1] in _BF16_ENTRY_POINTS:
            m.register_forward_pre_hook(_inputs_to_bf16)
            m.register_forward_hook(_outputs_to_fp32)


def _cast(obj, dtype: torch.dtype):
    if isinstance(obj, Tensor):
        return obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    if isinstance(obj, tuple):
        return tuple(_cast(o, dtype) for o in obj)
    if isinstance(obj, list):
        return [_cast(o, dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: _cast(v, dtype) for k, v in obj.items()}
    return obj


def _inputs_to_bf16(module: nn.Module, args: tuple):
    return _cast(args, torch.bfloat16)


def _outputs_to_fp32(module: nn.Module, args: tuple, output):
    return _cast(output, torch.float32)


# ------------------------------------------------------------------ save / load
# the headwise models load_quantized can rebuild, by class name
_MODEL_CLASSES: dict[str, type] = {c.__name__: c for c in (Encoder, EncoderForMLM, EncoderForRTD, Decoder)}


def save_quantized(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write a quantised (or float) headwise model to one ``.safetensors`` file: its
    tensors (int8 weights and their scales included) plus, as metadata, its format,
    class and :class:`~headwise.models.ModelConfig`. Returns the path.

    Raises TypeError for a model that is not a headwise Encoder, EncoderForMLM,
    EncoderForRTD or Decoder (only those can be rebuilt by :func:`load_quantized`).
    """
    classes = _MODEL_CLASSES
    name = type(model).__name__
    if name not in classes or not hasattr(model, "cfg"):
        raise TypeError(f"save_quantized takes a headwise model, one of {sorted(classes)}; got {name}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"save_quantized: {str(path)!r} is a folder; give a file name "
                                "(e.g. model.safetensors)")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"headwise_format": model_format(model), "model_class": name,
            "config": json.dumps(model.cfg.to_dict())}
    backends = _layer_backends(model)
    if backends:
        meta["attention_backends"] = json.dumps(backends)
    # a new temporary name of our own (never an existing file's), renamed over path when complete
    tmp = str(path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp"))
    try:
        save_model(model, tmp, metadata=meta)
        os.replace(tmp, path)  # never a half-written file under the real name
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _layer_backends(model: nn.Module) -> dict[str, str]:
    """The attention layers whose backend is not the config's (``quantize(attention="int8")``'s,
    or one set by hand), by name: saved, so that the loaded model runs the same backends."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, MultiHeadAttention):
            backend = m._backend_before_weight_hooks or m.backend  # (a weight hook's "auto" is not the layer's)
            if backend != model.cfg.attn_backend:
                out[name] = backend
    return out


def load_quantized(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model written by :func:`save_quantized`, in its format, on ``device``
    (int8 models are quantised on ``device`` and then given the saved int8 weights and
    scales, so outputs match the saved model's exactly)."""
    if Path(path).is_dir():  # (was: safetensors' "No such device (os error 19)")
        raise IsADirectoryError(f"load_quantized: {str(path)!r} is a folder; give the .safetensors file "
                                "that save_quantized wrote")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except SafetensorError as e:
        raise ValueError(f"{path} is not a safetensors file written by save_quantized ({e})") from None
    if "headwise_format" not in meta:
        raise ValueError(f"{path} was not written by save_quantized (no headwise_format metadata)")
    if meta.get("model_class") not in _MODEL_CLASSES:
        raise ValueError(f"{path}: model_class {meta.get('model_class')!r} in its metadata is not one of "
                         f"{sorted(_MODEL_CLASSES)}")
    cls = _MODEL_CLASSES[meta["model_class"]]
    try:
        config = json.loads(meta.get("config", ""))
    except ValueError as e:
        raise ValueError(f"{path}: its config metadata is not JSON ({e})") from None
    try:
        cfg = ModelConfig.from_dict(config)
        with warnings.catch_warnings():
            # the bf16 speed warning was given when the model was first quantised
            warnings.simplefilter("ignore", UserWarning)
            model = quantize(cls(cfg).to(device), meta["headwise_format"], inplace=True)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: the model its metadata describes cannot be built: {e}") from None
    try:
        backends = json.loads(meta.get("attention_backends", "{}"))
        layers = dict(model.named_modules())
        for layer, backend in backends.items():
            check_backend_name(backend)
            if not isinstance(layers.get(layer), MultiHeadAttention):
                raise ValueError(f"{layer!r} is not an attention layer of the model")
            layers[layer].backend = backend
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: its attention_backends metadata is damaged: {e}") from None
    try:
        load_model(model, str(path), strict=True, device=str(device))
    except RuntimeError as e:  # load_state_dict's "Error(s) in loading state_dict for X:" and one line each
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ValueError(f"{path}: its tensors do not fit the {cls.__name__} its metadata describes "
                         f"({lines[1] if len(lines) > 1 else lines[0]})") from None
    return model.eval()
