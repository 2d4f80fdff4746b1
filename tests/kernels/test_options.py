"""The tiled kernels' options (headwise.kernels.options), the autotune cache's reset and
the package's face: none of it needs Triton."""

from __future__ import annotations

import subprocess
import sys

import pytest

from headwise.kernels import (
    TiledOptions,
    get_tiled_options,
    reset_autotune_cache,
    runtime,
    set_tiled_options,
    tiled_options,
)


def test_defaults_are_the_measured_choices():
    o = TiledOptions()
    assert (o.autotune, o.bwd, o.tma, o.fwd, o.dkdv) == (True, "split", None, "default", "default")
    assert TiledOptions.from_env({}) == o
    assert o.op_args() == (True, "split", None, "default", "default")


@pytest.mark.parametrize("changes, error, words", [
    (dict(bwd="atomic"), ValueError, "bwd must be one of ['split', 'fused'], got 'atomic'"),
    (dict(fwd="fast"), ValueError, "fwd must be one of"),
    (dict(dkdv="always"), ValueError, "dkdv must be one of"),
    (dict(autotune=1), TypeError, "autotune must be a bool"),
    (dict(tma="0"), TypeError, "tma must be None (auto), True or False"),
])
def test_bad_options_are_refused_once(changes, error, words):
    with pytest.raises(error) as e:
        TiledOptions(**changes)
    assert words in str(e.value)
    with pytest.raises(error):
        TiledOptions().replace(**changes)


def test_from_env_reads_only_the_mapping_it_is_given(monkeypatch):
    monkeypatch.setenv("HEADWISE_TILED_BWD", "fused")  # never read by the library
    assert TiledOptions.from_env({}).bwd == "split"
    env = {"HEADWISE_TILED_AUTOTUNE": "0", "HEADWISE_TILED_BWD": "fused", "HEADWISE_TILED_TMA": "0",
           "HEADWISE_TILED_FWD": "ws", "HEADWISE_TILED_DKDV": "persistent"}
    assert TiledOptions.from_env(env) == TiledOptions(autotune=False, bwd="fused", tma=False,
                                                      fwd="ws", dkdv="persistent")
    assert TiledOptions.from_env({"HEADWISE_TILED_TMA": "1"}).tma is True
    assert TiledOptions.from_env({"HEADWISE_TILED_TMA": "auto"}).tma is None
    assert TiledOptions.from_env({"HEADWISE_TILED_AUTOTUNE": "1"}).autotune is True


def test_set_and_restore_the_process_default():
    start = get_tiled_options()
    try:
        previous = set_tiled_options(bwd="fused")
        assert previous == start and get_tiled_options().bwd == "fused"
        with tiled_options(TiledOptions(autotune=False), dkdv="persistent") as inside:
            assert inside == get_tiled_options() == TiledOptions(autotune=False, dkdv="persistent")
        assert get_tiled_options().bwd == "fused"
        with pytest.raises(ValueError), tiled_options(fwd="desc"):
            assert get_tiled_options().fwd == "desc"
            raise ValueError("restored even so")
        assert get_tiled_options().fwd == "default"
        with pytest.raises(TypeError, match="options must be a TiledOptions"):
            set_tiled_options({"bwd": "fused"})
    finally:
        set_tiled_options(start)
    assert get_tiled_options() == start


def test_reset_autotune_cache_empties_both_caches():
    runtime.TUNERS[("fwd", "small", False)] = object()
    runtime.FIXED[("fwd",)] = object()
    reset_autotune_cache()
    assert runtime.TUNERS == {} and runtime.FIXED == {}


def test_the_package_imports_without_triton():
    """``import headwise.kernels`` (and its options, checks and public functions' module)
    loads no Triton module."""
    code = ("import sys, headwise.kernels, headwise.kernels.tiled, headwise.kernels.inputs; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'triton'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_headwise_command_reads_the_variables_once(monkeypatch, capsys):
    """``headwise`` (cli.main) sets the process default from HEADWISE_TILED_*; a bad
    value is refused with the variable's name before any command runs."""
    from headwise.cli import main

    start = get_tiled_options()
    try:
        monkeypatch.setenv("HEADWISE_TILED_AUTOTUNE", "0")
        monkeypatch.setenv("HEADWISE_TILED_BWD", "fused")
        main(["plan"])  # refused by plan itself (no preset), after the options are set
        assert get_tiled_options() == TiledOptions(autotune=False, bwd="fused")
        capsys.readouterr()
        monkeypatch.setenv("HEADWISE_TILED_BWD", "atomic")
        assert main(["plan"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("headwise: error: HEADWISE_TILED_BWD must be 'fused' or 'split', got 'atomic'")
    finally:
        set_tiled_options(start)
