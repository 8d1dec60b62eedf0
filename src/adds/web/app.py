"""FastAPI app of the web demo: ``create_app(tagger)``.

Routes:

* ``GET /`` -- the page (``static/index.html`` + ``app.js`` + ``style.css``): upload an image, type labels, see scored
  tags as bars.
* ``GET /api/info`` -- what the server runs (:meth:`Tagger.describe` plus upload limits).
* ``POST /api/tag`` -- multipart form: ``image`` (the file), ``labels`` (comma- or newline-separated words, the
  same rules as ``adds tag --labels`` and the Python API: a repeated or blank label is refused, never merged;
  empty = the tagger's default vocabulary), ``threshold`` (empty = the tagger's thresholds), ``top_k`` (empty = the page
  default). Answers ``{"tags": [{"label", "score"}, ...], ...}`` -- exactly what ``tagger(image, labels, threshold,
  top_k)`` returns for the uploaded file -- or HTTP 400 with ``{"detail": reason}`` for a bad image or field, 413
  for an upload over the size limit.

Requests are served one at a time through the tagger (a lock): the model is the bottleneck, not the web server.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from adds.data.images import ImageLoadError
from adds.prompts import validate_labels
from adds.tagger import Tagger, split_label_text

__all__ = ["WebConfig", "create_app", "parse_label_text"]

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"


@dataclass(frozen=True)
class WebConfig:
    """Limits of the demo server.

    Attributes:
        max_upload_bytes: largest accepted upload (bigger ones get HTTP 413).
        max_labels: most labels one request may type.
        default_top_k: tags shown when the request gives no ``top_k``.
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_labels: int = 5000
    default_top_k: int = 20


def parse_label_text(text: str) -> list[str] | None:
    """Labels typed in the page -> a checked list, or ``None`` for an empty box (the default vocabulary).

    :func:`adds.tagger.split_label_text` and :func:`adds.prompts.validate_labels`: the rules of the CLI and the API.
    Raises ``ValueError`` for a duplicate.
    """
    words = split_label_text(text)
    return validate_labels(words) if words else None


def _optional_number(text: str, name: str, cast: type, low: float, high: float | None = None) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        value = cast(text)
    except ValueError as error:
        raise HTTPException(status_code=400, detail=f"{name} must be a number, got {text!r}") from error
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise HTTPException(status_code=400, detail=f"{name} must be {bound}, got {text}")
    return value


def create_app(tagger: Tagger, config: WebConfig | None = None) -> FastAPI:
    """The demo app around ``tagger`` (see the module docstring for the routes)."""
    config = config or WebConfig()
    app = FastAPI(title="adds: tag images with any words", docs_url=None, redoc_url=None)
    app.state.tagger = tagger
    lock = threading.Lock()
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return (STATIC_DIR / "index.html").read_text(encoding="utf-8")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {**tagger.describe(), "max_upload_bytes": config.max_upload_bytes, "max_labels": config.max_labels,
                "default_top_k": config.default_top_k}

    @app.post("/api/tag")
    def tag(
        image: Annotated[UploadFile, File()],
        labels: Annotated[str, Form()] = "",
        threshold: Annotated[str, Form()] = "",
        top_k: Annotated[str, Form()] = "",
    ) -> dict[str, Any]:
        try:
            words = parse_label_text(labels)
        except ValueError as error:
            raise HTTPException(status_code=400, detail=f"labels: {error}") from error
        if words is not None and len(words) > config.max_labels:
            raise HTTPException(status_code=400, detail=f"at most {config.max_labels} labels, got {len(words)}")
        threshold_value = _optional_number(threshold, "threshold", float, 0.0, 1.0)
        k = _optional_number(top_k, "top_k", int, 1) or config.default_top_k
        data = image.file.read(config.max_upload_bytes + 1)
        name = image.filename or "upload"
        if len(data) > config.max_upload_bytes:
            raise HTTPException(status_code=413, detail=f"{name} is larger than {config.max_upload_bytes} bytes")
        extension = os.path.splitext(name)[1]
        suffix = extension if re.fullmatch(r"\.[A-Za-z0-9]{1,9}", extension) else ""  # never a path from the client
        with tempfile.TemporaryDirectory(prefix="adds-upload-") as folder:
            path = os.path.join(folder, "image" + suffix)
            with open(path, "wb") as handle:
                handle.write(data)
            try:
                prepared = tagger.prepare(path)
            except ImageLoadError as error:
                raise HTTPException(status_code=400, detail=f"{name}: {error.reason}") from error
        try:
            with lock:
                vocabulary = words if words is not None else tagger.labels
                scores = tagger.score_prepared([prepared], vocabulary)  # (1, k)
                tags = tagger.select(scores, vocabulary, threshold_value, k)[0]
        except ValueError as error:
            raise HTTPException(status_code=400, detail=str(error)) from error
        height, width = prepared.size
        logger.info("tagged %s (%dx%d) with %d labels", name, width, height, len(vocabulary))
        return {
            "tags": tags,
            "labels": len(vocabulary),
            "vocabulary": "typed" if words is not None else "default",
            "threshold": threshold_value,
            "top_k": k,
            "image": {"name": name, "width": width, "height": height},
        }

    return app
