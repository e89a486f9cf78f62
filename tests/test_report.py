"""REPORT.md and the notebooks' "What we found": every number they cite matches the committed result
files (dgstudy.citations), and the check catches an edited number or table."""
from __future__ import annotations

import json
import re

import pytest

from conftest import REPO
from dgstudy.citations import check_markdown, citations, fill_citations, fill_tables, notebook_markdown

REPORT = REPO / "REPORT.md"
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXECUTED_BASE = REPO / "results" / "osie"     # notebook links are relative to their executed copy


# -- the checker itself, on files made here ---------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    (tmp_path / "t.csv").write_text("model,metric,value,lo\nA,IG,1.89357,-0.0261\nB,IG,0.81391,0.5\n")
    (tmp_path / "p.json").write_text(json.dumps({"m": {"IG": 1.9140452, "explained_IG": 0.8227}}))
    (tmp_path / "r.json").write_text(json.dumps([{"condition": "x y", "IG": 2.0441}]))
    (tmp_path / "t.md").write_text("# title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    return tmp_path


def test_checker_accepts_correct_citations(files):
    text = ('IG [1.894](t.csv "model=A, metric=IG: value") and [−0.026](t.csv "model=A: lo"), '
            '[81 %](t.csv "model=B: value"), [1.91](p.json ": m.IG"), [82.3 %](p.json ": m.explained_IG"), '
            '[+2.04](r.json "condition=x y: IG")\n\n<!-- table: t.md -->\n| a | b |\n|---|---|\n| 1 | 2 |\n'
            '<!-- end table -->\n')
    assert check_markdown(text, files) == []
    assert citations(text) == ["1.894", "−0.026", "81", "1.91", "82.3", "+2.04"]


def test_fill_citations_rewrites_each_number_as_it_was_written(files):
    text = ('[1.9](t.csv "model=A, metric=IG: value") [+0.1](t.csv "model=A: lo") '
            '[−0.03](t.csv "model=A: lo") [80 %](t.csv "model=B: value") [2.0](p.json ": m.IG") '
            '[9](missing.csv "a=b: c")')
    out = fill_citations(text, files)
    assert out == ('[1.9](t.csv "model=A, metric=IG: value") [+0.0](t.csv "model=A: lo") '
                   '[−0.03](t.csv "model=A: lo") [81 %](t.csv "model=B: value") [1.9](p.json ": m.IG") '
                   '[9](missing.csv "a=b: c")')
    assert [p for p in check_markdown(out, files) if "missing" not in p] == []


@pytest.mark.parametrize("bad, why", [
    ('[1.895](t.csv "model=A, metric=IG: value")', "the file says 1.89357"),     # last digit edited
    ('[1.90](t.csv "model=A, metric=IG: value")', "the file says"),              # rounded wrongly
    ('[0.026](t.csv "model=A: lo")', "the file says -0.0261"),                   # sign dropped
    ('[80 %](t.csv "model=B: value")', "the file says 81.391"),
    ('[1.894](t.csv "metric=IG: value")', "2 rows match"),                       # ambiguous row
    ('[1.894](t.csv "model=C: value")', "0 rows match"),
    ('[1.894](t.csv "model=A: nope")', "KeyError"),
    ('[1.894](missing.csv "model=A: value")', "cannot read"),
    ('<!-- table: t.md -->\n| a | b |\n|---|---|\n| 1 | 3 |\n<!-- end table -->', "differs from the file"),
])
def test_checker_rejects_wrong_citations(files, bad, why):
    problems = check_markdown(bad, files)
    assert len(problems) == 1 and why in problems[0], problems


# -- the committed report and notebooks ------------------------------------------------------------
def test_report_cites_only_numbers_that_match_the_committed_results():
    text = REPORT.read_text()
    assert check_markdown(text, REPO) == []
    assert len(citations(text)) >= 30
    assert len(re.findall(r"<!-- table: ", text)) >= 2
    figures = re.findall(r"!\[[^\]]*\]\((figures/osie[^)]+\.png)\)", text)
    assert len(figures) >= 3 and all((REPO / f).exists() for f in figures), figures


def test_the_docs_cite_only_numbers_that_match_their_files():
    pages = sorted((REPO / "docs").glob("*.md"))
    cited = [p for p in pages if citations(p.read_text())]
    assert REPO / "docs" / "registration.md" in cited
    for page in cited:
        assert check_markdown(page.read_text(), page.parent) == [], page.name


def test_editing_a_cited_number_of_the_report_fails_the_check():
    text = REPORT.read_text()
    m = re.search(r"\[(\d+\.\d*)(\d)\]\(", text)
    edited = text[:m.start(2)] + str((int(m.group(2)) + 1) % 10) + text[m.end(2):]
    problems = check_markdown(edited, REPO)
    assert len(problems) == 1 and "the file says" in problems[0], problems


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_opens_with_its_question_and_closes_with_what_we_found(nb):
    cells = json.loads(nb.read_text())["cells"]
    assert cells[0]["cell_type"] == "markdown" and "**Question.**" in "".join(cells[0]["source"])
    assert cells[-1]["cell_type"] == "markdown" and "".join(cells[-1]["source"]).startswith("## What we found")
    assert check_markdown(notebook_markdown(nb), EXECUTED_BASE) == []


def test_the_committed_study_outputs_are_there_and_small():
    import subprocess

    files = subprocess.run(["git", "ls-files", "results", "figures", "dgstudy/models"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    executed = [f for f in files if f.startswith("results/osie/") and f.endswith(".ipynb")]
    assert [f.split("/")[-1] for f in executed] == sorted(p.name for p in NOTEBOOKS)
    # osie's layer table is osie_extended's (ablation_layers_from), drawn, not written again
    assert {f"results/osie_extended/ablation_layers.{ext}" for ext in ("md", "csv", "json")} <= set(files)
    assert not any(f.startswith("results/osie/ablation_layers.") for f in files)
    for table in ("results", "ablation_centerbias", "examples", "ablation_training"):
        assert {f"results/osie/{table}.{ext}" for ext in ("md", "csv", "json")} <= set(files)
    assert {"figures/osie/examples.png", "figures/osie/ablation_layers.png", "figures/osie/ablation_layers_vgg.png",
            "figures/osie_extended/ablation_backbones.png", "figures/osie_extended/ablation_layers_vgg.png",
            "figures/osie_extended/ablation_training.png", "figures/osie_extended/main_ensemble.png",
            "figures/osie_extended/main_ensemble_examples.png"} <= set(files)
    for table in ("ablation_layers_vgg", "ablation_training", "seed_spread", "seed_spread_reference",
                  "main_results", "main_ensemble"):
        assert {f"results/osie_extended/{table}.{ext}" for ext in ("md", "csv", "json")} <= set(files)
    assert not [f for f in files if f.endswith((".h5", ".pt")) and not f.startswith("dgstudy/models/")]
    size = sum((REPO / f).stat().st_size for f in files if f.startswith(("results/", "figures/")))
    assert size <= 20 * 2**20, f"{size / 2**20:.1f} MiB of committed study outputs"


def test_fill_tables_copies_the_current_table_in(files):
    stale = "x\n<!-- table: t.md -->\n| a | b |\n|---|---|\n| 9 | 9 |\n<!-- end table -->\ny"
    filled = fill_tables(stale, files)
    assert check_markdown(stale, files) and check_markdown(filled, files) == []
    assert filled.startswith("x\n") and filled.endswith("\ny") and "| 1 | 2 |" in filled
