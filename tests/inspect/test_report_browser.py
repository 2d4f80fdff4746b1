"""The report page in a real browser: headless Chromium loads report.html, selects a
head through the page's own click handler (``#click=L1H2``) and the dump of the DOM
must show that head's panel, its heatmap on the chosen sentence, and no JavaScript
error. Needs Debian's ``chromium``; skipped with the reason when it cannot be had."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from headwise.app.inspection import inspect_model
from headwise.inspect import parse_conllu
from headwise.inspect.report import write_report

pytestmark = pytest.mark.slow

CONLLU = """# sent_id = 1
1	the	the	DET	_	_	2	det	_	_
2	cat	cat	NOUN	_	_	3	nsubj	_	_
3	sat	sit	VERB	_	_	0	root	_	_
4	.	.	PUNCT	_	_	3	punct	_	_

# sent_id = 2
1	a	a	DET	_	_	3	det	_	_
2	big	big	ADJ	_	_	3	amod	_	_
3	dog	dog	NOUN	_	_	4	nsubj	_	_
4	ran	run	VERB	_	_	0	root	_	_
5	under	under	ADP	_	_	7	case	_	_
6	the	the	DET	_	_	7	det	_	_
7	tree	tree	NOUN	_	_	4	obl	_	_
8	.	.	PUNCT	_	_	4	punct	_	_

# sent_id = 3
1	the	the	DET	_	_	2	det	_	_
2	dog	dog	NOUN	_	_	3	nsubj	_	_
3	sat	sit	VERB	_	_	0	root	_	_
4	quickly	quickly	ADV	_	_	3	advmod	_	_
5	.	.	PUNCT	_	_	3	punct	_	_
"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--enable-logging=stderr", "--v=0"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip("no chromium and no apt-get to install it")
    try:
        done = subprocess.run([apt, "install", "-y", "chromium"], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"no chromium; `apt-get install -y chromium` failed: {e}")
    if done.returncode != 0 or not Path("/usr/bin/chromium").exists():
        pytest.skip(f"no chromium; `apt-get install -y chromium` failed: {done.stderr.strip()[-300:]}")
    return "/usr/bin/chromium"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    import torch

    from headwise.data import train_tokenizer
    from headwise.models import Encoder, ModelConfig

    sents = parse_conllu(CONLLU)
    tok = train_tokenizer([" ".join(s.words) for s in sents] * 5, "wordpiece", vocab_size=60, min_frequency=1)
    torch.manual_seed(0)
    model = Encoder(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                                max_len=48)).eval()
    result = inspect_model(model, sents * 4, tok, keep_examples=3, induction_len=8, induction_batch=2)
    out = tmp_path_factory.mktemp("report")
    write_report(result, out, figures=False)
    return out / "report.html"


def _dump(page: Path, fragment: str, tmp_path: Path) -> tuple[str, str]:
    exe = _chromium()
    cmd = [exe, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri() + fragment]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("chromium --dump-dom did not finish in 120 s")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def _status(dom: str) -> dict[str, str]:
    m = re.search(r'<div id="status"([^>]*)>', dom)
    assert m, "no #status element in the rendered page"
    return dict(re.findall(r'(data-[\w-]+)="([^"]*)"', m.group(1)))


def test_clicking_a_head_renders_its_panel_without_errors(report, tmp_path):
    dom, log = _dump(report, "#click=L1H2&sentence=1", tmp_path)
    assert 'data-ready="1"' in dom, "the page script did not finish"
    status = _status(dom)
    assert status["data-errors"] == "0", re.search(r'<div id="status"[^>]*>(.*?)</div>', dom, re.S).group(1)
    assert status["data-selected"] == "L1H2" and status["data-sentence"] == "1"
    assert re.search(r'<section id="panel" data-head="L1H2">', dom)
    assert "Layer 1, head 2 (L1H2)" in dom
    assert re.search(r'<td class="cell selected" id="cell-L1H2"', dom)
    svg = re.search(r'<svg[^>]*id="heatmap"[^>]*data-head="L1H2"[^>]*>(.*?)</svg>', dom, re.S)
    assert svg, "no heatmap for the selected head"
    n = len(parse_conllu(CONLLU)[1].words)
    assert svg.group(1).count("<rect") >= n * n  # sentence 1's map: at least one cell per word pair
    for part in ("Best relations in the syntax probe", "Role evidence", "Measures", "normalized_entropy"):
        assert part in dom, part
    # chromium logs uncaught errors and console.error calls from the page
    bad = [line for line in log.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
    assert not bad, bad


def test_select_hash_and_every_head_selectable(report, tmp_path):
    dom, _ = _dump(report, "#select=L0H3", tmp_path)
    status = _status(dom)
    assert status["data-errors"] == "0" and status["data-selected"] == "L0H3"
    cells = re.findall(r'id="cell-(L\d+H\d+)"', dom)
    assert len(cells) == 8 and len(set(cells)) == 8
