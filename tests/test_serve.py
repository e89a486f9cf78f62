"""dgstudy serve, tested as a person and a program would use it.

In process (FastAPI's TestClient) on a tiny run trained here on synthetic data: the routes, the
served density against ``dgstudy predict``'s, each bad input a 4xx with a message, a full queue a
503. On 127.0.0.1: ``python -m dgstudy serve --model RUN`` in a subprocess (an OSIE image's density
equal to the CLI's, 20 concurrent requests, its memory, nothing written) and the page in headless
Chromium (Debian's ``chromium`` and ``chromium-driver``; skipped only where they are absent).

``DGSTUDY_SERVE_MODEL=RUN`` serves that run on 127.0.0.1 instead of the tiny one, and
``DGSTUDY_SERVE_SCREENSHOT=docs/serve.png`` keeps the browser test's screenshot (README's was made
with both: ``DGSTUDY_SERVE_MODEL=results/osie-efficientnet_lite0``).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import REPO, isolated_study
from dgstudy import cli, predict, runs, serve
from dgstudy.config import TrainConfig


def _png(h, w, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "png")
    return buf.getvalue()


def _flat_png(h, w) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 120, 200)).save(buf, "png")
    return buf.getvalue()


def _jpeg(h, w, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "jpeg")
    return buf.getvalue()


def _post(client, data: bytes, name="x.png"):
    return client.post("/predict", files={"image": (name, data, "application/octet-stream")})


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A trained and evaluated 3-fold run (6 synthetic 64x80 images, efficientnet_lite0 features,
    one epoch: no good model, and warned as such)."""
    from dgstudy import evaluation, features, training

    with isolated_study(tmp_path_factory.mktemp("serve_run")) as root:
        cfg = TrainConfig(dataset="synthetic", n_images=6, backbone="efficientnet_lite0",
                          dataset_options={"size": [64, 80], "seed": 4, "n_subjects": 3,
                                           "fixations_per_subject": 5},
                          folds=3, max_epochs=1, patience=1, batch_size=2, run="serve-tiny")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ds = runs.load_dataset(cfg)
            features.extract(ds, cfg.backbone, downsample=cfg.downsample, out=runs.feature_path(cfg, ds),
                             progress=False)
            run_dir = training.train_crossval(cfg, progress=False)
            evaluation.evaluate_run(run_dir, dataset=ds, progress=False)
        yield run_dir, root


@pytest.fixture(scope="module")
def model(study):
    return predict.load_model(study[0])


@pytest.fixture(scope="module")
def client(model):
    with TestClient(serve.create_app(model)) as c:
        yield c


def _cli_npy(image: Path, run, out: Path) -> np.ndarray:
    assert cli.main(["predict", str(image), "--model", str(run), "--out", str(out), "--no-plot"]) == 0
    return np.load(out / f"{image.stem}.npy")


# ------------------------------------------------------------------------------------------------
# in process
# ------------------------------------------------------------------------------------------------
def test_page_health_model_and_openapi(client, study):
    assert client.get("/health").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and 'id="overlay"' in page.text and "/predict" in page.text
    info = client.get("/model").json()
    assert info["name"] == "serve-tiny" and info["run"] == study[0].name
    assert str(study[0].parent) not in json.dumps(info)       # no path of the serving machine
    assert info["backbone"] == "efficientnet_lite0" and info["downsample"] == 2
    assert info["folds"] == ["fold_00", "fold_01", "fold_02"] and info["scale"] == "training"
    assert info["trained_on"]["dataset"] == "synthetic" and "IG" in info["metrics"]
    spec = client.get("/openapi.json").json()
    assert "/predict" in spec["paths"] and "Prediction" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200
    bar = client.get("/colorbar.png")
    assert bar.headers["content-type"] == "image/png" and Image.open(io.BytesIO(bar.content)).size[0] == 256


def test_served_density_is_the_cli_density(client, study, tmp_path):
    image = tmp_path / "photo.jpg"
    image.write_bytes(_jpeg(50, 70, seed=1))
    r = _post(client, image.read_bytes(), "photo.jpg")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["shape"] == [50, 70] and body["dtype"] == "float32" and body["scale"] == "training"
    assert body["filename"] == "photo.jpg" and body["model"] == "serve-tiny"
    served = np.load(io.BytesIO(client.get(body["npy_url"]).content))
    np.testing.assert_array_equal(served, _cli_npy(image, study[0], tmp_path / "out"))   # bit for bit
    assert served.dtype == np.float32 and abs(np.exp(served.astype(np.float64)).sum() - 1) < 1e-4
    png = client.get(body["png_url"])
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (70, 50)


def test_bad_inputs_are_4xx_with_a_message(model):
    limits = serve.Limits(max_bytes=3000, max_pixels=40 * 40, min_side=16)
    with TestClient(serve.create_app(model, limits)) as c:
        jpeg = _jpeg(30, 30, seed=2)
        assert len(jpeg) < 3000
        cases = {
            "not an image": (_post(c, b"just some text, not pixels", "notes.txt"), 415, "not an image"),
            "empty": (_post(c, b"", "empty.png"), 400, "empty"),
            "over the bytes, by the file": (_post(c, b"\x89PNG" + bytes(3500), "big.png"), 413, "MiB"),
            "over the bytes, by its length": (_post(c, bytes(80_000), "huge.png"), 413, "MiB"),
            "over the pixels": (_post(c, _flat_png(41, 40), "wide.png"), 413, "megapixels"),
            "truncated JPEG": (_post(c, jpeg[: len(jpeg) // 2], "cut.jpg"), 422, "does not decode"),
            "truncated header": (_post(c, jpeg[:200], "cut2.jpg"), 422, "does not decode"),
            "too small": (_post(c, _png(8, 30), "tiny.png"), 422, "at least 16"),
        }
        for what, (r, status, words) in cases.items():
            assert r.status_code == status, (what, r.status_code, r.text)
            assert words in r.json()["detail"], (what, r.json())
        r = c.post("/predict", files={"other": ("x.png", jpeg, "image/png")})        # no `image` field
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "image"]
        assert c.get("/results/0123.npy").status_code == 404
        assert c.post("/predict", content=iter([b"x" * 10])).status_code == 411        # chunked: no length
        # the server still answers, and still predicts
        assert c.get("/health").json()["status"] == "ok"
        assert _post(c, jpeg, "fine.jpg").status_code == 200


class _BlockingModel:
    """A uniform model that waits for ``go`` (to hold the queue full)."""

    def __init__(self):
        self.go = threading.Event()

    def log_density(self, rgb):
        assert self.go.wait(30)
        return predict.uniform_log_density(*rgb.shape[:2])


def test_a_full_queue_answers_503_with_retry_after_and_then_serves():
    m = _BlockingModel()
    with TestClient(serve.create_app(m, serve.Limits(max_pending=2, retry_after_s=3))) as c, \
            ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(_post, c, _png(20, 20, seed=s)) for s in range(2)]
        for _ in range(300):
            if c.get("/health").json()["pending"] == 2:
                break
            time.sleep(0.01)
        full = _post(c, _png(20, 20))
        assert full.status_code == 503 and full.headers["retry-after"] == "3"
        assert "busy" in full.json()["detail"]
        m.go.set()
        assert [f.result().status_code for f in waiting] == [200, 200]
        assert c.get("/health").json()["pending"] == 0


def test_results_are_kept_within_their_byte_budget():
    store = serve.ResultStore(max_bytes=250)
    keys = [store.put({"npy": bytes(100), "png": bytes(20)}) for _ in range(4)]
    assert len(store) == 2 and store.nbytes() <= 250
    assert store.get(keys[0], "npy") is None and store.get(keys[-1], "png") == bytes(20)
    big = store.put({"npy": bytes(1000)})                           # the newest always stays
    assert len(store) == 1 and store.get(big, "npy") is not None


def test_serve_without_a_model_serves_the_shipped_one(capsys):
    """The app on the model shipped in the package (what `dgstudy serve` without --model loads)."""
    shipped = predict.load_model()
    with TestClient(serve.create_app(shipped)) as c:
        info = c.get("/model").json()
        assert json.dumps(info).count(shipped.provenance["source_run"]) >= 1
        rgb = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        r = c.post("/predict", files={"image": ("x.png", buf.getvalue(), "image/png")})
        assert r.status_code == 200, r.text
        ld = np.load(io.BytesIO(c.get(r.json()["npy_url"]).content))
        np.testing.assert_array_equal(ld, shipped.log_density(rgb).astype(np.float32))
    assert cli.main(["serve", "--model", "/no/such/run", "--port", "1"]) == 1
    assert "cannot load the model /no/such/run" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# on 127.0.0.1: the command in a subprocess, then the page in a browser
# ------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, MiB."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


@pytest.fixture(scope="module")
def live_server(study, tmp_path_factory):
    """``python -m dgstudy serve --model RUN --port P`` in a subprocess, in an empty folder, with an
    empty TMPDIR; yields (base URL, process, run, folder, tmpdir)."""
    run = os.environ.get("DGSTUDY_SERVE_MODEL") or str(study[0])
    where = tmp_path_factory.mktemp("serve_cwd")
    tmpdir = tmp_path_factory.mktemp("serve_tmp")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TMPDIR": str(tmpdir)}
    log = open(where.parent / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "dgstudy", "serve", "--model", run, "--port", str(port)],
                            cwd=where, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dgstudy serve exited with {proc.returncode}:\n{(where.parent / 'serve.log').read_text()}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() - t0 > 120:
                pytest.fail("dgstudy serve did not answer /health within 120 s")
            time.sleep(0.2)
        print(f"dgstudy serve answered /health after {time.perf_counter() - t0:.1f} s")
        yield url, proc, run, where, tmpdir
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_the_command_serves_the_cli_density_of_an_osie_image(live_server, osie_dir, tmp_path):
    url, proc, run, where, _ = live_server
    image = osie_dir / "stimuli" / "1001.jpg"
    with httpx.Client(base_url=url, timeout=120) as c:
        assert c.get("/health").json()["status"] == "ok"
        r = c.post("/predict", files={"image": (image.name, image.read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        body = r.json()
        served = np.load(io.BytesIO(c.get(body["npy_url"]).content))
    assert body["shape"] == [600, 800] and body["scale"] == "training"
    np.testing.assert_array_equal(served, _cli_npy(image, run, tmp_path / "out"))          # bit for bit


def test_twenty_concurrent_requests_all_succeed_in_bounded_memory(live_server):
    """All 20 are answered, and sending them at once costs no more memory than sending them one
    by one: the one model thread predicts one image at a time, so the peak RSS of the concurrent
    batch stays within 64 MiB (their uploads and results) of the peak the same 20 reached in turn,
    and within 512 MiB of the idle RSS after one request: what one prediction needs at its working
    size (for the shipped models OSIE's training scale, 480 000 px: the backbone's activations, the
    fold centre biases it keeps, the readouts' maps; README's serve section gives measured figures)."""
    url, proc, run, where, tmpdir = live_server
    images = [_png(96 + 8 * (i % 4), 128, seed=i) for i in range(20)]
    with httpx.Client(base_url=url, timeout=300) as c:
        def one(i):
            r = c.post("/predict", files={"image": (f"c{i}.png", images[i], "image/png")})
            return r.status_code, (r.json() if r.status_code == 200 else r.text)

        assert one(0)[0] == 200
        warm = _rss_mib(proc.pid)
        assert [one(i)[0] for i in range(20)] == [200] * 20
        in_turn = _rss_mib(proc.pid)
        t = time.perf_counter()
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(one, range(20)))
        seconds = time.perf_counter() - t
        assert [a[0] for a in answers] == [200] * 20, answers
        for i, (_, body) in enumerate(answers):
            assert body["shape"] == [96 + 8 * (i % 4), 128]
            assert np.load(io.BytesIO(c.get(body["npy_url"]).content)).shape == tuple(body["shape"])
        after = _rss_mib(proc.pid)
        assert c.get("/health").json()["pending"] == 0
    print(f"20 concurrent requests: {seconds:.1f} s; server RSS after one request {warm['VmRSS']:.0f} MiB, "
          f"peak {in_turn['VmHWM']:.0f} MiB after 20 in turn, {after['VmHWM']:.0f} MiB after 20 at once")
    assert after["VmHWM"] - in_turn["VmHWM"] < 64
    assert after["VmHWM"] - warm["VmRSS"] < 512
    assert proc.poll() is None
    assert not list(where.iterdir()) and not list(tmpdir.iterdir())    # nothing written


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no chromium and chromedriver here (Debian: apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,1250", "--force-color-profile=srgb"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def test_the_page_in_a_browser_draws_the_overlay(live_server, osie_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, proc, run, where, _ = live_server
    image = osie_dir / "stimuli" / "1009.jpg"
    browser = _browser()
    try:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda b: "backbone" in b.find_element(By.ID, "model-info").text)
        browser.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(browser, 120).until(
            lambda b: b.execute_script("return document.getElementById('overlay').dataset.drawn")
            or b.find_element(By.ID, "error").text)
        assert browser.find_element(By.ID, "error").text == ""
        png_url = browser.find_element(By.ID, "npy-link").get_attribute("href").replace(".npy", ".png")
        drawn = browser.execute_script("""
            const c = document.getElementById('overlay');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            return [c.width, c.height, Array.from(d.filter((_, i) => i % 4 !== 3))];""")
        text = browser.find_element(By.TAG_NAME, "body").text
        browser.save_screenshot(str(tmp_path / "serve.png"))
        if os.environ.get("DGSTUDY_SERVE_SCREENSHOT"):
            shutil.copyfile(tmp_path / "serve.png", os.environ["DGSTUDY_SERVE_SCREENSHOT"])
    finally:
        browser.quit()
    w, h, rgb = drawn
    assert (w, h) == (800, 600)
    canvas = np.array(rgb, dtype=np.uint8).reshape(h, w, 3)
    served = np.asarray(Image.open(io.BytesIO(httpx.get(png_url).content)).convert("RGB"))
    assert np.abs(canvas.astype(int) - served).mean() < 1.0          # the server's overlay, drawn
    coloured = np.abs(canvas[..., 0].astype(int) - canvas[..., 2]) > 40      # the density's peak, not grey
    assert canvas.std() > 10 and coloured.sum() >= 100
    assert "efficientnet_lite0" in text and "log-density 600 × 800" in text and "log-density (.npy)" in text
    assert str(Path(run).parent) not in text                   # the run's name, not its path on the server
