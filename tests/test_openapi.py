"""The OpenAPI document tells the truth, /docs and /redoc work offline, and schemathesis finds no failure.

Schemathesis runs as `st run` would in CI, against a REAL uvicorn server on 127.0.0.1 that needs a token.
A photo field is declared as an image (`encoding: photo: contentType: image/*`); this module, loaded as
schemathesis' hooks (SCHEMATHESIS_HOOKS=test_openapi), makes real small JPEG and PNG photos for it, so the
answers of /api/predict are checked against the documented schema too. By hand:

    PYTHONPATH=src:tests SCHEMATHESIS_HOOKS=test_openapi st run http://127.0.0.1:PORT/openapi.json \\
        --checks all -H 'Authorization: Bearer TOKEN'
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def _photo(draw_size, colour, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", draw_size, colour).save(buf, format=fmt)
    return buf.getvalue()


def register_photo_strategies() -> None:
    """Schemathesis hooks: real photos for parts declared image/* (any bytes would be 415, rightly)."""
    import schemathesis
    from hypothesis import strategies as st

    sizes = st.tuples(st.integers(1, 96), st.integers(1, 96))  # down to 1 px (test_explain_of_a_tiny_photo)
    colours = st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
    for media, fmt in (("image/jpeg", "JPEG"), ("image/png", "PNG")):
        schemathesis.openapi.media_type(media, st.builds(_photo, sizes, colours, st.just(fmt)))


if os.environ.get("SCHEMATHESIS_HOOKS") == __name__:  # loaded by schemathesis as its hooks module
    register_photo_strategies()
else:
    pytest.importorskip("fastapi", reason="the server needs fastapi")
    httpx = pytest.importorskip("httpx")
    from servers import RunningServer  # noqa: E402
    from test_serve import TOKEN, assert_error  # noqa: E402

    from geopin.serve.app import ServeConfig, create_app  # noqa: E402

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


@pytest.fixture(scope="module")
def token_server(predictor):
    # 8 occlusion passes, not 100: schemathesis asks for explanations too, and the run must stay short
    s = RunningServer(create_app(ServeConfig(token=TOKEN, max_upload_mb=1.0, occlusion_max_passes=8), predictor))
    yield s
    s.close()


@pytest.fixture(scope="module")
def open_server(predictor):
    s = RunningServer(create_app(ServeConfig(), predictor))
    yield s
    s.close()


def _local_assets(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(r"""url:\s*["']([^"']+)["']""", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(open_server, page):
    r = open_server.client.get(page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    refs = _local_assets(r.text)
    assert refs, r.text
    assert not re.search(r"https?://", r.text), "the page refers to another host: it would be blank offline"
    for ref in refs:
        assert ref.startswith("/"), ref
        got = open_server.client.get(ref)
        assert got.status_code == 200, (ref, got.status_code)
        assert len(got.content) > 100, ref
    assert "/openapi.json" in refs or "/openapi.json" in r.text


def test_errors_are_documented_as_they_are_sent(token_server):
    doc = token_server.client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert schemas["ErrorBody"]["required"] == ["error", "detail"]
    assert "HTTPValidationError" not in schemas  # FastAPI's default 422 body is never sent
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, resp in op["responses"].items():
                if status.startswith(("4", "5")):
                    ref = resp["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/ErrorBody", (method, path, status)
    predict = doc["paths"]["/api/predict"]["post"]
    assert {"401", "408", "413", "415", "422", "503", "504"} <= set(predict["responses"])
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Prediction")
    assert {"lat", "lon", "most_likely", "top_k", "regions", "within_km", "summary", "evidence", "exif_gps"} <= set(
        schemas["Prediction"]["required"])
    assert "422" in doc["paths"]["/api/cells"]["get"]["responses"]
    # the token: HTTP bearer, on every /api route, and the sent 401 matches the documented body
    assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"],
                                                              "type": "http", "scheme": "bearer"}
    assert all(op["security"] == [{"bearer": []}] for p, ops in doc["paths"].items() if p.startswith("/api")
               for op in ops.values())
    assert_error(token_server.client.get("/api/health"), 401, "unauthorized")


def test_no_security_scheme_without_a_token(open_server):
    doc = open_server.client.get("/openapi.json").json()
    assert "securitySchemes" not in doc.get("components", {})
    assert "401" not in doc["paths"]["/api/predict"]["post"]["responses"]


def test_a_real_answer_matches_the_documented_schema(token_server):
    """The 200 schema is checked against a real prediction here, whatever schemathesis happens to draw."""
    jsonschema = pytest.importorskip("jsonschema")
    doc = token_server.client.get("/openapi.json").json()
    r = token_server.client.post("/api/predict", files={"photo": ("p.png", _photo((40, 30), (10, 120, 200), "PNG"))},
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    schema = {"$ref": "#/components/schemas/Prediction", "components": doc["components"]}
    jsonschema.validate(r.json(), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**r.json(), "most_likely": None}, schema)


def test_tokens_pattern_is_exactly_what_s2_accepts():
    """The documented pattern of /api/cells?tokens= accepts a token iff S2 calls it a valid, canonical cell."""
    s2sphere = pytest.importorskip("s2sphere")
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from geopin.serve.geojson import TOKENS_PATTERN, cell_polygons, split_tokens

    pattern = re.compile(TOKENS_PATTERN)

    @settings(max_examples=400, deadline=None)
    @given(st.text("0123456789abcdef", min_size=1, max_size=16))
    def hex_tokens(token):
        cid = s2sphere.CellId.from_token(token)
        assert bool(pattern.match(token)) == (cid.is_valid() and cid.to_token() == token), token

    @settings(max_examples=100, deadline=None)
    @given(st.from_regex(TOKENS_PATTERN, fullmatch=True))
    def documented_ones_are_served(tokens):
        assert cell_polygons(split_tokens(tokens))["type"] == "FeatureCollection"

    hex_tokens()
    documented_ones_are_served()


def test_schemathesis_finds_no_failure(token_server, tmp_path):
    pytest.importorskip("schemathesis")
    import shutil

    st_cli = shutil.which("st")
    cmd = [st_cli] if st_cli else [sys.executable, "-m", "schemathesis.cli"]
    cmd += ["run", f"{token_server.url}/openapi.json", "--checks", "all", "-H", f"Authorization: Bearer {TOKEN}",
            "--max-examples", "5", "--seed", "23", "--request-timeout", "30", "--max-response-time", "20",
            "--workers", "1"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "test_openapi",
           "PYTHONPATH": os.pathsep.join([str(HERE), str(SRC), os.environ.get("PYTHONPATH", "")]),
           "NO_COLOR": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    tested = re.search(r"(\d+) generated", out)
    assert tested and int(tested.group(1)) >= 30, out[-3000:]  # it really ran cases, not only loaded the schema


def test_explain_of_a_tiny_photo(token_server):
    """A 5x5 photo is explained (its occlusion boxes shrink to points) instead of failing with a 500."""
    r = token_server.client.post("/api/explain", files={"photo": ("t.png", _photo((5, 5), (10, 100, 50), "PNG"))},
                                 data={"occlusion": "true"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text


def test_unauthorized_upload_is_read_before_the_401(token_server):
    """The 401 comes after the body is read and dropped: a client still sending sees the answer, not a reset."""
    big = _photo((600, 600), (1, 2, 3), "PNG") + b"\0" * 200_000
    r = token_server.client.post("/api/predict", files={"photo": ("p.png", big)})
    assert_error(r, 401, "unauthorized")
