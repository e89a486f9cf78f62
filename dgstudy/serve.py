"""``dgstudy serve``: the paper's web service on your own machine (FastAPI app, run by uvicorn).

Routes (``create_app(model)``; the model is loaded once, before the server starts):

``GET /``                 the page (``dgstudy/web/index.html``): choose or drop an image, see the
                          density over it, a colour bar, the model's provenance, download links
``POST /predict``         multipart form with one file field ``image`` -> JSON (:class:`Prediction`)
``GET /results/{id}.npy`` the log-density: ``numpy.load``-able float32 (H, W) natural-log density
                          over the image pixels (``exp`` sums to 1), rows first, EXIF-rotated image
``GET /results/{id}.png`` the overlay: the greyed image under the density (magma, scaled to its
                          maximum), at the image's resolution
``GET /model``            the model's name and provenance (:func:`model_info`)
``GET /colorbar.png``     the overlay's colour bar (left 0, right the density's maximum)
``GET /health``           ``{"status": "ok", ...}`` with the queue's state
``GET /docs``             the OpenAPI page (``/openapi.json``)

A prediction is made by :func:`dgstudy.predict_files.predict_one`, the step ``dgstudy predict``
uses, so a served ``.npy`` holds the same array ``dgstudy predict`` writes for that image and model.

Bad input is a 4xx JSON answer ``{"detail": message}``: 400 empty upload, 411 no Content-Length,
413 over :class:`Limits` (bytes or pixels), 415 not an image, 422 an image that does not decode
(e.g. a truncated JPEG) or is smaller than ``min_side``, 503 (with ``Retry-After``) when
``max_pending`` requests are already waiting or running. A failure of the model itself is a 500;
the server keeps serving.

Load and memory: one worker thread runs the model, so one image is decoded and predicted at a
time, and what it freed is given back to the system after each image (:func:`release_free_memory`);
at most ``max_pending`` uploads (each at most ``max_bytes``, so at most 640 MiB by default)
wait for it. Results are kept in
memory, newest first, at most ``result_bytes`` in all (the newest one always); an evicted result's
URLs answer 404. Nothing is written to disk by the service (uploads over 1 MiB are spooled by the
framework to an anonymous temporary file, which is gone when the request ends).
"""
from __future__ import annotations

import asyncio
import ctypes
import io
import json
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from ._version import __version__
from .figures import colour_bar_png, overlay_png
from .io import DataError
from .predict_files import predict_one


@dataclass(frozen=True)
class Limits:
    """What one server accepts and keeps (the documented limits of ``dgstudy serve``)."""

    max_bytes: int = 20 * 2**20          # an upload's size (20 MiB)
    max_pixels: int = 4_000_000          # width x height (e.g. 2300 x 1730); memory grows with it
    min_side: int = 16                   # the smaller side, in pixels
    max_pending: int = 32                # requests admitted to the model (waiting or running)
    result_bytes: int = 256 * 2**20      # the results kept for download, .npy + .png, in all
    retry_after_s: int = 2               # the Retry-After of a 503


class Prediction(BaseModel):
    """The answer of ``POST /predict``. Fetch the arrays from the URLs (relative to the server)."""

    id: str = Field(description="the result's id (its files stay while results_bytes allows)")
    filename: str = Field(description="the uploaded file's name")
    shape: list[int] = Field(description="[height, width] of the log-density: the image as displayed")
    dtype: str = Field(description="dtype of the .npy: float32")
    scale: str = Field(description="the scale policy of the prediction (the model's `scale`, else 'native')")
    npy_url: str = Field(description="the natural-log density, numpy .npy, (H, W), exp sums to 1")
    png_url: str = Field(description="the density overlaid on the greyed image, PNG, W x H")
    model: str = Field(description="the model's name (GET /model for its provenance)")
    seconds: float = Field(description="time the model took for this image")


class UploadError(Exception):
    """A request the server refuses: ``status`` (4xx/503) and a message for the person."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def check_upload(data: bytes, name: str, limits: Limits) -> tuple[int, int]:
    """(width, height) of an upload from its header, or :class:`UploadError` (400 empty, 413 over
    the byte or pixel limit, 415 not an image, 422 a broken header or a side under ``min_side``).
    The pixels are decoded later, by the model's worker."""
    if not data:
        raise UploadError(400, f"{name}: the upload is empty")
    if len(data) > limits.max_bytes:
        raise UploadError(413, f"{name}: the file is over the limit of {limits.max_bytes / 2**20:.0f} MiB")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        w, h = limits.max_pixels + 1, 1
    except UnidentifiedImageError as e:
        raise UploadError(415, f"{name}: not an image file (no image format recognised)") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UploadError(422, f"{name}: the image does not decode ({e})") from e
    if w * h > limits.max_pixels:
        raise UploadError(413, f"{name}: the image has {w * h / 1e6:.1f} megapixels, over the limit of "
                               f"{limits.max_pixels / 1e6:.1f} megapixels")
    if min(w, h) < limits.min_side:
        raise UploadError(422, f"{name}: the image is {w}x{h} pixels; its smaller side must be at least "
                               f"{limits.min_side} pixels")
    return w, h


class ResultStore:
    """Recent results in memory, bounded in total bytes: the oldest go first, the newest always stays."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, files: dict[str, bytes]) -> str:
        key = uuid.uuid4().hex
        with self._lock:
            self._items[key] = files
            while len(self._items) > 1 and self.nbytes() > self.max_bytes:
                self._items.popitem(last=False)
        return key

    def get(self, key: str, kind: str) -> bytes | None:
        with self._lock:
            return self._items.get(key, {}).get(kind)

    def nbytes(self) -> int:
        return sum(len(b) for files in self._items.values() for b in files.values())

    def __len__(self) -> int:
        return len(self._items)


class QueueFull(Exception):
    """:meth:`ModelQueue.run` found ``limit`` jobs already admitted."""


def _glibc_malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):     # not glibc: nothing to release
        return None


_MALLOC_TRIM = _glibc_malloc_trim()


def release_free_memory() -> None:
    """Give the memory freed by a prediction back to the system (glibc's ``malloc_trim``; a no-op
    elsewhere), so that the server's resident memory returns to its idle size between images
    instead of keeping the largest prediction's pages."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class ModelQueue:
    """The model behind one worker thread; at most ``limit`` jobs admitted (waiting or running)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.pending = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dgstudy-model")

    async def run(self, fn, *args):
        """``fn(*args)`` on the worker; :class:`QueueFull` at once (nothing run) when the queue is full."""
        with self._lock:
            if self.pending >= self.limit:
                raise QueueFull(f"{self.limit} jobs are waiting or running")
            self.pending += 1

        def job():
            try:
                return fn(*args)
            finally:                      # the slot is freed when the work ends, even if the client left
                with self._lock:
                    self.pending -= 1
                release_free_memory()
        try:
            future = self._executor.submit(job)
        except RuntimeError:              # shutting down
            with self._lock:
                self.pending -= 1
            raise
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def model_info(model) -> dict:
    """The model's name and provenance as JSON: run (the run folder's name; never its path on the
    serving machine), backbone, layers, downsample (an ensemble: ``backbones``, one entry each),
    folds (an ensemble: its readouts, ``<run>/fold_XX``), centre bias, scale policy, the
    ``provenance`` attribute if any, and from the run's ``config.json``/``metrics.json`` its
    dataset and headline metrics."""
    run_dir = getattr(model, "run_dir", None)
    spec = getattr(model, "spec", None)
    info = {"name": Path(run_dir).name if run_dir else type(model).__name__,
            "run": Path(run_dir).name if run_dir else None,
            "scale": getattr(model, "scale", "native"), "dgstudy_version": __version__}
    if spec is not None:
        info.update(backbone=spec.backbone, layers=list(spec.layers), downsample=spec.downsample)
    for s in getattr(model, "specs", None) or []:          # an ensemble: one entry per backbone
        info.setdefault("backbones", []).append({"backbone": s.backbone, "layers": list(s.layers),
                                                  "downsample": s.downsample})
    if hasattr(model, "members"):
        info["folds"] = [m.name for m in model.members]
    cb = getattr(model, "center_bias", None)
    if cb is not None:
        info["center_bias"] = cb if isinstance(cb, str) else type(cb).__name__
    provenance = getattr(model, "provenance", None)
    if provenance is not None:
        info["provenance"] = provenance if isinstance(provenance, dict) else str(provenance)
    if run_dir:
        info.update(_run_record(Path(run_dir)))
    return info


HEADLINE_METRICS = ("LL", "IG", "explained_IG", "AUC", "sAUC", "NSS", "CC", "KLDiv", "SIM",
                    "n_images", "n_fixations")


def _run_record(run_dir: Path) -> dict:
    """Dataset and headline metrics of a run from its config.json and metrics.json (if written)."""
    out = {}
    for name in ("config.json", "metrics.json"):
        try:
            rec = json.loads((run_dir / name).read_text())
        except (OSError, ValueError):
            continue
        if name == "config.json":
            out["trained_on"] = {k: rec.get(k) for k in ("dataset", "n_images", "folds", "readout") if k in rec}
        elif isinstance(rec.get("summary"), dict):
            out["metrics"] = {k: rec["summary"][k] for k in HEADLINE_METRICS if k in rec["summary"]}
            out["metrics_note"] = "cross-validated on the training dataset; LL and IG in bits/fixation"
    return out


def _predict_upload(model, data: bytes, name: str) -> tuple[list[int], dict[str, bytes], float]:
    """Worker-thread side of ``POST /predict``: shape, the .npy and .png bytes, seconds."""
    t = time.perf_counter()
    upload = io.BytesIO(data)
    upload.name = name
    rgb, logd = predict_one(model, upload)
    npy = io.BytesIO()
    np.save(npy, logd)
    files = {"npy": npy.getvalue(), "png": overlay_png(rgb, logd)}
    return list(logd.shape), files, time.perf_counter() - t


def create_app(model, limits: Limits = Limits()) -> FastAPI:
    """The FastAPI app serving ``model`` (anything with ``log_density(rgb)``; a :class:`Predictor`)."""
    queue = ModelQueue(limits.max_pending)
    store = ResultStore(limits.result_bytes)
    info = model_info(model)
    page = resources.files("dgstudy").joinpath("web/index.html").read_text(encoding="utf-8")
    colour_bar = colour_bar_png()

    @asynccontextmanager
    async def lifespan(app):
        yield
        queue.close()

    app = FastAPI(title="dgstudy serve", version=__version__, lifespan=lifespan,
                  description="DeepGaze II fixation-density prediction for one uploaded image. "
                              f"Model: {info['name']}. Limits: {limits.max_bytes // 2**20} MiB, "
                              f"{limits.max_pixels / 1e6:g} megapixels per image.")

    @app.exception_handler(UploadError)
    async def refused(request: Request, exc: UploadError):
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.middleware("http")
    async def bounded_body(request: Request, call_next):
        """Refuse an upload by its Content-Length before the form is read (411 without one)."""
        if request.method == "POST" and request.url.path == "/predict":
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"detail": "send the upload with a Content-Length"}, status_code=411)
            if not length.isdigit() or int(length) > limits.max_bytes + 64 * 1024:
                return JSONResponse({"detail": f"the upload is over the limit of "
                                               f"{limits.max_bytes / 2**20:.0f} MiB"}, status_code=413)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return page

    @app.get("/health")
    async def health():
        """Liveness, the model's name and the queue's state."""
        return {"status": "ok", "model": info["name"], "pending": queue.pending,
                "max_pending": limits.max_pending, "results_kept": len(store)}

    @app.get("/model")
    async def model_provenance():
        """The model's name and provenance (see dgstudy.serve.model_info)."""
        return info

    @app.get("/colorbar.png", response_class=Response)
    async def colorbar():
        return Response(colour_bar, media_type="image/png")

    @app.post("/predict", response_model=Prediction,
              responses={400: {"description": "empty upload"}, 411: {"description": "no Content-Length"},
                         413: {"description": "over the byte or pixel limit"},
                         415: {"description": "not an image"},
                         422: {"description": "the image does not decode, or is too small"},
                         503: {"description": "queue full: retry after Retry-After seconds"}})
    async def predict(image: UploadFile = File(description="an image file (PNG, JPEG, ...)")):
        """Predict the fixation density for one image (multipart form field ``image``)."""
        name = Path(image.filename or "upload").name
        data = await image.read(limits.max_bytes + 1)
        check_upload(data, name, limits)
        try:
            shape, files, seconds = await queue.run(_predict_upload, model, data, name)
        except QueueFull as e:
            raise UploadError(503, f"busy: {limits.max_pending} images are waiting; try again shortly",
                              headers={"Retry-After": str(limits.retry_after_s)}) from e
        except DataError as e:
            raise UploadError(422, str(e)) from e
        key = store.put(files)
        return Prediction(id=key, filename=name, shape=shape, dtype="float32", scale=info["scale"],
                          npy_url=f"/results/{key}.npy", png_url=f"/results/{key}.png",
                          model=info["name"], seconds=round(seconds, 4))

    @app.get("/results/{key}.{kind}", response_class=Response)
    async def result(key: str, kind: str):
        """A result's log-density (``.npy``) or overlay (``.png``)."""
        if kind not in ("npy", "png"):
            raise HTTPException(404, f"no such result kind .{kind}: .npy or .png")
        data = store.get(key, kind)
        if data is None:
            raise HTTPException(404, f"no result {key}: unknown, or dropped to keep memory bounded; "
                                     "post the image again")
        media = "image/png" if kind == "png" else "application/octet-stream"
        return Response(data, media_type=media,
                        headers={"Content-Disposition": f'attachment; filename="{key}.{kind}"'})

    return app


def serve(model, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits()) -> None:
    """Serve ``model`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(model, limits), host=host, port=port, log_level="info")
