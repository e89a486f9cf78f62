"""`make reproduce`'s `dgstudy preflight --download` for the paper profile, end to end against a local
HTTP server on 127.0.0.1 serving small stand-ins for the VGG-19 checkpoint and the MIT1003 zips:
bad files are refused and leave nothing behind, good ones are put in place; offline it fails in
seconds and names the study that runs offline."""
from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import time

import pytest
import torch

from dgstudy import cli
from dgstudy.backbones import vgg19
from dgstudy.datasets import mit1003
from test_mit1003 import make_zips


@pytest.fixture
def server(tmp_path):
    """An HTTP server in a thread serving ``tmp_path / 'www'``; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def tiny_vgg19_checkpoint() -> dict:
    """A loadable torchvision VGG-19 checkpoint of a few kB: every tensor a stride-0 view of one
    number (torch.save stores the one-element storage)."""
    stages, tv_index, _ = vgg19.named_layers()
    return {f"features.{i}.{p}": torch.full((1,), 0.01).expand(getattr(stages[name], p).shape)
            for i, name in tv_index.items() for p in ("weight", "bias")}


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def paper_machine(tmp_path, monkeypatch):
    """An empty data root and torch cache; nothing pointed at by the local-file variables."""
    monkeypatch.setenv("DGSTUDY_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in (mit1003.ENV_VAR, vgg19.WEIGHTS_ENV):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_preflight_download_verifies_and_puts_files_in_place(server, paper_machine, monkeypatch, capsys):
    www, url = server
    make_zips(www / "mit")
    (www / "mit" / "Code").mkdir()
    (www / "mit" / "DatabaseCode.zip").rename(www / "mit" / "Code" / "DatabaseCode.zip")
    torch.save(tiny_vgg19_checkpoint(), www / "vgg19.pth")
    good_prefix = hashlib.sha256((www / "vgg19.pth").read_bytes()).hexdigest()[:8]
    monkeypatch.setenv(vgg19.URL_ENV, f"{url}/vgg19.pth")
    monkeypatch.setenv(mit1003.URL_ENV, f"{url}/mit")
    cache = paper_machine / "torch" / "hub" / "checkpoints"
    mit_dir = paper_machine / "data" / "mit1003"

    def leftovers():
        return sorted(p.name for d in (cache, mit_dir) if d.exists() for p in d.iterdir())

    # the stand-ins are not the published files: both refused, nothing left under any name
    assert cli.main(["preflight", "--profile", "paper", "--download"]) == 1
    err = capsys.readouterr().err
    assert f"ALLSTIMULI.zip: downloaded from {url}/mit/ALLSTIMULI.zip but its MD5 is not the published" in err
    assert f"{vgg19.VGG19_FILE} downloaded from {url}/vgg19.pth: SHA-256" in err
    assert "does not start with the published prefix dcbb9e9d" in err
    assert leftovers() == []

    # published checksums equal to the stand-ins': downloaded, verified, in place
    monkeypatch.setattr(vgg19, "VGG19_SHA256_PREFIX", good_prefix)
    monkeypatch.setattr(mit1003, "FILES", {n: (u, md5(www / "mit" / u)) for n, (u, _) in mit1003.FILES.items()})
    assert cli.main(["preflight", "--profile", "paper", "--download"]) == 0
    assert "data and weights found" in capsys.readouterr().out
    assert (cache / vgg19.VGG19_FILE).read_bytes() == (www / "vgg19.pth").read_bytes()
    assert {"ALLSTIMULI.zip", "DATA.zip", "DatabaseCode.zip", "ALLSTIMULI", "DATA"} <= set(leftovers())
    assert not [n for n in leftovers() if n.endswith(".tmp")]

    # a corrupted file in the cache is refused on use, not read
    (cache / vgg19.VGG19_FILE).write_bytes(b"truncated")
    assert cli.main(["preflight", "--profile", "paper", "--download"]) == 1
    assert "does not start with the published prefix" in capsys.readouterr().err


def test_offline_preflight_fails_in_seconds_naming_the_offline_study(paper_machine, monkeypatch, capsys):
    import socket

    with socket.socket() as s:                 # a port where nothing listens: no network
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv(vgg19.URL_ENV, f"{dead}/vgg19.pth")
    monkeypatch.setenv(mit1003.URL_ENV, dead)
    t0 = time.perf_counter()
    assert cli.main(["preflight", "--profile", "paper", "--download"]) == 1
    assert time.perf_counter() - t0 < 30
    err = capsys.readouterr().err
    assert "could not download" in err and "DGSTUDY_MIT1003_DIR" in err and vgg19.WEIGHTS_ENV in err
    assert err.rstrip().splitlines()[-1] == f"Without a network, the study that runs here is: {cli.OFFLINE_STUDY}"
