"""Watching heads form: the per-evaluation head record (heads.jsonl), exact across
resume, equal to what headwise.inspect computes, and drawn in the report."""

import json
import random

import pytest
import torch

from headwise.cli import main
from headwise.inspect import assign_roles, capture, head_measures, induction_scores
from headwise.inspect.timeline import (
    HEADS_FILE,
    HeadRecorder,
    attach_head_recorder,
    read_head_record,
    role_changes,
    timeline_summary,
)
from headwise.train import TrainConfig, Trainer

WORDS = "the a cat dog sat ran on under mat tree quickly slowly big small red green".split()
MEASURES = {"entropy", "normalized_entropy", "to_special", "offset_-2", "offset_-1", "offset_0", "offset_+1",
            "offset_+2"}


def _write_corpus(root):
    rng = random.Random(0)
    docs = [" ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(5))
            for _ in range(200)]
    path = root / "corpus.txt"
    path.write_text("\n".join(docs))
    return path


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    return _write_corpus(tmp_path)


def _cfg(corpus, out, **kw):
    base = dict(objective="clm", corpus=str(corpus), out=str(out), steps=8, batch_size=8, block_len=33,
                vocab_size=300, warmup=2, eval_every=4, eval_batches=1, log_every=4, checkpoint_every=4,
                dropout=0.1, model={"n_layers": 2, "d_model": 32, "n_heads": 2, "d_ff": 64, "max_len": 72},
                sanity_checks=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _train(cfg, *, resume=False, until=None, hooks=()):
    trainer = Trainer(cfg, resume=resume, progress=False)
    recorder = attach_head_recorder(trainer)
    trainer.eval_hooks.extend(hooks)
    trainer.run(until_step=until)
    return trainer, recorder


@pytest.fixture(scope="module")
def clm_run(tmp_path_factory):
    """A tiny CLM run with the recorder attached: 8 steps, evaluations at 2, 4, 6, 8."""
    root = tmp_path_factory.mktemp("clm_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope comes before conftest's one-thread fixture
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HEADWISE_CACHE", str(root / "cache"))
            return _train(_cfg(_write_corpus(root), root / "run", eval_every=2))
    finally:
        torch.set_num_threads(threads)


def test_one_row_per_evaluation_with_every_head(clm_run):
    trainer, _ = clm_run
    rows = read_head_record(trainer.run_dir)
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    val_steps = [r["step"] for r in trainer.metrics.read() if r["split"] == "val"]
    assert [r["step"] for r in rows] == val_steps
    # the run's own file, so --overwrite replaces it with the rest of the run
    assert HEADS_FILE in json.loads((trainer.run_dir / ".headwise-run.json").read_text())["entries"]
    for row in rows:
        assert [(h["layer"], h["head"]) for h in row["heads"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        for h in row["heads"]:
            assert set(h["measures"]) == MEASURES | {"induction"}  # a decoder: induction too
            assert h["role"] == (h["roles"][0] if h["roles"] else "other")


def test_measures_are_those_of_headwise_inspect(clm_run):
    trainer, recorder = clm_run
    row = read_head_record(trainer.run_dir)[-1]
    model = trainer.objective.model  # the Decoder, at the weights of the last evaluation
    assert recorder.model is model and model.training  # the recorder put it back in train mode
    tok = trainer.parts.tokenizer
    ids = trainer.parts.val.batch(list(range(min(8, len(trainer.parts.val)))))[:, :-1]  # as the decoder sees it
    model.eval()
    try:
        with torch.no_grad(), capture(model, "weights") as cap:
            model(ids)
        w = cap.stack("weights").transpose(0, 1)
        ind = induction_scores(model, n=recorder.induction_len, batch=recorder.induction_batch, seed=0,
                               bos_id=recorder.bos_id)
    finally:
        model.train()
    assert recorder.bos_id is None and recorder.induction_len == 32  # BPE: no [CLS]; fits max_len 72
    expected = head_measures(w, special=ids == tok.eos_id, causal=True)
    table = {**expected.table(), "induction": ind}
    roles = assign_roles(expected, None, ind)
    for h, r in zip(row["heads"], roles, strict=True):
        for name, value in h["measures"].items():
            assert value == pytest.approx(float(table[name][h["layer"], h["head"]]), abs=1e-6), name
        assert h["role"] == r.primary and h["roles"] == r.roles
    assert torch.equal(recorder.special, ids == tok.eos_id)  # document separators are the specials


def test_encoder_recorder_counts_cls_and_sep_and_skips_induction(mlm, tmp_path):
    ids = torch.randint(5, 120, (3, 20))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    rec = HeadRecorder(tmp_path / HEADS_FILE, mlm, ids, special_ids=[2, 3])
    row = rec.record(5)
    assert not rec.causal and not rec.induction
    with torch.no_grad(), capture(mlm, "weights") as cap:
        mlm(ids)
    expected = head_measures(cap.stack("weights").transpose(0, 1), special=(ids == 2) | (ids == 3)).table()
    assert [(h["layer"], h["head"]) for h in row["heads"]] == [(la, he) for la in range(2) for he in range(4)]
    for h in row["heads"]:
        assert set(h["measures"]) == MEASURES
        for name, value in h["measures"].items():
            assert value == pytest.approx(float(expected[name][h["layer"], h["head"]]), abs=1e-6), name
    assert read_head_record(tmp_path) == [row]


def test_induction_length_is_capped_to_the_models_max_len(decoder, tmp_path):
    rec = HeadRecorder(tmp_path / HEADS_FILE, decoder, torch.randint(0, 120, (2, 16)), bos_id=1)
    assert rec.causal and rec.induction and rec.induction_len == 23  # [bos] r r: 47 <= max_len 48
    row = rec.record(1)
    assert all("induction" in h["measures"] for h in row["heads"])


class _Killed(Exception):
    pass


def _kill_at(step):
    def hook(trainer, s):
        if s == step:
            raise _Killed(s)
    return hook


def test_a_compiled_model_is_measured_eagerly(decoder, tmp_path):
    ids = torch.randint(0, 120, (2, 16))
    plain = HeadRecorder(tmp_path / "a.jsonl", decoder, ids).measure()
    decoder.compile()  # what Trainer(compile=True) does to the objective's models
    assert HeadRecorder(tmp_path / "b.jsonl", decoder, ids).measure() == plain


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_record_is_exact_across_resume_and_training_is_undisturbed(corpus, tmp_path, objective):
    kw = dict(objective=objective, eval_every=2, steps=8)
    if objective == "mlm":
        kw.update(block_len=32, model={"n_layers": 2, "d_model": 32, "n_heads": 2, "d_ff": 64})
    whole, _ = _train(_cfg(corpus, tmp_path / "whole", **kw))
    # killed right after recording step 6 (last checkpoint: step 4), with a torn line too
    with pytest.raises(_Killed):
        _train(_cfg(corpus, tmp_path / "part", **kw), hooks=[_kill_at(6)])
    with open(tmp_path / "part" / HEADS_FILE, "a") as f:
        f.write('{"step": 7, "hea')
    resumed, _ = _train(_cfg(corpus, tmp_path / "part", **kw), resume=True)
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "step-00000004"
    a = (tmp_path / "whole" / HEADS_FILE).read_bytes()
    b = (tmp_path / "part" / HEADS_FILE).read_bytes()
    assert [r["step"] for r in read_head_record(tmp_path / "part")] == [2, 4, 6, 8]
    assert a == b
    if objective != "mlm":
        return
    # and the recorder changed nothing in training (masking and dropout draws included):
    # the same weights as a run without it
    plain = Trainer(_cfg(corpus, tmp_path / "plain", **kw), progress=False)
    plain.run()
    assert not (tmp_path / "plain" / HEADS_FILE).exists()
    for k, v in plain.objective.state_dict().items():
        assert torch.equal(v, whole.objective.state_dict()[k]), k


def test_role_changes_and_summary():
    def row(step, roles):
        return {"step": step, "heads": [{"layer": i // 2, "head": i % 2, "role": r, "roles": [r], "measures": {}}
                                        for i, r in enumerate(roles)]}

    records = [row(100, ["other", "broad", "other", "special"]),
               row(200, ["previous-token", "broad", "other", "special"]),
               row(300, ["previous-token", "broad", "induction", "other"]),
               row(400, ["previous-token", "broad", "induction", "other"])]
    ch = {(c["layer"], c["head"]): c for c in role_changes(records)}
    assert ch[(0, 0)] == {"layer": 0, "head": 0, "role": "previous-token", "since": 200, "before": "other",
                          "first": 100, "changes": 1}
    assert ch[(1, 1)]["role"] == "other" and ch[(1, 1)]["since"] == 300 and ch[(1, 1)]["before"] == "special"
    assert ch[(0, 1)]["before"] is None
    lines = timeline_summary(records).splitlines()
    # what formed comes first, in the order it formed; then what was lost
    assert lines[1:4] == ["  L0 H0 became previous-token at step 200 (was other)",
                          "  L1 H0 became induction at step 300 (was other)",
                          "  stopped being special at step 300: L1 H1"]
    assert lines[4] == "  unchanged from the first evaluation: broad L0 H1"
    assert "no head record" in timeline_summary([])


def test_report_draws_heads_over_training_and_inspect_prints_it(clm_run, tmp_path, capsys):
    trainer, _ = clm_run
    text = tmp_path / "sents.txt"
    text.write_text("the cat sat on the mat.\na dog ran under the tree.\n")
    assert main(["inspect", str(trainer.run_dir), "--text", str(text), "--out", str(tmp_path / "rep"),
                 "--examples", "1"]) == 0
    out = capsys.readouterr().out
    assert "heads over training: 4 evaluations, steps 2..8" in out
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "over training" in page
    section = page[page.index("<section id='timeline'"):]
    section = section[: section.index("</section>")]
    for layer in range(2):
        for head in range(2):
            assert section.count(f"id='tl-L{layer}H{head}'") == 1
    assert section.count("class='tl-cell'") == 4 * 4  # 4 heads x 4 evaluations
    data = json.loads(page.split('id="headwise-data">', 1)[1].split("</script>", 1)[0])
    assert data["timeline"]["steps"] == [2, 4, 6, 8]
    assert [h["id"] for h in data["timeline"]["heads"]] == ["L0H0", "L0H1", "L1H0", "L1H1"]


def test_inspect_run_without_record_still_works(corpus, tmp_path, capsys):
    trainer = Trainer(_cfg(corpus, tmp_path / "run", steps=4), progress=False)
    trainer.run()
    assert not (trainer.run_dir / HEADS_FILE).exists()
    text = tmp_path / "sents.txt"
    text.write_text("the cat sat on the mat.\n")
    assert main(["inspect", str(trainer.run_dir), "--text", str(text), "--out", str(tmp_path / "rep"),
                 "--examples", "1"]) == 0
    assert "heads over training" not in capsys.readouterr().out
    assert "<section id='timeline'" not in (tmp_path / "rep" / "report.html").read_text()


@pytest.mark.slow
def test_timeline_section_in_a_browser(encoder, wordpiece, tmp_path):
    """The page script draws the measure chart and marks the selected head's row (headless
    Chromium; skipped without it: tests/inspect/test_report_browser.py can install it)."""
    import re
    import shutil
    import subprocess

    from headwise.app.inspection import inspect_model
    from headwise.inspect.report import write_report

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium")
    result = inspect_model(encoder, ["the quick brown fox jumps over the lazy dog ."], wordpiece, keep_examples=1,
                           induction_len=8, induction_batch=2)
    rec = HeadRecorder(tmp_path / HEADS_FILE, encoder, torch.randint(5, 60, (2, 12)))
    for step in (10, 20, 30):
        rec.record(step)
    write_report(result, tmp_path / "rep", figures=False, timeline=read_head_record(tmp_path))
    page = (tmp_path / "rep" / "report.html").as_uri() + "#click=L1H2"
    done = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    status = re.search(r'<div id="status"([^>]*)>', dom).group(1)
    assert 'data-errors="0"' in status and 'data-selected="L1H2"' in status, status
    assert re.search(r'<tr class="tl-row selected" id="tl-L1H2"', dom)
    svg = re.search(r'<svg[^>]*id="tl-chart"[^>]*data-measure="offset_-1"[^>]*>(.*?)</svg>', dom, re.S)
    assert svg, "no measure chart"
    lines = re.findall(r'<polyline[^>]*>', svg.group(1))
    assert len(lines) == 8 and sum('data-head="L1H2"' in x and 'stroke-width="2.5"' in x for x in lines) == 1
    hist = re.search(r'<div class="roles" id="head-history">(.*?)</div>', dom, re.S)
    assert hist and "over training (probe batch): " in hist.group(1) and "10" in hist.group(1)  # from step 10
