"""Numbers in prose that cite the result file they come from, and the check that they still match.

REPORT.md and the notebooks' "What we found" sections write each result as a Markdown link whose
text is the number and whose title says where in the file it is::

    [1.894](results/osie/results.csv "model=DeepGaze II, metric=IG: this_run")
    [+0.150](results/osie_extended/ablation_backbones.csv "condition=ensemble: IG_diff")
    [82 %](results/osie_extended/ablation_backbones.csv "condition=efficientnet_lite2: explained_IG")
    [0.823](dgstudy/models/osie/provenance.json ": cross_validated_metrics.explained_IG")

- a ``.csv`` file (or ``.json`` holding a list of records): ``key=value, ...`` selects exactly one
  row, the part after ``:`` names the column;
- a ``.json`` object: the part after ``:`` is a dotted path (no row selector);
- the cited value is rounded to the decimals the text shows (``%`` after the number: the value
  x 100) and must equal the number in the text.

Tables are cited whole: a Markdown table between ``<!-- table: PATH -->`` and ``<!-- end table
-->`` must equal the table in the ``.md`` file PATH (:func:`fill_tables` copies them in).

:func:`check_markdown` returns the problems (an empty list: every citation holds);
:func:`fill_citations` rewrites every cited number from its file (after a rerun; the prose around
the numbers is the author's to re-read). Paths are
relative to ``base`` (for REPORT.md the repository root; for a notebook, the folder its executed
copy lives in, ``results/<tag>/``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

CITATION = re.compile(r"\[(?P<text>[+\-−]?\d+(?:\.\d+)?)(?P<pct>\s?%)?\]\((?P<path>[^\s)]+)\s+\"(?P<where>[^\"]*)\"\)")
TABLE = re.compile(r"<!-- table: (?P<path>\S+) -->\n(?P<body>.*?)<!-- end table -->", re.S)


def _table_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("|")]


def _value(path: Path, where: str):
    selector, _, column = where.rpartition(":")
    column = column.strip()
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            for key in column.split("."):
                data = data[key]
            return data
        table = pd.DataFrame(data)
    else:
        table = pd.read_csv(path)
    rows = table
    for part in filter(None, (p.strip() for p in selector.split(","))):
        key, _, val = part.partition("=")
        rows = rows[rows[key.strip()].astype(str) == val.strip()]
    if len(rows) != 1:
        raise LookupError(f"{len(rows)} rows match {selector.strip()!r}")
    return rows[column].iloc[0]


def check_markdown(text: str, base: str | Path) -> list[str]:
    """Every cited number and table of ``text`` against its file under ``base``; the problems."""
    base = Path(base)
    problems = []
    for m in CITATION.finditer(text):
        shown = m.group("text").replace("−", "-")
        cite = f"[{m.group(0)[1:m.group(0).index(']')]}]({m.group('path')} \"{m.group('where')}\")"
        path = base / m.group("path")
        try:
            value = float(_value(path, m.group("where")))
        except (OSError, KeyError, LookupError, ValueError, TypeError) as e:
            problems.append(f"{cite}: cannot read the cited value ({type(e).__name__}: {e})")
            continue
        if m.group("pct"):
            value *= 100
        decimals = len(shown.split(".")[1]) if "." in shown else 0
        if round(value, decimals) != round(float(shown), decimals):
            problems.append(f"{cite}: the file says {value:.{decimals + 3}f}")
    for m in TABLE.finditer(text):
        path = base / m.group("path")
        try:
            want = _table_lines(path.read_text())
        except OSError as e:
            problems.append(f"table {m.group('path')}: {e}")
            continue
        if _table_lines(m.group("body")) != want:
            problems.append(f"table {m.group('path')}: differs from the file (copy it again)")
    return problems


def fill_tables(text: str, base: str | Path) -> str:
    """``text`` with every cited table (``<!-- table: PATH -->``) replaced by PATH's current table."""
    def fill(m):
        lines = _table_lines((Path(base) / m.group("path")).read_text())
        return f"<!-- table: {m.group('path')} -->\n" + "\n".join(lines) + "\n<!-- end table -->"
    return TABLE.sub(fill, text)


def _shown(value: float, like: str, pct: bool) -> str:
    """``value`` written as the cited number ``like`` was: its decimals, a ``+`` if it had one,
    ``−`` (U+2212) if it used that minus."""
    if pct:
        value *= 100
    decimals = len(like.split(".")[1]) if "." in like else 0
    text = f"{value:.{decimals}f}"
    if text.startswith("-") and float(text) == 0:
        text = text[1:]
    if text.startswith("-") and "−" in like:
        text = "−" + text[1:]
    elif not text.startswith("-") and like.startswith("+"):
        text = "+" + text
    return text


def fill_citations(text: str, base: str | Path) -> str:
    """``text`` with every cited number replaced by its file's current value, written as before
    (:func:`_shown`); a citation whose value cannot be read is left as it is."""
    def fill(m):
        try:
            value = float(_value(Path(base) / m.group("path"), m.group("where")))
        except (OSError, KeyError, LookupError, ValueError, TypeError):
            return m.group(0)
        number = _shown(value, m.group("text"), bool(m.group("pct")))
        return f"[{number}{m.group('pct') or ''}]({m.group('path')} \"{m.group('where')}\")"
    return CITATION.sub(fill, text)


def citations(text: str) -> list[str]:
    """The cited numbers of ``text`` as written (for counting and tests)."""
    return [m.group("text") for m in CITATION.finditer(text)]


def notebook_markdown(path: str | Path) -> str:
    """The Markdown cells of a notebook, joined."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    return "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
