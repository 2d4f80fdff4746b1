"""The tiled kernels' options: one frozen :class:`TiledOptions`, validated once.

The launchers take a :class:`TiledOptions` and hand its fields down as arguments;
nothing below them looks at the environment. A call that passes none uses the process
default, which library code sets explicitly (:func:`set_tiled_options`, or the
:func:`tiled_options` context manager for a block). The ``HEADWISE_TILED_*``
environment variables are the ``headwise`` command's way to set that default: it
parses them once at start with :meth:`TiledOptions.from_env` (which reads the mapping
it is given, never ``os.environ`` itself) and applies the result.

This module does not import Triton.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from ..checks import check_choice, check_switch

__all__ = ["TiledOptions", "get_tiled_options", "set_tiled_options", "tiled_options"]

_BWD = ("split", "fused")
_FWD = ("default", "desc", "ws")
_DKDV = ("default", "persistent")


@dataclass(frozen=True)
class TiledOptions:
    """How the tiled kernels run; every default is what a GPU measured best.

    Attributes:
        autotune: time each config of a kernel's list once per shape class and keep the
            fastest (``triton.autotune``); False runs the first config that compiles.
        bwd: ``"split"``: dK/dV, then dQ in its own pass (deterministic); ``"fused"``:
            dQ added atomically by the dK/dV pass (FlashAttention-2's scheme; slower on
            an H200 from 2k keys, and never used under
            ``torch.use_deterministic_algorithms(True)``).
        tma: move the streamed tiles with tensor descriptors (TMA, Hopper and later)
            when the tensors allow it: None (auto) on GPUs that have it; False never;
            True also under the Triton interpreter.
        fwd: the non-causal forward kernel, a bench-only candidate: ``"default"``;
            ``"desc"`` (device-side tensor descriptors); ``"ws"`` (those and a
            warp-specialised key loop).
        dkdv: ``"default"`` (one program per key tile) or ``"persistent"`` (one program
            per SM looping over the tiles; a bench-only candidate).
    """

    autotune: bool = True
    bwd: str = "split"
    tma: bool | None = None
    fwd: str = "default"
    dkdv: str = "default"

    def __post_init__(self) -> None:
        if not isinstance(self.autotune, bool):
            raise TypeError(f"autotune must be a bool, got {self.autotune!r}")
        if self.tma is not None and not isinstance(self.tma, bool):
            raise TypeError(f"tma must be None (auto), True or False, got {self.tma!r}")
        check_choice("bwd", self.bwd, _BWD)
        check_choice("fwd", self.fwd, _FWD)
        check_choice("dkdv", self.dkdv, _DKDV)

    def replace(self, **changes: object) -> TiledOptions:
        """A copy with ``changes`` (validated like the constructor's arguments)."""
        return dataclasses.replace(self, **changes)

    def op_args(self) -> tuple[bool, str, bool | None, str, str]:
        """The fields in order: the custom ops' trailing arguments."""
        return (self.autotune, self.bwd, self.tma, self.fwd, self.dkdv)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TiledOptions:
        """The options that the ``HEADWISE_TILED_*`` variables of ``environ`` select
        (unset or empty ones keep their defaults): ``HEADWISE_TILED_AUTOTUNE=0`` (no
        autotuning; ``1`` on), ``HEADWISE_TILED_BWD=fused|split``, ``HEADWISE_TILED_TMA=0``
        (off; ``1``: also in the interpreter; ``auto``), ``HEADWISE_TILED_FWD=default|desc|ws``,
        ``HEADWISE_TILED_DKDV=default|persistent``. An on/off variable also takes
        true/false, yes/no, on/off (:func:`headwise.checks.check_switch`). ``ValueError``
        names the variable and its accepted values."""
        return cls(
            autotune=check_switch("HEADWISE_TILED_AUTOTUNE", environ.get("HEADWISE_TILED_AUTOTUNE"), True),
            bwd=_env_choice(environ, "HEADWISE_TILED_BWD", "split", ("fused", "split")),
            tma=check_switch("HEADWISE_TILED_TMA", environ.get("HEADWISE_TILED_TMA"), None, also="auto"),
            fwd=_env_choice(environ, "HEADWISE_TILED_FWD", "default", _FWD),
            dkdv=_env_choice(environ, "HEADWISE_TILED_DKDV", "default", _DKDV),
        )


def _env_choice(environ: Mapping[str, str], name: str, default: str, accepted: tuple[str, ...]) -> str:
    value = environ.get(name, default)
    if value not in accepted:
        quoted = [repr(a) for a in accepted]
        raise ValueError(f"{name} must be {', '.join(quoted[:-1])} or {quoted[-1]}, got {value!r}")
    return value


_default = TiledOptions()


def get_tiled_options() -> TiledOptions:
    """The process default: what a tiled call without ``options=`` runs with."""
    return _default


def set_tiled_options(options: TiledOptions | None = None, /, **changes: object) -> TiledOptions:
    """Make ``options`` (or the current default with ``changes``) the process default;
    returns the previous default, so that a caller can put it back."""
    global _default
    if options is None:
        options = _default.replace(**changes)
    elif not isinstance(options, TiledOptions):
        raise TypeError(f"options must be a TiledOptions, got {type(options).__name__}")
    elif changes:
        options = options.replace(**changes)
    previous, _default = _default, options
    return previous


@contextmanager
def tiled_options(options: TiledOptions | None = None, /, **changes: object) -> Iterator[TiledOptions]:
    """``with tiled_options(bwd="fused"): ...``: the process default for the block
    (as :func:`set_tiled_options` takes it), restored afterwards; yields it."""
    previous = set_tiled_options(options, **changes)
    try:
        yield _default
    finally:
        set_tiled_options(previous)
