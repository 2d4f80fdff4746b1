"""Tiny training runs for the tests: a deterministic synthetic corpus and a TrainConfig
small enough that a run of a few steps takes a second or two on a CPU."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from headwise.train import TrainConfig

WORDS = "the a cat dog sat ran on under mat tree quickly slowly big small red green".split()


def write_corpus(path: Path, docs: int = 300, seed: int = 0) -> Path:
    """``docs`` lines of five short random sentences each, written to ``path``."""
    rng = random.Random(seed)
    lines = []
    for _ in range(docs):
        sents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(5)]
        lines.append(" ".join(sents))
    Path(path).write_text("\n".join(lines))
    return Path(path)


def tiny_cfg(corpus, out, **kw) -> TrainConfig:
    """A 2-layer, 32-wide run of 8 steps with evaluations and checkpoints every 4."""
    base = dict(objective="mlm", corpus=str(corpus), out=str(out), steps=8, batch_size=8, block_len=32,
                vocab_size=300, warmup=2, eval_every=4, eval_batches=2, log_every=2, checkpoint_every=4,
                dropout=0.1, model={"n_layers": 2, "d_model": 32, "n_heads": 2, "d_ff": 64},
                sanity_checks=False)
    base.update(kw)
    return TrainConfig(**base)


def tiny_cli_args(corpus, out, *extra: str) -> list[str]:
    """``headwise train`` arguments for the same tiny run."""
    return ["train", "--objective", "mlm", "--corpus", str(corpus), "--out", str(out), "--steps", "8",
            "--batch-size", "8", "--block-len", "32", "--vocab-size", "300", "--warmup", "2",
            "--eval-every", "4", "--eval-batches", "2", "--log-every", "2", "--checkpoint-every", "4",
            "--dropout", "0.1", "--model", "n_layers=2,d_model=32,n_heads=2,d_ff=64", "--no-sanity-checks",
            "--quiet", *extra]


def refused_line(argv: list[str], capsys) -> str:
    """The one error line of a refused ``headwise`` command (status 2, no traceback)."""
    from headwise.cli import main

    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 2, (status, out, err)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@contextmanager
def two_step_mlm_run(root: Path, **model) -> Iterator[Path]:
    """A headwise MLM run directory in ``root`` after 2 steps (``model`` overrides the
    tiny model's fields), with ``HEADWISE_CACHE`` in ``root`` while it is in use."""
    import pytest

    from headwise.train import Trainer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADWISE_CACHE", str(root / "cache"))
        corpus = write_corpus(root / "corpus.txt", docs=120)
        kw = {"model": {"n_layers": 2, "d_model": 32, "n_heads": 2, "d_ff": 64, **model}} if model else {}
        cfg = tiny_cfg(corpus, root / "run", steps=2, vocab_size=200, warmup=1, eval_every=2, eval_batches=1,
                       log_every=1, checkpoint_every=2, dropout=0.0, device="cpu", **kw)
        Trainer(cfg, progress=False).run()
        yield root / "run"


# the process kills itself halfway through writing a file whose name starts with NAME
# (whatever writes it, under any temporary name beside it)
_KILL_WRITING = """
import builtins, io, os, signal
from pathlib import Path
real_open = io.open
def killing_open(file, mode="r", *a, **k):
    f = real_open(file, mode, *a, **k)
    if isinstance(file, (str, os.PathLike)) and Path(file).name.startswith({name!r}) and "w" in mode:
        write = f.write
        def half_then_die(data):
            write(data[: len(data) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        f.write = half_then_die
    return f
io.open = builtins.open = killing_open
import sys
from headwise.cli import main
sys.exit(main({argv!r}))
"""


def run_killed_while_writing(name: str, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``headwise ARGV`` in a child process that SIGKILLs itself halfway through writing
    the first file whose name starts with ``name``."""
    code = _KILL_WRITING.format(name=name, argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
