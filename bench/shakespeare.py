"""headwise against nanoGPT on character-level tinyshakespeare, on the CPU, in one run.

Both train on the first 90% of the file's characters (nanoGPT's own split) and are
scored the same way afterwards: the mean per-character cross-entropy (nats) of the
last 10%, cut into every non-overlapping 64-character window (inputs
``val[64k : 64k+64]``, targets ``val[64k+1 : 64k+65]``; each scored character sees
the up to 63 before it in its window). Wall time is that of the training process,
from its start to its exit (startup, data, evaluations and checkpoints included).

    PYTHONPATH=src python bench/shakespeare.py                          # headwise only
    PYTHONPATH=src python bench/shakespeare.py --nanogpt /tmp/nanoGPT   # and nanoGPT

headwise runs ``python -m headwise train --recipe RECIPE --no-report`` on a
temporary file holding the training text (``--headwise-args`` adds flags to it, for
ablations). ``--nanogpt PATH`` names a local nanoGPT checkout, which is not modified:
its ``train.py``, ``model.py``, ``configurator.py`` and ``config/`` are copied into a
temporary folder next to ``data/shakespeare_char/{train,val}.bin, meta.pkl`` written
from the same file (its ``prepare.py`` would download), then it runs the CPU
configuration of its README. Its final checkpoint is scored with its own
``model.py`` (imported from PATH), built from the checkpoint's ``model_args``.

Skips (exit 0, with a message) when the data file is absent. The last line printed
is one JSON object; the same is written to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from headwise.app.cli_types import positive_int

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
DEFAULT_OUT = ROOT / "bench" / "results" / "shakespeare_cpu.json"
WINDOW = 64
TRAIN_FRACTION = 0.9

# nanoGPT README's "I only have a macbook" configuration (CPU, no compile)
NANOGPT_ARGS = [
    "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
    "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
    "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0",
]
NANOGPT_FILES = ("train.py", "model.py", "configurator.py")
NANOGPT_ITERS = 2000


# ---------------------------------------------------------------------- scoring
def split_text(text: str, train_fraction: float = TRAIN_FRACTION) -> tuple[str, str]:
    """``(train, val)``: the first ``int(n * train_fraction)`` characters and the rest
    (nanoGPT's ``prepare.py`` split)."""
    cut = int(len(text) * train_fraction)
    return text[:cut], text[cut:]


def windows(ids: np.ndarray | list[int], window: int = WINDOW) -> tuple[torch.Tensor, torch.Tensor]:
    """Every non-overlapping window of ``ids``: inputs ``(n, window)`` and their
    next-token targets ``(n, window)``, ``n = (len(ids) - 1) // window``; targets
    are the inputs shifted by one, so window ``k`` scores ``ids[k*window + 1 :
    (k+1)*window + 1]`` and together they score every id after the first once
    (up to a trailing remainder shorter than a window)."""
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n = (len(ids) - 1) // window
    if n < 1:
        raise ValueError(f"{len(ids)} ids hold no window of {window} inputs plus a target")
    x = ids[: n * window].view(n, window)
    y = ids[1 : n * window + 1].view(n, window)
    return x, y


@torch.no_grad()
def window_loss(logits_fn: Callable[[torch.Tensor], torch.Tensor], ids: np.ndarray | list[int],
                window: int = WINDOW, batch_size: int = 128) -> float:
    """Mean cross-entropy (nats per token) of ``logits_fn`` (``(B, T) long -> (B, T, V)``
    logits) over every non-overlapping ``window`` of ``ids`` (see :func:`windows`)."""
    x, y = windows(ids, window)
    total, count = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logits = logits_fn(xb).float()
        total += F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="sum").double().item()
        count += yb.numel()
    return total / count


# ---------------------------------------------------------------------- jobs
class Job:
    """One training process: started, waited for, timed (start to exit)."""

    def __init__(self, name: str, cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.name, self.cmd, self.cwd, self.env, self.log = name, cmd, cwd, env, log
        self.proc: subprocess.Popen | None = None
        self.wall_s = float("nan")

    def start(self, echo: bool) -> None:
        print(f"{self.name}: {shlex.join(self.cmd[1:])}", flush=True)
        out = None if echo else open(self.log, "w")  # closed in wait()
        self._out = out
        self._t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT if out else None, text=True)

    def poll(self) -> bool:
        """Whether it has exited (its time is taken at the first poll that sees it)."""
        if self.proc.poll() is None:
            return False
        if self.wall_s != self.wall_s:  # NaN: not yet recorded
            self.wall_s = time.perf_counter() - self._t0
        return True

    def wait(self) -> None:
        while not self.poll():
            time.sleep(0.05)
        code = self.proc.returncode
        if self._out is not None:
            self._out.close()
        if code != 0:
            tail = self.log.read_text()[-3000:] if self.log.is_file() else ""
            raise RuntimeError(f"{self.name} training failed (exit {code}):\n{tail}")
        print(f"{self.name}: trained in {self.wall_s:.1f} s", flush=True)


def child_env(threads: int | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


# ---------------------------------------------------------------------- headwise
def headwise_job(train_text: str, work: Path, recipe: str, extra: list[str], env: dict[str, str]) -> Job:
    corpus = work / "train.txt"
    corpus.write_text(train_text, encoding="utf-8")
    run_dir = work / "headwise-run"
    cmd = [sys.executable, "-m", "headwise", "train", "--recipe", recipe, "--corpus", str(corpus),
           "--out", str(run_dir), "--overwrite", "--quiet", "--no-report", *extra]
    return Job("headwise", cmd, work, env, work / "headwise.log")


def score_headwise(job: Job, val_text: str, recipe: str) -> dict:
    from headwise.train.reader import load_run

    run = load_run(Path(job.cmd[job.cmd.index("--out") + 1]), device="cpu")
    model = run.objective.model.eval()
    loss = window_loss(model, run.tokenizer.encode(val_text))
    return {"val_loss": loss, "wall_s": job.wall_s, "recipe": recipe,
            "args": shlex.join(job.cmd[job.cmd.index("--recipe"):]), "checkpoint": run.checkpoint.name,
            "params": sum(p.numel() for p in model.parameters())}


# ---------------------------------------------------------------------- nanoGPT
def prepare_nanogpt(src: Path, dst: Path, text: str) -> None:
    """A runnable copy of the nanoGPT checkout ``src`` in ``dst``, with the data its
    ``prepare.py`` would write (train.bin, val.bin: uint16 ids; meta.pkl)."""
    for name in NANOGPT_FILES:
        if not (src / name).is_file():
            raise FileNotFoundError(f"--nanogpt {src}: no {name}; is it a nanoGPT checkout?")
        shutil.copy2(src / name, dst / name)
    shutil.copytree(src / "config", dst / "config")
    data = dst / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    train, val = split_text(text)
    np.array([stoi[c] for c in train], dtype=np.uint16).tofile(data / "train.bin")
    np.array([stoi[c] for c in val], dtype=np.uint16).tofile(data / "val.bin")
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump(meta, f)


def nanogpt_args(iters: int) -> list[str]:
    args = list(NANOGPT_ARGS)
    if iters != NANOGPT_ITERS:
        args = [a for a in args if not a.startswith(("--max_iters=", "--lr_decay_iters="))]
        args += [f"--max_iters={iters}", f"--lr_decay_iters={iters}"]
        if iters < 250:  # it checkpoints at its evaluations, every 250 iterations
            args.append(f"--eval_interval={iters}")
    return args


def nanogpt_job(src: Path, text: str, work: Path, iters: int, env: dict[str, str]) -> Job:
    dst = work / "nanogpt"
    dst.mkdir()
    prepare_nanogpt(src, dst, text)
    cmd = [sys.executable, "train.py", *nanogpt_args(iters), f"--out_dir={dst / 'out'}"]
    return Job("nanoGPT", cmd, dst, env, work / "nanogpt.log")


def score_nanogpt(job: Job, src: Path, val_text: str) -> dict:
    # its own model.py, from the checkout
    spec = importlib.util.spec_from_file_location("nanogpt_model", src / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ckpt = torch.load(job.cwd / "out" / "ckpt.pt", map_location="cpu", weights_only=False)
    model = module.GPT(module.GPTConfig(**ckpt["model_args"]))
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state)
    model.eval()
    with open(job.cwd / "data" / "shakespeare_char" / "meta.pkl", "rb") as f:
        stoi = pickle.load(f)["stoi"]
    # with targets nanoGPT's forward returns the logits of every position
    loss = window_loss(lambda x: model(x, torch.zeros_like(x))[0], [stoi[c] for c in val_text])
    return {"val_loss": loss, "wall_s": job.wall_s, "iter": int(ckpt["iter_num"]),
            "args": shlex.join(job.cmd[1:-1]), "params": sum(p.numel() for p in model.parameters())}


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tinyshakespeare.txt")
    p.add_argument("--nanogpt", type=Path, default=None, help="a local nanoGPT checkout (not modified)")
    p.add_argument("--recipe", default="shakespeare-char", help="headwise train --recipe")
    p.add_argument("--headwise-args", default="", help="more `headwise train` flags (ablations)")
    p.add_argument("--no-headwise", action="store_true", help="run only nanoGPT")
    p.add_argument("--iters", type=positive_int, default=NANOGPT_ITERS,
                   help=f"nanoGPT's max_iters (= lr_decay_iters; its README: {NANOGPT_ITERS}); headwise's "
                        "recipe steps are scaled by the same factor unless --headwise-args sets --steps")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="OMP_NUM_THREADS for both trainings (default: torch's choice)")
    p.add_argument("--concurrent", action="store_true",
                   help="train both at the same time (each timed on its own), so that both see the same "
                        "background load; use with --threads 1 on a 2-core machine")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--verbose", action="store_true", help="show the training output")
    args = p.parse_args(argv)
    if not args.data.is_file():
        print(f"SKIP: data file {args.data} is absent (pass --data PATH to tinyshakespeare.txt)")
        return 0
    if args.nanogpt is not None and not args.nanogpt.is_dir():
        p.error(f"--nanogpt {args.nanogpt}: not a directory")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    text = args.data.read_text(encoding="utf-8")
    train_text, val_text = split_text(text)
    extra = shlex.split(args.headwise_args)
    if args.iters != NANOGPT_ITERS and "--steps" not in extra:
        from headwise.train.recipes import RECIPES

        extra += ["--steps", str(max(1, round(RECIPES[args.recipe]["steps"] * args.iters / NANOGPT_ITERS)))]
    env = child_env(args.threads)
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="headwise-shakespeare-") as tmp:
        work = Path(tmp)
        jobs: list[Job] = []
        if args.nanogpt is not None:
            jobs.append(nanogpt_job(args.nanogpt.resolve(), text, work, args.iters, env))
        if not args.no_headwise:
            jobs.append(headwise_job(train_text, work, args.recipe, extra, env))
        if args.concurrent:
            for job in jobs:
                job.start(args.verbose)
            while not all([job.poll() for job in jobs]):  # a list: poll every job each time
                time.sleep(0.05)
            for job in jobs:
                job.wait()
        else:
            for job in jobs:
                job.start(args.verbose)
                job.wait()
        for job in jobs:
            if job.name == "nanoGPT":
                result["nanogpt"] = score_nanogpt(job, args.nanogpt.resolve(), val_text)
            else:
                result["headwise"] = score_headwise(job, val_text, args.recipe)
            r = result["nanogpt" if job.name == "nanoGPT" else "headwise"]
            print(f"{job.name}: val loss {r['val_loss']:.4f} in {r['wall_s']:.1f} s", flush=True)
    report = {**{k: result[k] for k in ("headwise", "nanogpt") if k in result},
              "meta": {"data": str(args.data), "val_chars": len(val_text), "window": WINDOW,
                       "windows": (len(val_text) - 1) // WINDOW, "iters": args.iters,
                       "threads": args.threads, "concurrent": args.concurrent, "torch": torch.__version__,
                       "cpu": _cpu_name(), "cpus": os.cpu_count(),
                       "load_avg_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                       "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}}
    if "headwise" in result and "nanogpt" in result:
        report["gap"] = result["nanogpt"]["val_loss"] - result["headwise"]["val_loss"]
        report["time_ratio"] = result["headwise"]["wall_s"] / result["nanogpt"]["wall_s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
