"""Executed notebooks as committed files: only what a rerun with the same results reproduces.

:func:`clean` strips from an executed notebook (papermill's output, a dict in nbformat 4) what
changes from one run to the next although no result changed, so that rerunning ``make reproduce``
leaves git clean unless a number or a picture really changed:

- papermill's timestamps, durations, output path and environment (notebook and cell metadata)
  and the kernel's ``execution`` timestamps of each cell;
- ``stderr`` streams (progress bars with their timings, warnings: they are shown in the terminal
  while the notebook runs, see the Makefile);
- absolute paths: the repository root becomes ``.`` and the home folder ``~``;
- memory addresses (``at 0x7f3a...``);
- the random id papermill gives the cell of injected parameters.

Kept: the source, every result output (text, tables, figures), execution counts, tags, the
parameters papermill injected and the kernel and language metadata.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .io import atomic_path
from .paths import REPO_ROOT

KEEP_PAPERMILL = ("default_parameters", "parameters", "input_path", "version")
ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")


def _scrub(text: str, roots: list[tuple[str, str]]) -> str:
    for path, short in roots:
        text = text.replace(path + "/", short + "/").replace(path, short)
    return ADDRESS.sub("0x…", text)


def _scrub_value(value, roots):
    if isinstance(value, str):
        return _scrub(value, roots)
    if isinstance(value, list):
        return [_scrub_value(v, roots) for v in value]
    return value


def clean(nb: dict, repo_root: str | Path = REPO_ROOT) -> dict:
    """The notebook ``nb`` without volatile content (see the module docstring); a new dict."""
    nb = json.loads(json.dumps(nb))
    roots = [(str(Path(repo_root).resolve()), "."), (str(Path.home()), "~")]
    pm = nb.get("metadata", {}).get("papermill")
    if pm is not None:
        nb["metadata"]["papermill"] = {k: _scrub_value(pm[k], roots) for k in KEEP_PAPERMILL if k in pm}
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {})
        meta.pop("execution", None)
        meta.pop("papermill", None)
        if "injected-parameters" in meta.get("tags", []):
            cell["id"] = "injected-parameters"          # papermill gives it a random id on every run
        if cell.get("cell_type") != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                if out.get("name") == "stderr":
                    continue
                out["text"] = _scrub_value(out["text"], roots)
            elif "data" in out:
                for mime in list(out["data"]):
                    if mime.startswith("text/") or mime == "application/json":
                        out["data"][mime] = _scrub_value(out["data"][mime], roots)
            elif out.get("output_type") == "error":
                out["traceback"] = _scrub_value(out.get("traceback", []), roots)
            outputs.append(out)
        cell["outputs"] = outputs
    return nb


def clean_file(path: str | Path, repo_root: str | Path = REPO_ROOT) -> None:
    """Clean the notebook file ``path`` in place (atomically), in nbformat's JSON layout."""
    path = Path(path)
    nb = clean(json.loads(path.read_text(encoding="utf-8")), repo_root)
    with atomic_path(path, suffix=".ipynb") as tmp:
        tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
