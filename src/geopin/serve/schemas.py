"""What the API answers, as pydantic models: the OpenAPI document is built from these, so /docs and
schemathesis see the same shapes the handlers return.

The models describe, they do not filter: handlers return plain JSON (the fields of `geopin predict
--json`), and every model allows extra fields, so a new field in the answer never breaks a client
that validates against an older document.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from geopin.locate.answer import REGION_MAX_CELLS


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(BaseModel):
    """Every error the server sends, whatever the route or status."""

    error: str = Field(description="Stable reason code, e.g. not_an_image, upload_too_large, timeout, busy.")
    detail: str = Field(description="What went wrong, for people: names the input and the reason.")


class Place(_Open):
    lat: float
    lon: float
    cell: str | None = Field(None, description="S2 cell token of the place.")
    country: str | None = Field(None, description="ISO 3166-1 alpha-2 code.")
    country_name: str | None = None
    probability: float = Field(description="Posterior probability of the place.")
    near: str | None = Field(None, description="Nearest town (GeoNames).")


class TopPlace(Place):
    is_guess: bool = Field(description="True for the best guess (listed first).")


class Evidence(_Open):
    source: str
    read: str | None = None
    points_to: str
    weight: float
    probability_before: float | None = None
    probability_after: float | None = None


class LatLon(BaseModel):
    lat: float
    lon: float


class Prediction(_Open):
    """One element of `geopin predict --json`."""

    path: str = Field(description="The uploaded file's name.")
    lat: float = Field(description="Best guess: the point of least expected distance.")
    lon: float
    most_likely: Place = Field(description="The single most probable place.")
    top_k: list[TopPlace] = Field(description="The best guess first, then the most probable places.")
    regions: dict[str, list[str]] = Field(
        description='{"50%": [cell tokens], "90%": [...]}: the smallest sets of places holding that much of the '
                    "posterior, each as S2 cells of ONE level (the finest of its places' cells at which it is at most "
                    f"{REGION_MAX_CELLS:,} cells: coarser places split into their children, finer ones and training photos' own spots "
                    "become the cell of that level holding them), the most probable place's cells first. A region "
                    "holds at least its share; the 90 % region holds the 50 % one.")
    within_km: dict[str, float] = Field(description="Probability that the photo is within that many km of the guess.")
    summary: str
    evidence: list[Evidence] = Field(description="What was read off the photo, and how it moved the answer.")
    text_read: bool | None = Field(None, description="Whether the photo was read (OCR): the model's text gate reads only "
                                                     "the photos it expects text on. Absent when the server reads no text.")
    scene: dict[str, Any] | None = None
    exif_gps: LatLon | None = Field(description="The position in the photo's EXIF, when it has one.")


class Explanation(_Open):
    path: str
    target: dict[str, Any]
    gradcam: dict[str, Any] = Field(description="Grad-CAM overlay (png_base64) and layer (layer_png_base64).")
    occlusion: dict[str, Any] | None = Field(description="Occlusion map and its top crops; null when not asked for.")
    prediction: dict[str, Any]
    text: dict[str, Any] | None = None
    seconds: dict[str, float]


class Health(_Open):
    status: str
    model_loaded: bool
    backbone: str
    backbone_version: str
    n_classes: list[int]
    granularities: list[Any]
    version: str
    explain: bool
    max_upload_mb: float
    text: dict[str, Any] | None = Field(None, description="Text reading: whether photos are read (reads), the --text mode, "
                                                           "whether the model has a text gate, photos being read now, and how "
                                                           "many the gate sent were answered unread because the reader was busy.")


class CellCollection(_Open):
    type: str = Field(description='"FeatureCollection".')
    features: list[dict[str, Any]]


#: What each error status means on this server (the descriptions /docs shows).
ERROR_MEANINGS = {
    400: "The request body is not valid multipart/form-data.",
    401: "A token is required: send 'Authorization: Bearer <token>'.",
    408: "The upload did not arrive within the server's time limit (--timeout-s).",
    413: "The upload, or the photo's pixel count, is over the limit.",
    415: "The bytes are not a photo geopin can read (judged by content, not name).",
    422: "A field is missing or out of range, or the photo is empty, truncated or has no pixels, "
         "or a cell token or target names no place.",
    500: "The model failed on this photo; the server goes on.",
    501: "Explanations are not installed in this geopin.",
    503: "Too many requests are waiting; retry after Retry-After seconds.",
    504: "The request took longer than the server's time limit (--timeout-s), queueing included.",
}


def image_response(media_type: str, description: str) -> dict[int | str, dict]:
    """FastAPI `responses=` for a 200 that is an image's bytes, not JSON (e.g. /api/preview's JPEG)."""
    return {200: {"description": description, "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}}


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """FastAPI `responses=` for these statuses, all with the {error, detail} body."""
    return {s: {"model": ErrorBody, "description": ERROR_MEANINGS[s]} for s in statuses}


__all__ = [
    "ERROR_MEANINGS",
    "CellCollection",
    "ErrorBody",
    "Explanation",
    "Health",
    "Place",
    "Prediction",
    "TopPlace",
    "error_responses",
    "image_response",
]
