"""backend="auto" by measurement (headwise.attention.backends.dispatch), on the CPU.

A Dispatcher is built here with fake backends and a fake clock that the backends
advance by their own cost, and told to time on the CPU: the choice, the in-memory
and on-disk caches (keyed by device name and versions), the budget, the defaults
and the explanations are checked without a GPU. The global dispatcher keeps the
CPU's priority rule.
"""

from __future__ import annotations

import json

import pytest
import torch

import headwise.attention as A
from headwise.attention.backends import DISPATCHER, AttentionCall, Backend, get_backend
from headwise.attention.backends.dispatch import Dispatcher, shape_class, synthetic_inputs
from headwise.attention.masks import MaskSpec
from headwise.kernels import set_tiled_options


class Clock:
    """Seconds that pass only when a fake backend runs."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Fake(Backend):
    def __init__(self, name, priority, ms, clock, *, first_ms=0.0, refuse=None, fail=False,
                 timed=True):
        self.name, self.priority, self.ms, self.clock = name, priority, ms, clock
        self.first_ms, self.refuse, self.fail, self.timed_by_auto = first_ms, refuse, fail, timed
        self.calls = 0

    def unsupported(self, call):
        return self.refuse(call) if callable(self.refuse) else self.refuse

    def attend(self, q, k, v, mask, *, scale, dropout_p, need_weights):
        self.calls += 1
        if self.fail:
            raise RuntimeError("kernel failed to build\nsecond line")
        self.clock.t += (self.first_ms if self.calls == 1 else self.ms) / 1000.0
        out = q * scale + 0.0 * (k.sum() + v.sum())
        return out, None


def make(ms_sdpa=2.0, ms_tiled=1.0, *, tmp_path=None, name="Fake GPU", torch_version="2.99",
         **kw):
    clock = Clock()
    backends = [Fake("tiled", 30, ms_tiled, clock, first_ms=kw.pop("tiled_first_ms", 0.0),
                     fail=kw.pop("tiled_fail", False), refuse=kw.pop("tiled_refuse", None)),
                Fake("sdpa", 20, ms_sdpa, clock),
                Fake("math", 10, 50.0, clock, timed=False)]
    d = Dispatcher(lambda: backends, clock=clock, sync=lambda dev: None,
                   device_name=lambda dev: name, torch_version=torch_version,
                   triton_version="3.99", timed_devices=("cpu",))
    d.enabled = True
    if tmp_path is not None:
        d.cache_path = tmp_path / "dispatch.json"
    for key, value in kw.items():
        setattr(d, key, value)
    return d, {b.name: b for b in backends}


def call(tk=100, tq=None, *, causal=True, grad=True, dtype=torch.float32, d=16, **kw):
    tq = tk if tq is None else tq
    base = dict(dtype=dtype, device=torch.device("cpu"), head_dim=d, value_dim=d, n_heads=2,
                n_kv_heads=2, mask=MaskSpec(1, tq, tk, causal=causal), need_weights=False,
                dropout_p=0.0, requires_grad=grad)
    base.update(kw)
    return AttentionCall(**base)


@pytest.fixture
def global_dispatcher():
    """The real dispatcher, restored (settings and memory) after the test."""
    saved = (DISPATCHER.enabled, DISPATCHER.budget_ms, DISPATCHER.warmup, DISPATCHER.reps,
             DISPATCHER.cache_path)
    DISPATCHER.clear()
    yield DISPATCHER
    (DISPATCHER.enabled, DISPATCHER.budget_ms, DISPATCHER.warmup, DISPATCHER.reps,
     DISPATCHER.cache_path) = saved
    DISPATCHER.clear()


# ------------------------------------------------------------------ the choice
@pytest.mark.parametrize("ms_sdpa, ms_tiled, want", [(2.0, 1.0, "tiled"), (1.0, 3.0, "sdpa")])
def test_auto_takes_the_backend_measured_fastest(ms_sdpa, ms_tiled, want):
    d, fakes = make(ms_sdpa, ms_tiled)
    choice = d.choose(call())
    assert choice.backend == want and choice.source == "measured"
    assert choice.times_ms == pytest.approx({"sdpa": ms_sdpa, "tiled": ms_tiled})
    assert "measured fastest" in choice.reason and "x2.00" in choice.reason or "x3.00" in choice.reason
    # one first call + warm-up + timed calls each; math (not timed_by_auto) never runs
    assert fakes["sdpa"].calls == fakes["tiled"].calls == 1 + d.warmup + d.reps
    assert fakes["math"].calls == 0
    assert d.backend_for(call()).name == want  # the same class again: from memory
    again = d.choose(call())
    assert again.source == "cached" and again.backend == want
    assert fakes["sdpa"].calls == 1 + d.warmup + d.reps


def test_the_per_call_shortcut_follows_a_new_choice():
    d, fakes = make(2.0, 1.0)
    assert d.backend_for(call()).name == "tiled"
    assert d.backend_for(call(tk=90)).name == "tiled"  # same class: the shortcut
    d.pin(call(), "sdpa")
    assert d.backend_for(call()).name == "sdpa"
    d.clear()
    d.enabled = False  # defaults are not settled: timing on again measures
    assert d.backend_for(call()).name == "sdpa"
    d.enabled = True
    assert d.backend_for(call()).name == "tiled"


def test_the_first_call_is_not_timed():
    """Compilation and autotuning (the first call) do not count against a candidate."""
    d, _ = make(2.0, 1.0, tiled_first_ms=10_000.0)
    choice = d.choose(call())
    assert choice.backend == "tiled"


def test_inference_and_training_are_timed_apart_and_inputs_follow_the_call():
    seen = []

    def inputs(c):
        q, k, v, dout = synthetic_inputs(c)
        seen.append((c.requires_grad, q.requires_grad, tuple(q.shape), q.stride()))
        return q, k, v, dout

    d, fakes = make()
    d.make_inputs = inputs
    rng = torch.random.get_rng_state()
    d.choose(call(tk=40, tq=24, grad=True))
    d.choose(call(tk=40, tq=24, grad=False))
    assert torch.equal(rng, torch.random.get_rng_state())  # a private generator
    assert [s[:2] for s in seen] == [(True, True), (False, False)]
    b, h, t, dim = 1, 2, 24, 16
    assert seen[0][2] == (b, h, t, dim)
    assert seen[0][3] == (t * h * dim, dim, h * dim, 1)  # (B, H, T, D) view of (B, T, H, D)


def test_shape_classes_bucket_lengths_to_powers_of_two():
    assert shape_class(call(tk=600)) == shape_class(call(tk=1000))
    assert shape_class(call(tk=1000)) != shape_class(call(tk=1100))
    assert shape_class(call(tk=1000, tq=1)) != shape_class(call(tk=1000))
    keys = {shape_class(c) for c in (call(), call(causal=False), call(grad=False),
                                     call(dtype=torch.bfloat16), call(d=32),
                                     call(n_kv_heads=1),
                                     call(mask=MaskSpec(1, 100, 100, key_lengths=torch.tensor([9]))))}
    assert len(keys) == 7
    assert shape_class(call(dtype=torch.bfloat16, tk=4096)) == \
        "bfloat16 d16/16 causal q4096 k4096 mha training"
    d, fakes = make()
    d.choose(call(tk=600))
    n = fakes["sdpa"].calls
    assert d.choose(call(tk=1000)).source == "cached" and fakes["sdpa"].calls == n
    d.choose(call(tk=1100))
    assert fakes["sdpa"].calls > n


def test_a_failing_candidate_is_reported_and_skipped(tmp_path):
    d, _ = make(2.0, 1.0, tiled_fail=True, tmp_path=tmp_path)
    choice = d.choose(call())
    assert choice.backend == "sdpa" and not choice.complete
    assert "kernel failed to build" in choice.errors["tiled"]
    assert "second line" not in choice.errors["tiled"]
    assert "failed: tiled" in choice.reason
    assert not (tmp_path / "dispatch.json").exists()  # it may not fail next time


# ------------------------------------------------------------------ the budget
def test_budget_stops_timing_and_falls_back_to_sdpa(tmp_path):
    # sdpa first (the default), 100 ms a call: the 250 ms budget is gone after three
    d, fakes = make(100.0, 1.0, tmp_path=tmp_path, budget_ms=250.0)
    choice = d.choose(call())
    assert choice.backend == "sdpa" and "budget of 250 ms spent" in choice.reason
    assert fakes["sdpa"].calls == 1 + 3 and fakes["tiled"].calls == 0
    # kept in memory (not timed again in this process), not written to the file
    assert d.choose(call()).source == "cached" and fakes["sdpa"].calls == 4
    assert not (tmp_path / "dispatch.json").exists()


def test_budget_counts_every_candidate():
    # 7 calls of sdpa (14 ms) fit in 19.5 ms; tiled's stop after 6 of its 7 (20 ms):
    # the budget is checked before each call
    d, fakes = make(2.0, 1.0, budget_ms=19.5)
    choice = d.choose(call())
    assert choice.backend == "sdpa" and "budget" in choice.reason
    assert fakes["tiled"].calls == 1 + 6
    d, fakes = make(2.0, 1.0, budget_ms=21.0)
    assert d.choose(call()).backend == "tiled"


def test_budget_from_the_environment(monkeypatch):
    d, _ = make()
    monkeypatch.setenv("HEADWISE_AUTOTUNE_BUDGET_MS", "3")
    assert d.budget() == 3.0
    assert d.choose(call()).backend == "sdpa"


# ------------------------------------------------------------------ defaults
def test_sdpa_when_timing_is_off(monkeypatch):
    d, fakes = make(2.0, 1.0)
    d.enabled = None
    monkeypatch.setenv("HEADWISE_AUTOTUNE_BACKEND", "0")
    choice = d.choose(call())
    assert choice.backend == "sdpa" and choice.source == "default"
    assert "nothing measured" in choice.reason and "timing is off" in choice.reason
    assert fakes["sdpa"].calls == fakes["tiled"].calls == 0
    monkeypatch.setenv("HEADWISE_AUTOTUNE_BACKEND", "1")
    assert d.choose(call()).backend == "tiled"
    d.clear()
    d.enabled = False  # the API switch wins over the environment
    assert d.choose(call()).backend == "sdpa"


def test_never_timed_while_compiling_but_the_cached_choice_holds(monkeypatch):
    d, fakes = make(2.0, 1.0)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    choice = d.choose(call())
    assert choice.backend == "sdpa" and "torch.compile" in choice.reason
    assert fakes["tiled"].calls == 0
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    d.choose(call())
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert d.choose(call()).backend == "tiled"


def test_measure_false_times_nothing():
    d, fakes = make(2.0, 1.0)
    choice = d.choose(call(), measure=False)
    assert choice.backend == "sdpa" and "first call of this class will time" in choice.reason
    assert fakes["tiled"].calls == 0


def test_one_candidate_is_used_without_timing():
    d, fakes = make(2.0, 1.0, tiled_refuse=lambda c: "dense bias" if c.mask.bias is not None else None)
    bias = torch.zeros(1, 1, 100, 100)
    choice = d.choose(call(mask=MaskSpec(1, 100, 100, bias=bias)))
    assert choice.backend == "sdpa" and choice.source == "only"
    assert "only sdpa can serve (tiled: dense bias)" in choice.reason
    assert fakes["sdpa"].calls == 0


def test_devices_not_timed_go_by_priority():
    d, fakes = make(2.0, 1.0)
    d.timed_devices = ("cuda",)
    assert d.backend_for(call()).name == "tiled"  # the fakes have no auto_devices
    choice = d.choose(call())
    assert choice.source == "priority" and "tiled > sdpa > math" in choice.reason
    assert fakes["tiled"].calls == 0


# ------------------------------------------------------------------ the file
def test_disk_cache_round_trip_keyed_by_device_and_versions(tmp_path):
    d, fakes = make(2.0, 1.0, tmp_path=tmp_path)
    assert d.choose(call()).backend == "tiled"
    data = json.loads((tmp_path / "dispatch.json").read_text())
    env = "Fake GPU | torch 2.99 | triton 3.99"
    assert list(data["environments"]) == [env]
    entry = data["environments"][env][shape_class(call())]
    assert entry["choice"] == "tiled" and entry["ms"] == pytest.approx({"sdpa": 2.0, "tiled": 1.0})
    assert entry["shape"] == [1, 2, 2, 100, 100, 16, 16]

    # a fresh process (dispatcher) on the same GPU and versions reads it: no timing
    d2, fakes2 = make(5.0, 9.0, tmp_path=tmp_path)
    choice = d2.choose(call())
    assert choice.backend == "tiled" and choice.source == "disk"
    assert fakes2["tiled"].calls == fakes2["sdpa"].calls == 0
    # another GPU, or other versions: measured again, both kept in the file
    for other in (dict(name="Other GPU"), dict(torch_version="3.0")):
        d3, fakes3 = make(1.0, 9.0, tmp_path=tmp_path, **other)
        assert d3.choose(call()).backend == "sdpa" and fakes3["sdpa"].calls > 0
    data = json.loads((tmp_path / "dispatch.json").read_text())
    assert len(data["environments"]) == 3
    assert data["environments"][env][shape_class(call())]["choice"] == "tiled"


def test_disk_cache_from_the_environment_and_a_broken_file(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "cache.json"
    monkeypatch.setenv("HEADWISE_DISPATCH_CACHE", str(path))
    d, _ = make()
    assert d.cache_file() == path
    d.choose(call())
    assert path.exists()
    path.write_text("{not json")  # not a file headwise wrote (it writes whole files): refused, left as it is
    d2, fakes2 = make()
    with pytest.raises(ValueError, match="HEADWISE_DISPATCH_CACHE=.* is a file headwise did not write"):
        d2.choose(call())
    assert path.read_text() == "{not json"
    path.write_text(json.dumps({"version": 0, "environments": {}}))  # another version of its own: rewritten
    assert make()[0].choose(call()).source == "measured"
    assert json.loads(path.read_text())["version"] == 1


# ------------------------------------------------------------------ the public API
def test_cpu_auto_keeps_the_priority_rule(global_dispatcher):
    c = call(device=torch.device("cpu"))
    assert get_backend("auto", c).name == "sdpa"
    assert get_backend("auto", call(need_weights=True)).name == "math"
    choice = A.explain_backend(c)
    assert choice.backend == "sdpa" and choice.source == "priority"
    assert "tiled: auto does not consider it on cpu" in choice.reason


def test_explain_backend_takes_layer_inputs_tensors_or_a_call(global_dispatcher, capsys):
    layer = A.MultiHeadAttention(32, 4, n_kv_heads=2)
    x = torch.randn(2, 7, 32)
    choice = A.explain_backend(layer, x, causal=True, show=True)
    assert choice.backend == "sdpa" and "sdpa (priority)" in capsys.readouterr().out
    assert A.explain_backend(layer, x, need_weights=True).backend == "math"
    layer.register_head_hook(lambda *a: None, need_weights=True)
    assert A.explain_backend(layer, x).backend == "math"  # a hook that wants the weights
    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    assert A.explain_backend(q, k, v, causal=True).backend == "sdpa"
    mask = MaskSpec(1, 5, 6, causal=True)
    assert A.explain_backend(q, k, v, mask, need_weights=True).backend == "math"
    named = A.explain_backend(q, k, v, backend="reference")
    assert named.source == "named" and "auto is not consulted" in named.reason
    with pytest.raises(ValueError, match="cannot serve"):
        A.explain_backend(q, k, v, backend="sdpa", need_weights=True)
    cuda_call = call(device=torch.device("cuda"), dtype=torch.bfloat16)
    if not torch.cuda.is_available():
        choice = A.explain_backend(cuda_call)
        assert choice.backend == "sdpa" and "nothing measured" in choice.reason
    with pytest.raises(TypeError, match="expected an AttentionCall"):
        A.explain_backend("x")


def test_explain_backend_builds_the_call_the_layer_makes(global_dispatcher, monkeypatch):
    """The AttentionCall explain_backend derives from a layer call is the one the
    layer hands to get_backend."""
    import headwise.attention.functional as functional

    seen = []
    real = functional.get_backend
    monkeypatch.setattr(functional, "get_backend", lambda name, c: (seen.append(c), real(name, c))[1])
    from headwise.attention.explain import _layer_call

    layer = A.MultiHeadAttention(32, 4, n_kv_heads=2, dropout=0.1)
    x, ctx = torch.randn(2, 7, 32), torch.randn(2, 9, 32)
    cache = A.KVCache()
    lens = torch.tensor([5, 7])
    for args, kw in [((x,), dict(causal=True, key_lengths=lens)), ((x, ctx), {}),
                     ((x,), dict(kv_cache=cache, causal=True))]:
        for train in (True, False):
            layer.train(train)
            with torch.no_grad() if not train else torch.enable_grad():
                want = _layer_call(layer, *args, **kw)
                layer(*args, **kw)
            got = seen.pop()
            assert (got.dtype, got.head_dim, got.n_heads, got.n_kv_heads, got.need_weights,
                    got.dropout_p, got.requires_grad) == \
                   (want.dtype, want.head_dim, want.n_heads, want.n_kv_heads, want.need_weights,
                    want.dropout_p, want.requires_grad)
            assert (got.mask.batch, got.mask.q_len, got.mask.causal) == \
                   (want.mask.batch, want.mask.q_len, want.mask.causal)
            assert shape_class(got) == shape_class(want)
        cache.reset()


def test_pin_backend_fixes_the_choice_on_cuda(global_dispatcher, tmp_path):
    A.set_dispatch_cache(tmp_path / "c.json")
    cuda_call = call(device=torch.device("cuda"), dtype=torch.bfloat16)
    choice = A.pin_backend("tiled", cuda_call)
    assert choice.backend == "tiled" and choice.source == "pinned"
    assert get_backend("auto", cuda_call).name == "tiled"
    assert "pinned" in A.explain_backend(cuda_call).reason
    data = json.loads((tmp_path / "c.json").read_text())
    (env,) = data["environments"]
    assert "| torch " in env and "| triton " in env
    A.clear_dispatch_cache()  # memory gone; the file still holds the pin
    assert A.explain_backend(cuda_call, measure=False).source == "pinned"
    with pytest.raises(ValueError, match="cannot serve"):
        A.pin_backend("tiled", call(device=torch.device("cuda"), need_weights=True))
    with pytest.raises(ValueError, match="goes by priority"):
        A.pin_backend("math", call())


def test_set_backend_autotune(global_dispatcher, monkeypatch):
    monkeypatch.delenv("HEADWISE_AUTOTUNE_BACKEND", raising=False)
    assert A.set_backend_autotune()["enabled"] is True
    s = A.set_backend_autotune(False, budget_ms=50, warmup=1, reps=3)
    assert s == {"enabled": False, "budget_ms": 50.0, "warmup": 1, "reps": 3}
    for bad in (dict(budget_ms=-1), dict(reps=0), dict(warmup=1.5)):
        with pytest.raises(ValueError):
            A.set_backend_autotune(**bad)


def test_dispatch_traces_under_torch_compile(global_dispatcher, monkeypatch):
    """With a choice cached, auto's lookup is traced by dynamo without a graph break
    (the dispatcher is told to time on the CPU here, so the lookup path runs)."""
    monkeypatch.setattr(global_dispatcher, "timed_devices", ("cpu",))
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))
    mask = MaskSpec(1, 8, 8, causal=True)
    A.pin_backend("sdpa", AttentionCall.of(q, k, v, mask))

    def f(q, k, v):
        return A.attend(q, k, v, mask)[0]

    got = torch.compile(f, backend="eager", fullgraph=True)(q, k, v)
    torch.testing.assert_close(got, f(q, k, v))


def test_nothing_is_timed_under_torch_compile(global_dispatcher, monkeypatch):
    """A class first seen while dynamo traces gets sdpa, and nothing runs to time it."""
    monkeypatch.setattr(global_dispatcher, "timed_devices", ("cpu",))
    global_dispatcher.enabled = True
    monkeypatch.setattr(global_dispatcher, "make_inputs", lambda c: pytest.fail("timed while tracing"))
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))
    mask = MaskSpec(1, 8, 8, causal=True)

    def f(q, k, v):
        return A.attend(q, k, v, mask)[0]

    got = torch.compile(f, backend="eager", fullgraph=True)(q, k, v)
    torch.testing.assert_close(got, torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))


# ------------------------------------------------------------------ on the GPU
def _cuda_qkv(b=2, h=4, t=256, d=64, grad=True, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(b, t, h, d, device="cuda", dtype=torch.bfloat16, generator=g)
            .transpose(1, 2).requires_grad_(grad) for _ in range(3)]


@pytest.mark.gpu
def test_gpu_auto_times_sdpa_and_tiled_and_the_file_keeps_it(tmp_path, request):
    previous = set_tiled_options(autotune=False)  # one tiled config: a quick compile
    request.addfinalizer(lambda: set_tiled_options(previous))
    d = Dispatcher(DISPATCHER.backends)  # the real backends, clock and synchronisation
    d.enabled, d.cache_path = True, tmp_path / "cache.json"
    q, k, v = _cuda_qkv()
    call_ = AttentionCall.of(q, k, v, MaskSpec(2, 256, 256, causal=True))
    rng = torch.cuda.get_rng_state()
    choice = d.choose(call_)
    assert torch.equal(rng, torch.cuda.get_rng_state())
    assert choice.source == "measured" and choice.complete, choice
    assert set(choice.times_ms) == {"sdpa", "tiled"}
    assert choice.backend == min(choice.times_ms, key=choice.times_ms.get)
    assert torch.cuda.get_device_name() in choice.device
    fresh = Dispatcher(DISPATCHER.backends)
    fresh.cache_path = d.cache_path
    again = fresh.choose(call_, measure=False)
    assert (again.backend, again.source) == (choice.backend, "disk")


@pytest.mark.gpu
def test_gpu_no_timing_under_compile_or_graph_capture(global_dispatcher):
    global_dispatcher.enabled = True
    q, k, v = _cuda_qkv(t=384, grad=False, seed=1)
    mask = MaskSpec(2, 384, 384)

    def f(q, k, v):
        return A.attend(q, k, v, mask)[0]

    want = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    got = torch.compile(f, backend="eager", fullgraph=True)(q, k, v)
    torch.testing.assert_close(got, want)
    assert A.explain_backend(q, k, v, mask, measure=False).source == "default"
    # CUDA graph capture of a class never measured: sdpa, nothing timed
    q2, k2, v2 = _cuda_qkv(t=640, grad=False, seed=2)
    mask2 = MaskSpec(2, 640, 640)
    with torch.no_grad():
        A.attend(q2, k2, v2, mask2, backend="sdpa")  # warm sdpa up outside the capture
        global_dispatcher.clear()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = A.attend(q2, k2, v2, mask2)[0]
        graph.replay()
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q2, k2, v2))
    assert A.explain_backend(q2, k2, v2, mask2, measure=False).source == "default"
