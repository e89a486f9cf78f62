"""dgstudy.notebook_clean: what a committed executed notebook keeps and what it loses."""
from __future__ import annotations

import json
from pathlib import Path

from dgstudy.notebook_clean import clean, clean_file


def executed(root: str) -> dict:
    return {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3"},
                     "papermill": {"parameters": {"profile": "osie"}, "input_path": f"{root}/notebooks/x.ipynb",
                                   "output_path": f"{root}/results/osie/x.ipynb.running.ipynb",
                                   "start_time": "2026-12-01T19:25:46", "end_time": "2026-12-01T19:28:26",
                                   "duration": 159.3, "exception": None, "environment_variables": {},
                                   "version": "2.7.0"}},
        "cells": [
            {"cell_type": "markdown", "id": "a", "metadata": {}, "source": ["# x"]},
            {"cell_type": "code", "id": "9f3c2a1b", "execution_count": 1, "outputs": [],
             "metadata": {"tags": ["injected-parameters"]}, "source": ["profile = \"osie\""]},
            {"cell_type": "code", "id": "b", "execution_count": 3,
             "metadata": {"tags": ["parameters"], "execution": {"iopub.status.busy": "2026-12-01T19:25:50Z"},
                          "papermill": {"duration": 2.7, "status": "completed"}},
             "source": ["print(path)"],
             "outputs": [
                 {"output_type": "stream", "name": "stderr", "text": ["evaluate: 40%|###  | 280/700 [00:10<...]\r"]},
                 {"output_type": "stream", "name": "stdout", "text": [f"file {root}/data/features/a.h5 (3.1 MiB)\n"]},
                 {"output_type": "execute_result", "execution_count": 3, "metadata": {},
                  "data": {"text/plain": [f"<Figure at 0x7f3a12bc45d0> PosixPath('{root}/results/r')"],
                           "image/png": "iVBORw0KGgo="}},
                 {"output_type": "error", "ename": "E", "evalue": "e", "traceback": [f"File {root}/dgstudy/x.py"]},
             ]},
        ],
    }


def test_clean_keeps_results_and_drops_what_changes_between_runs(tmp_path):
    root = str(tmp_path / "repo")
    nb = clean(executed(root), repo_root=root)
    assert nb["metadata"]["papermill"] == {"parameters": {"profile": "osie"}, "input_path": "./notebooks/x.ipynb",
                                           "version": "2.7.0"}
    assert nb["cells"][1]["id"] == "injected-parameters"
    cell = nb["cells"][2]
    assert cell["metadata"] == {"tags": ["parameters"]} and cell["execution_count"] == 3
    assert [o["output_type"] for o in cell["outputs"]] == ["stream", "execute_result", "error"]
    assert cell["outputs"][0]["text"] == ["file ./data/features/a.h5 (3.1 MiB)\n"]
    assert cell["outputs"][1]["data"] == {"text/plain": ["<Figure at 0x…> PosixPath('./results/r')"],
                                          "image/png": "iVBORw0KGgo="}
    assert cell["outputs"][2]["traceback"] == ["File ./dgstudy/x.py"]
    assert nb["cells"][0] == executed(root)["cells"][0]
    assert clean(nb, repo_root=root) == nb                        # idempotent


def test_two_runs_in_different_checkouts_clean_to_the_same_bytes(tmp_path):
    a, b = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    one, two = executed("/home/u/dgstudy"), executed("/srv/ci/dgstudy")
    two["metadata"]["papermill"]["duration"] = 1.0
    two["cells"][1]["id"] = "0c5d7e2f"
    a.write_text(json.dumps(one))
    b.write_text(json.dumps(two))
    clean_file(a, repo_root="/home/u/dgstudy")
    clean_file(b, repo_root="/srv/ci/dgstudy")
    assert a.read_bytes() == b.read_bytes()
    assert not list(Path(tmp_path).glob(".*tmp"))
