"""What ``backend="auto"`` picks, and why: by measurement on CUDA, by priority elsewhere.

On the CPU (and any device but CUDA) ``auto`` takes the highest-priority backend
that can serve the call (``sdpa``, else ``math`` when weights are asked for, ...),
as it always has.

On CUDA the backends that ``auto`` may time (``timed_by_auto``: ``sdpa`` and
``tiled``) are compared *on the device*, once per shape class:

    (dtype, head dim, value dim, mask kind (causal or not, key lengths, dense
    bias), grouped-query or not, query and key length buckets (next power of two
    of Tq and of Tk), training or inference (whether gradients are required))

The first call of a class runs each candidate on synthetic inputs of that call's
shape and layout (``(B, H, T, D)`` views of ``(B, T, H, D)`` buffers, as the layer
makes them; drawn from a private generator, so the caller's random state is
untouched): one untimed first call (compilation, autotuning), then ``warmup``
calls and ``reps`` timed calls, forward only for inference, forward + backward for
training, each timed on the host clock after a device synchronisation. The median
wins. The warm-up and timed calls share one budget (``budget_ms``, default 500):
once it is spent no further call is timed, and a class not fully measured gets
``sdpa``. Choices are kept in memory and, opt-in, in a JSON file
(:func:`set_dispatch_cache` or ``HEADWISE_DISPATCH_CACHE=path``) keyed by the GPU's
name and the torch and Triton versions.

``sdpa`` is the choice whenever nothing was measured: timing off
(:func:`set_backend_autotune(False) <set_backend_autotune>` or
``HEADWISE_AUTOTUNE_BACKEND=0``), inside ``torch.compile`` tracing or CUDA graph
capture (never timed there: a choice already in memory is used, else ``sdpa``;
traced code does not read the cache file either), or a budget spent. When only
one candidate can serve a call (a dense mask, dropout, fp64 ...) it is used
without timing. :func:`headwise.attention.explain_backend` says which backend a call
gets and why; :func:`headwise.attention.pin_backend` fixes the choice for a call's class
(both in :mod:`headwise.attention.explain`).
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ...checks import check_switch
from .base import AttentionCall, Backend
from .dispatch_cache import CACHE_VERSION, check_cache_file, environment_key, read_cache, write_cache

__all__ = [
    "BackendChoice",
    "Dispatcher",
    "shape_class",
    "environment_key",
]

ENV_AUTOTUNE = "HEADWISE_AUTOTUNE_BACKEND"
ENV_BUDGET_MS = "HEADWISE_AUTOTUNE_BUDGET_MS"
ENV_CACHE = "HEADWISE_DISPATCH_CACHE"
DEFAULT = "sdpa"


@dataclass
class BackendChoice:
    """Which backend ``auto`` gives a call, and why.

    ``source`` is one of ``"priority"`` (not CUDA: the first that can serve),
    ``"only"`` (one candidate can serve), ``"measured"`` (timed just now),
    ``"cached"`` (timed earlier in this process), ``"disk"`` (read from the cache
    file), ``"pinned"`` (:func:`pin_backend`), ``"default"`` (nothing measured:
    ``sdpa``) or ``"named"`` (the layer or call names its backend)."""

    backend: str
    source: str
    reason: str
    shape_class: str | None = None
    device: str | None = None
    times_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    complete: bool | None = None  # measured: every candidate timed within the budget

    def __str__(self) -> str:
        return f"{self.backend} ({self.source}): {self.reason}"


def _pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def shape_class(call: AttentionCall) -> str:
    """The key ``auto`` measures once for: a readable string such as
    ``"bfloat16 d128/128 causal q4096 k4096 mha training"``."""
    m = call.mask
    mask = "causal" if m.causal else "full"
    if m.key_lengths is not None:
        mask += "+lengths"
    if m.bias is not None:
        mask += "+bias"
    dtype = str(call.dtype).removeprefix("torch.")
    heads = "mha" if call.n_heads == call.n_kv_heads else "gqa"
    mode = "training" if call.requires_grad else "inference"
    return (f"{dtype} d{call.head_dim}/{call.value_dim} {mask} q{_pow2(m.q_len)} "
            f"k{_pow2(m.k_len)} {heads} {mode}")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return device.type


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)




def _env_budget_ms() -> float:
    """``HEADWISE_AUTOTUNE_BUDGET_MS``: milliseconds >= 0 (``inf``: no limit); 500 when
    unset or empty. ValueError naming the variable for anything else (text, a negative
    number, nan), which would have failed as a bare float() error or been taken as no
    budget at all (nan) or none left (negative)."""
    text = os.environ.get(ENV_BUDGET_MS)
    if text is None or not text.strip():
        return 500.0
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise ValueError(f"{ENV_BUDGET_MS} must be a number of milliseconds >= 0 (inf: no limit; unset: 500), "
                         f"got {text!r}")
    return value


def _not_now() -> str | None:
    """Why timing must not run at this moment, or None."""
    if torch.compiler.is_compiling():
        return "inside torch.compile tracing (never timed there)"
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return "inside CUDA graph capture (never timed there)"
    return None


def synthetic_inputs(call: AttentionCall) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q, k, v and an output gradient of ``call``'s shape, dtype and device, laid out
    as the layer makes them ((B, H, T, D) views of (B, T, H, D) buffers), from a
    private generator (the global random state is not touched)."""
    m, dev = call.mask, call.device
    gen = torch.Generator(device=dev).manual_seed(0)

    def rnd(heads: int, t: int, d: int, grad: bool) -> Tensor:
        x = torch.randn(m.batch, t, heads, d, device=dev, dtype=call.dtype, generator=gen)
        return x.transpose(1, 2).requires_grad_(grad)

    q = rnd(call.n_heads, m.q_len, call.head_dim, call.requires_grad)
    k = rnd(call.n_kv_heads, m.k_len, call.head_dim, call.requires_grad)
    v = rnd(call.n_kv_heads, m.k_len, call.value_dim, call.requires_grad)
    dout = rnd(call.n_heads, m.q_len, call.value_dim, False)
    return q, k, v, dout


class Dispatcher:
    """``auto``'s memory: settings, measured choices per (environment, shape class).

    Everything it reads from the outside is injectable, for tests: ``backends()``
    (the registered backends), ``clock()`` (seconds, for timing and the budget),
    ``sync(device)``, ``device_name(device)``, ``make_inputs(call)``, the library
    versions, and ``timed_devices`` (the device types where ``auto`` measures)."""

    def __init__(
        self,
        backends: Callable[[], list[Backend]],
        *,
        clock: Callable[[], float] = time.perf_counter,
        sync: Callable[[torch.device], None] = _sync,
        device_name: Callable[[torch.device], str] = _device_name,
        make_inputs: Callable[[AttentionCall], tuple] = synthetic_inputs,
        torch_version: str | None = None,
        triton_version: str | None = None,
        timed_devices: tuple[str, ...] = ("cuda",),
    ) -> None:
        self._backends = backends
        self.clock, self.sync, self.device_name = clock, sync, device_name
        self.make_inputs = make_inputs
        self.torch_version, self.triton_version = torch_version, triton_version
        self.timed_devices = timed_devices
        self.enabled: bool | None = None  # None: HEADWISE_AUTOTUNE_BACKEND (default on)
        self.budget_ms: float | None = None  # None: HEADWISE_AUTOTUNE_BUDGET_MS (default 500)
        self.warmup = 2
        self.reps = 5
        self.cache_path: Path | None = None  # None: HEADWISE_DISPATCH_CACHE (default: none)
        self._memory: dict[str, dict[str, dict]] = {}  # environment -> class -> entry
        self._loaded: set[tuple[str, str]] = set()  # (environment, file) read from disk
        self._env_keys: dict[torch.device, str] = {}
        self._fast: dict[tuple, Backend] = {}  # the per-call path: settled calls -> backend
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- settings
    def backends(self) -> list[Backend]:
        """The backends it chooses among, highest priority first."""
        return self._backends()

    def timing_enabled(self) -> bool:
        if self.enabled is not None:
            return self.enabled
        return bool(check_switch(ENV_AUTOTUNE, os.environ.get(ENV_AUTOTUNE), True))

    def budget(self) -> float:
        if self.budget_ms is not None:
            return self.budget_ms
        return _env_budget_ms()

    def cache_file(self) -> Path | None:
        if self.cache_path is not None:
            return self.cache_path
        env = os.environ.get(ENV_CACHE)
        if not env:
            return None
        path = Path(env).expanduser()
        check_cache_file(path, f"{ENV_CACHE}={env!r}")
        return path

    def environment(self, device: torch.device) -> str:
        key = self._env_keys.get(device)
        if key is None:
            key = environment_key(self.device_name(device), self.torch_version, self.triton_version)
            self._env_keys[device] = key
        return key

    def clear(self) -> None:
        """Forget every choice held in memory (the cache file is left as it is)."""
        with self._lock:
            self._memory.clear()
            self._loaded.clear()
            self._fast.clear()

    def use_cache_file(self, path: Path | None) -> None:
        """Keep measurements in the JSON file ``path`` too (None: the environment's
        ``HEADWISE_DISPATCH_CACHE``, else memory only); the file is read afresh."""
        if path is not None:
            check_cache_file(Path(path), repr(str(path)))
        with self._lock:
            self.cache_path = path
            self._loaded.clear()

    def forget_settled(self) -> None:
        """Drop the per-call shortcut (after the backends or a choice changed)."""
        self._fast.clear()

    # ---------------------------------------------------------------- choosing
    def backend_for(self, call: AttentionCall) -> Backend:
        """The backend ``auto`` runs ``call`` with (measuring first if it may)."""
        backends = self._backends()
        if call.device.type not in self.timed_devices:
            for b in backends:  # today's rule: the first that can serve, by priority
                if _considered(b, call) and b.unsupported(call) is None:
                    return b
            raise RuntimeError("no attention backend can serve this call")  # reference serves all
        # a call whose class is settled (measured, read, pinned, or one candidate) takes
        # the shortcut: one dict lookup instead of asking every backend again
        compiling = torch.compiler.is_compiling()
        if not compiling:
            fast_key = _settled_key(call)
            settled = self._fast.get(fast_key)
            if settled is not None:
                return settled
        choice = self.choose(call, backends=backends, explain=False)
        backend = next(b for b in backends if b.name == choice.backend)
        if not compiling and choice.source != "default":
            self._fast[fast_key] = backend
        return backend

    def choose(self, call: AttentionCall, *, measure: bool = True,
               backends: list[Backend] | None = None, explain: bool = True) -> BackendChoice:
        """The choice for ``call`` with its reason; times the candidates when the
        class is new, timing is on and ``measure`` is true. ``explain=False`` leaves
        the reason of a remembered choice unwritten (the per-call path)."""
        backends = self._backends() if backends is None else backends
        servable, refused = [], {}
        for b in backends:
            if not _considered(b, call):
                refused[b.name] = f"auto does not consider it on {call.device.type}"
                continue
            reason = b.unsupported(call)
            if reason is None:
                servable.append(b)
            else:
                refused[b.name] = reason
        if not servable:
            raise RuntimeError("no attention backend can serve this call")
        if call.device.type not in self.timed_devices:
            first = servable[0]
            order = " > ".join(b.name for b in servable)
            above = [b.name for b in backends[: backends.index(first)]]
            why = "; ".join(f"{n}: {refused[n]}" for n in above)
            return BackendChoice(first.name, "priority",
                                 f"on {call.device.type} auto is not timed and takes the first "
                                 f"that can serve, by priority ({order})"
                                 + (f"; not {why}" if why else ""), errors=refused)
        timed = [b for b in servable if getattr(b, "timed_by_auto", False)]
        if len(timed) <= 1:
            only = timed[0] if timed else servable[0]
            others = [b for b in backends if getattr(b, "timed_by_auto", False) and b is not only]
            why = "; ".join(f"{b.name}: {refused.get(b.name, 'not timed')}" for b in others)
            if not timed:  # e.g. weights asked for: the first by priority, as on the CPU
                reason = f"no timed candidate can serve ({why}); {only.name} is the first by priority"
            else:
                reason = f"only {only.name} can serve" + (f" ({why})" if why else "")
            return BackendChoice(only.name, "only", reason, errors=refused)
        key = shape_class(call)
        names = [b.name for b in timed]
        if torch.compiler.is_compiling():  # traced code: what is in memory, nothing else
            env = self._env_keys.get(call.device)
            entry = None if env is None else self._memory.get(env, {}).get(key)
        else:
            env = self.environment(call.device)
            entry = self._lookup(env, key)
        if entry is not None and entry.get("choice") in names:
            if not explain:
                return BackendChoice(entry["choice"], entry.get("source", "cached"), "")
            return self._from_entry(entry, key, env)
        default = DEFAULT if DEFAULT in names else names[0]

        def fallback(why: str) -> BackendChoice:
            return BackendChoice(default, "default", f"default: nothing measured ({why})",
                                 shape_class=key, device=env)

        if not self.timing_enabled():
            return fallback(f"timing is off: {ENV_AUTOTUNE}=0 or set_backend_autotune(False)")
        busy = _not_now()
        if busy is not None:
            return fallback(busy)
        if call.device.type == "cuda" and not torch.cuda.is_available():
            return fallback("CUDA is not available to time on")
        if not measure:
            return fallback(f"the first call of this class will time {', '.join(names)}")
        with self._lock:
            entry = self._lookup(env, key)  # another thread may have measured it meanwhile
            if entry is None or entry.get("choice") not in names:
                entry = self._measure(call, timed, default)
                self._store(env, key, entry, persist=entry["complete"])
                entry = dict(entry, source="measured")
        return self._from_entry(entry, key, env)

    def pin(self, call: AttentionCall, name: str) -> None:
        """Make ``name`` auto's choice for ``call``'s class on its device (and in the
        cache file, when one is set)."""
        key, env = shape_class(call), self.environment(call.device)
        with self._lock:
            self._store(env, key, {"choice": name, "source": "pinned", "complete": True,
                                   "ms": {}, "errors": {}}, persist=True)

    # ---------------------------------------------------------------- measuring
    def _measure(self, call: AttentionCall, timed: list[Backend], default: str) -> dict:
        """Time every candidate (the default first) within the budget."""
        order = sorted(timed, key=lambda b: b.name != default)
        q, k, v, dout = self.make_inputs(call)
        mask = call.mask
        scale = 1.0 / math.sqrt(call.head_dim)
        budget_s = self.budget() / 1000.0
        spent = 0.0
        ms: dict[str, float] = {}
        first_ms: dict[str, float] = {}
        errors: dict[str, str] = {}
        over = False
        for b in order:
            def run(b=b):
                if call.requires_grad:
                    with torch.enable_grad():
                        out, _ = b.attend(q, k, v, mask, scale=scale, dropout_p=0.0, need_weights=False)
                        torch.autograd.grad(out, (q, k, v), dout)
                else:
                    with torch.no_grad():
                        b.attend(q, k, v, mask, scale=scale, dropout_p=0.0, need_weights=False)

            t0 = self.clock()
            try:  # the first call compiles and autotunes: outside the budget
                run()
                self.sync(call.device)
            except Exception as e:  # e.g. out of memory, a kernel that fails to build
                errors[b.name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                continue
            first_ms[b.name] = (self.clock() - t0) * 1000.0
            times = []
            for i in range(self.warmup + self.reps):
                if spent > budget_s:
                    over = True
                    break
                t0 = self.clock()
                run()
                self.sync(call.device)
                dt = self.clock() - t0
                spent += dt
                if i >= self.warmup:
                    times.append(dt * 1000.0)
            if over:
                if times:
                    ms[b.name] = statistics.median(times)
                break
            ms[b.name] = statistics.median(times)
        m = call.mask
        shape = [m.batch, call.n_heads, call.n_kv_heads, m.q_len, m.k_len, call.head_dim, call.value_dim]
        # a failure (out of memory, say) may not recur: such a class is not written to the file
        measured_all = not over and not errors and len(ms) == len(order)
        if over:
            choice = default
            why = (f"budget of {self.budget():.0f} ms spent after timing "
                   f"{', '.join(ms) or 'nothing'} fully; default {default}")
        elif not ms:
            choice, why = default, f"every candidate failed; default {default}"
        else:
            choice = min(ms, key=ms.get)
            why = "measured fastest"
        return {"choice": choice, "why": why, "ms": ms, "first_call_ms": first_ms,
                "errors": errors, "shape": shape, "warmup": self.warmup, "reps": self.reps,
                "complete": bool(measured_all), "source": "measured"}

    # ---------------------------------------------------------------- the caches
    def _lookup(self, env: str, key: str) -> dict | None:
        per_env = self._memory.get(env)
        if per_env is not None and key in per_env:
            return per_env[key]
        path = self.cache_file()
        if path is not None and (env, str(path)) not in self._loaded:
            with self._lock:
                self._loaded.add((env, str(path)))
                on_disk = read_cache(path).get("environments", {}).get(env, {})
                mine = self._memory.setdefault(env, {})
                for k, e in on_disk.items():
                    if isinstance(e, dict) and isinstance(e.get("choice"), str):
                        mine.setdefault(k, dict(e, source=e.get("source") if e.get("source") == "pinned"
                                                else "disk"))
            return self._memory[env].get(key)
        return None

    def _store(self, env: str, key: str, entry: dict, *, persist: bool) -> None:
        self._fast.clear()
        self._memory.setdefault(env, {})[key] = dict(entry, source="pinned" if entry.get("source") == "pinned"
                                                      else "cached")
        path = self.cache_file()
        if persist and path is not None:
            data = read_cache(path)
            data.setdefault("environments", {}).setdefault(env, {})[key] = entry
            data["version"] = CACHE_VERSION
            write_cache(path, data)

    def _from_entry(self, entry: dict, key: str, env: str) -> BackendChoice:
        source = entry.get("source", "cached")
        ms = dict(entry.get("ms", {}))
        if source == "pinned":
            reason = "pinned with pin_backend()"
        else:
            reason = entry.get("why", "measured fastest")
            if ms:
                best = min(ms.values())
                reason += ": " + ", ".join(f"{n} {t:.3f} ms" + ("" if t == best else f" (x{t / best:.2f})")
                                           for n, t in sorted(ms.items(), key=lambda kv: kv[1]))
            if entry.get("errors"):
                reason += "; failed: " + "; ".join(f"{n}: {e}" for n, e in entry["errors"].items())
            shape = entry.get("shape")
            if shape:
                reason += (f" (timed at B={shape[0]} H={shape[1]} Hkv={shape[2]} Tq={shape[3]} "
                           f"Tk={shape[4]}, {entry.get('warmup')} warm-up + {entry.get('reps')} timed calls)")
        return BackendChoice(entry["choice"], source, reason, shape_class=key, device=env,
                             times_ms=ms, errors=dict(entry.get("errors", {})),
                             complete=entry.get("complete"))


def _settled_key(call: AttentionCall) -> tuple:
    """Everything that decides auto's answer for ``call`` (at least as fine as
    :func:`shape_class` plus what the backends' ``unsupported`` reads)."""
    m = call.mask
    return (call.device, call.dtype, call.head_dim, call.value_dim, call.n_heads, call.n_kv_heads,
            m.causal, m.key_lengths is None, m.bias is None, (m.q_len - 1).bit_length(),
            (m.k_len - 1).bit_length(), call.need_weights, call.dropout_p, call.requires_grad)


def _considered(backend: Backend, call: AttentionCall) -> bool:
    devices = getattr(backend, "auto_devices", None)  # some serve a device only by name
    return devices is None or call.device.type in devices
