"""The HTTP service, for real: uvicorn on 127.0.0.1, talked to over HTTP."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import stat
import struct
import time
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from ecomarine import ConfigError, Gallery, Pipeline  # noqa: E402
from ecomarine.serve import ServeConfig, create_app, free_port, serve  # noqa: E402

from .helpers import LiveServer, example_catalogue  # noqa: E402

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def catalogue(examples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real gallery (the examples' belugas), in a folder the test may write."""
    return example_catalogue(examples_dir, tmp_path_factory.mktemp("serve") / "gallery")


@pytest.fixture(scope="module")
def service(catalogue: Path) -> Iterator[tuple[LiveServer, Pipeline]]:
    pipe = Pipeline.from_pretrained("embedded", gallery=catalogue, device="cpu")
    config = ServeConfig(
        token=TOKEN,
        gallery_dir=str(catalogue),
        max_wait_ms=30,
        max_upload_bytes=8 * 1024 * 1024,
        max_files=16,
        max_zip_uncompressed=4 * 1024 * 1024,
    )
    with LiveServer(create_app(pipe, config)) as server:
        yield server, pipe


@pytest.fixture(scope="module")
def photos(examples_dir: Path) -> list[Path]:
    return sorted((examples_dir / "belugas" / "queries").glob("*.jpg"))


def healthy(url: str) -> None:
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}


def error_of(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"}
    if code is not None:
        assert body["error"] == code, body
    return body  # type: ignore[no-any-return]


def zip_of(entries: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


# --- endpoints -------------------------------------------------------------------------------


def test_health_ready_and_model(
    service: tuple[LiveServer, Pipeline], caplog: pytest.LogCaptureFixture
) -> None:
    server, pipe = service
    healthy(server.url)
    caplog.set_level(logging.INFO, logger="ecomarine.serve")
    r = httpx.get(f"{server.url}/health", headers={"X-Request-ID": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"
    assert len(httpx.get(f"{server.url}/health").headers["x-request-id"]) == 16  # made up
    weird = httpx.get(f"{server.url}/health", headers={"X-Request-ID": "a b;c"})
    assert weird.headers["x-request-id"] != "a b;c"  # not echoed into logs as given
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ecomarine.serve"]
    assert any(
        x["request_id"] == "trace-42" and x["path"] == "/health" and x["status"] == 200
        for x in logged
    )
    assert httpx.get(f"{server.url}/ready").json() == {"ready": True}
    model = httpx.get(f"{server.url}/v1/model", headers=AUTH).json()
    assert model["model"] == pipe.identifier.config.name
    assert model["fingerprint"] == pipe.identifier.fingerprint("embedding")
    assert model["gate"]["threshold"] == pytest.approx(pipe.gate.threshold)  # type: ignore[union-attr]
    assert len(model["gate"]["fingerprint"]) == 16
    assert model["license"].startswith("Apache-2.0")
    assert model["gallery"]["individuals"] == len(pipe.gallery.individuals())  # type: ignore[union-attr]
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/predict", "/v1/predict-batch", "/v1/sightings", "/v1/individuals"} <= set(
        schema["paths"]
    )


def test_a_token_is_required_and_compared_whole(service: tuple[LiveServer, Pipeline]) -> None:
    server, _ = service
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        r = httpx.get(f"{server.url}/v1/model", headers=headers)
        error_of(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
    wrong = {"Authorization": f"Bearer {TOKEN}x"}
    error_of(httpx.get(f"{server.url}/v1/model", headers=wrong), 401)
    assert httpx.get(f"{server.url}/health").status_code == 200  # liveness stays open


def test_predict_equals_the_library(
    service: tuple[LiveServer, Pipeline], photos: list[Path]
) -> None:
    server, pipe = service
    photo = photos[0]
    expected = pipe.predict(photo)
    with photo.open("rb") as fh:
        r = httpx.post(
            f"{server.url}/v1/predict", headers=AUTH, files={"file": (photo.name, fh, "image/jpeg")}
        )
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["source"] == photo.name
    assert got["individual_id"] == expected.individual_id
    assert got["is_new_individual"] == expected.is_new_individual
    assert [c["individual_id"] for c in got["candidates"]] == [
        c.individual_id for c in expected.candidates
    ]
    np.testing.assert_allclose(
        [c["score"] for c in got["candidates"]], [c.score for c in expected.candidates], atol=1e-4
    )
    assert got["gate_score"] == pytest.approx(expected.gate_score, abs=1e-4)
    assert got["sha256"] == expected.sha256
    # The raw body works too.
    raw = httpx.post(
        f"{server.url}/v1/predict",
        headers={**AUTH, "content-type": "image/jpeg"},
        content=photo.read_bytes(),
    )
    assert raw.status_code == 200
    assert raw.json()["individual_id"] == expected.individual_id


def test_predict_batch_streams_one_line_per_photo_in_order(
    service: tuple[LiveServer, Pipeline], photos: list[Path]
) -> None:
    server, _ = service
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos[:3]]
    files.insert(1, ("files", ("broken.jpg", b"\xff\xd8\xff garbage", "image/jpeg")))
    r = httpx.post(f"{server.url}/v1/predict-batch", headers=AUTH, files=files)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [x["source"] for x in lines] == [
        photos[0].name,
        "broken.jpg",
        *[p.name for p in photos[1:3]],
    ]
    assert lines[1]["rejection_reason"] == "unreadable_image"
    assert all(x["rejection_reason"] is None for x in lines[::2])
    # The same photos as a ZIP (names as in the archive), raw or as a multipart part.
    archive = zip_of({f"trip/{p.name}": p.read_bytes() for p in photos[:2]})
    for kwargs in (
        {"content": archive, "headers": {**AUTH, "content-type": "application/zip"}},
        {"files": {"files": ("trip.zip", archive, "application/zip")}, "headers": AUTH},
    ):
        z = httpx.post(f"{server.url}/v1/predict-batch", **kwargs)  # type: ignore[arg-type]
        assert z.status_code == 200, z.text
        assert [json.loads(x)["source"] for x in z.text.splitlines()] == [
            f"trip/{p.name}" for p in photos[:2]
        ]


def test_requests_from_many_clients_share_forward_passes(
    service: tuple[LiveServer, Pipeline], photos: list[Path]
) -> None:
    server, _ = service
    before = httpx.get(f"{server.url}/v1/model", headers=AUTH).json()["served"]
    data = photos[0].read_bytes()

    def one(_: int) -> int:
        r = httpx.post(
            f"{server.url}/v1/predict",
            headers={**AUTH, "content-type": "image/jpeg"},
            content=data,
            timeout=60,
        )
        return r.status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(16))) == [200] * 16
    after = httpx.get(f"{server.url}/v1/model", headers=AUTH).json()["served"]
    assert after["photos"] - before["photos"] == 16
    assert after["batches"] - before["batches"] < 16  # some requests rode together


def test_sightings(service: tuple[LiveServer, Pipeline], examples_dir: Path) -> None:
    server, pipe = service
    folder = sorted((examples_dir / "belugas" / "sightings").iterdir())[0]
    shots = sorted(folder.glob("*.jpg"))
    expected = pipe.predict_sightings({folder.name: shots})[0]
    r = httpx.post(
        f"{server.url}/v1/sightings",
        headers=AUTH,
        data={"sighting_id": folder.name},
        files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in shots],
    )
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["sighting_id"] == folder.name
    assert got["individual_id"] == expected.individual_id
    assert [p["source"] for p in got["photos"]] == [p.name for p in shots]


def test_individuals_and_enrolment(
    service: tuple[LiveServer, Pipeline], catalogue: Path, photos: list[Path]
) -> None:
    server, pipe = service
    listing = httpx.get(f"{server.url}/v1/individuals", headers=AUTH).json()["individuals"]
    assert {x["individual_id"] for x in listing} == set(pipe.gallery.individuals())  # type: ignore[union-attr]
    one = listing[0]
    got = httpx.get(f"{server.url}/v1/individuals/{one['individual_id']}", headers=AUTH).json()
    assert got == one
    error_of(
        httpx.get(f"{server.url}/v1/individuals/nobody", headers=AUTH), 404, "unknown_individual"
    )
    before = len(Gallery.load(catalogue))

    def enroll(i: int) -> httpx.Response:
        p = photos[2 + i]
        return httpx.post(
            f"{server.url}/v1/individuals/whale-new-{i}/photos",
            headers=AUTH,
            data={"species": "beluga"},
            files={"files": (p.name, p.read_bytes(), "image/jpeg")},
            timeout=60,
        )

    with ThreadPoolExecutor(2) as pool:  # concurrent writers are serialised, none lost
        answers = list(pool.map(enroll, range(2)))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert all(a.json()["added"] == 1 for a in answers)
    saved = Gallery.load(catalogue)
    assert len(saved) == before + 2
    assert {"whale-new-0", "whale-new-1"} <= set(saved.individuals())
    new = httpx.get(f"{server.url}/v1/individuals/whale-new-0", headers=AUTH).json()
    assert new["photos"] == 1
    assert new["species"] == "beluga"
    # The same photo again is a duplicate, skipped, not added twice.
    again = enroll(0).json()
    assert again["added"] == 0
    assert again["skipped_duplicates"] == 1
    error_of(
        httpx.post(
            f"{server.url}/v1/individuals/%01bad/photos",
            headers=AUTH,
            files={"files": ("a.jpg", b"x", "image/jpeg")},
        ),
        400,
        "bad_id",
    )


# --- every error path, and the server healthy afterwards --------------------------------------


def test_bad_requests_get_json_errors_and_the_server_keeps_answering(
    service: tuple[LiveServer, Pipeline], photos: list[Path]
) -> None:
    server, _ = service
    url = server.url
    jpeg = photos[0].read_bytes()

    def post(path: str, **kw: Any) -> httpx.Response:
        return httpx.post(f"{url}{path}", headers={**AUTH, **kw.pop("headers", {})}, **kw)

    # Garbage bytes, an empty body, a wrong media type.
    error_of(
        post("/v1/predict", content=b"not an image", headers={"content-type": "image/jpeg"}),
        422,
        "unreadable_image",
    )
    error_of(
        post("/v1/predict", content=b"", headers={"content-type": "image/jpeg"}), 400, "no_photos"
    )
    error_of(post("/v1/predict-batch", content=b"x", headers={"content-type": "text/plain"}), 415)
    error_of(
        post("/v1/predict", files=[("a", ("a.jpg", jpeg)), ("b", ("b.jpg", jpeg))]),
        400,
        "one_photo",
    )
    # A decompression bomb in pixels (a tiny PNG that claims 100,000 x 100,000): refused
    # from its header, before decoding; in a batch it is a row with the reason.
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    png = io.BytesIO()
    Image.new("L", (1, 1)).save(png, format="PNG")
    small = png.getvalue()
    bomb_png = (
        small[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + small[33:]
    )
    error_of(
        post("/v1/predict", content=bomb_png, headers={"content-type": "image/png"}),
        413,
        "image_too_large",
    )
    rows = post("/v1/predict-batch", files={"files": ("huge.png", bomb_png, "image/png")})
    assert json.loads(rows.text)["rejection_reason"] == "image_too_large"
    # Oversized upload: refused from the Content-Length, and from the bytes when chunked.
    big = b"\xff" * (9 * 1024 * 1024)
    error_of(
        post("/v1/predict", content=big, headers={"content-type": "image/jpeg"}), 413, "too_large"
    )
    error_of(
        post(
            "/v1/predict",
            content=iter([big[:5_000_000], big[5_000_000:]]),
            headers={"content-type": "image/jpeg"},
        ),
        413,
        "too_large",
    )
    # Truncated multipart.
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        + jpeg[:500]
    )
    error_of(
        post(
            "/v1/predict",
            content=body,
            headers={"content-type": "multipart/form-data; boundary=XyZ"},
        ),
        400,
        "truncated_multipart",
    )
    # ZIPs: a bomb, too much data, traversal and absolute names, a symlink, a nested archive,
    # too many entries, and bytes that are no archive at all.
    zc = {"content-type": "application/zip"}
    bomb = zip_of({"zeros.jpg": b"\0" * (3 * 1024 * 1024)})
    assert len(bomb) < 20_000
    error_of(post("/v1/predict-batch", content=bomb, headers=zc), 413, "zip_bomb")
    rng = np.random.default_rng(0)
    noise = {f"n{i}.jpg": rng.bytes(1_500_000) for i in range(3)}
    error_of(post("/v1/predict-batch", content=zip_of(noise), headers=zc), 413, "zip_too_large")
    for name in ("../evil.jpg", "/etc/evil.jpg", "a/../../evil.jpg", "C:/evil.jpg", "a\\..\\b.jpg"):
        error_of(
            post("/v1/predict-batch", content=zip_of({name: jpeg}), headers=zc), 400, "unsafe_name"
        )
    error_of(
        post("/v1/predict-batch", content=zip_of({"a.jpg": jpeg}, symlink="link.jpg"), headers=zc),
        400,
        "symlink_entry",
    )
    inner = zip_of({"a.jpg": jpeg})
    error_of(
        post("/v1/predict-batch", content=zip_of({"inner.zip": inner}), headers=zc),
        400,
        "nested_archive",
    )
    error_of(
        post("/v1/predict-batch", content=zip_of({"inner.jpg": inner}), headers=zc),
        400,
        "nested_archive",
    )
    many = zip_of({f"{i}.jpg": b"x" for i in range(17)})
    error_of(post("/v1/predict-batch", content=many, headers=zc), 413, "too_many_files")
    error_of(post("/v1/predict-batch", content=b"PK\x03\x04 broken", headers=zc), 400, "bad_zip")
    # Unknown paths and methods.
    error_of(httpx.get(f"{url}/v1/nothing", headers=AUTH), 404)
    error_of(httpx.get(f"{url}/v1/predict", headers=AUTH), 405)
    # Still healthy, still right.
    healthy(url)
    r = post("/v1/predict", content=jpeg, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200


def test_a_read_only_service_refuses_enrolment(catalogue: Path, photos: list[Path]) -> None:
    pipe = Pipeline.from_pretrained("embedded", gallery=catalogue, device="cpu")
    with LiveServer(create_app(pipe, ServeConfig())) as server:  # no token on loopback: allowed
        r = httpx.post(
            f"{server.url}/v1/individuals/x/photos",
            files={"files": ("a.jpg", photos[0].read_bytes(), "image/jpeg")},
        )
        error_of(r, 409, "read_only")
        assert httpx.get(f"{server.url}/v1/model").status_code == 200


def test_binding_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    pipe = Pipeline.from_pretrained("embedded", device="cpu")
    with pytest.raises(ConfigError, match="token"):
        serve(pipe, ServeConfig(), host="0.0.0.0")
    with pytest.raises(ConfigError, match="16 characters"):
        ServeConfig(token="short")
    from ecomarine.cli import main

    assert main(["serve", "--host", "0.0.0.0"]) == 2
    short = tmp_path / "token"
    short.write_text("abc\n")
    assert main(["serve", "--host", "0.0.0.0", "--token-file", str(short)]) == 2
    assert main(["serve", "--gallery", str(tmp_path)]) == 2  # not a gallery


def test_shutdown_finishes_in_flight_requests(photos: list[Path]) -> None:
    pipe = Pipeline.from_pretrained("embedded", device="cpu")
    server = LiveServer(create_app(pipe, ServeConfig(max_wait_ms=200)))
    with server:
        data = photos[0].read_bytes()
        with ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(
                    httpx.post,
                    f"{server.url}/v1/predict",
                    content=data,
                    headers={"content-type": "image/jpeg"},
                    timeout=60,
                )
                for _ in range(4)
            ]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # wait until all four are in the queue
                if httpx.get(f"{server.url}/v1/model").json()["served"]["waiting"] == 4:
                    break
                time.sleep(0.01)
            server.server.should_exit = True  # now stop: they must still be answered
            assert [f.result().status_code for f in futures] == [200] * 4


# --- fuzzing from the service's own OpenAPI schema ---------------------------------------------


def test_fuzzing_from_the_openapi_schema_finds_no_server_error(
    service: tuple[LiveServer, Pipeline], photos: list[Path]
) -> None:
    from urllib.parse import quote

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    server, _ = service
    schema = httpx.get(f"{server.url}/openapi.json").json()
    operations = [
        (path, method, op)
        for path, ops in sorted(schema["paths"].items())
        for method, op in sorted(ops.items())
    ]
    jpeg = photos[0].read_bytes()
    ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
    payload = st.one_of(
        st.binary(max_size=2000),
        st.integers(0, len(jpeg)).map(lambda n: jpeg[:n]),  # a real photo, cut anywhere
        st.just(jpeg),
    )

    @st.composite
    def zips(draw: st.DrawFn) -> bytes:
        entries = draw(st.dictionaries(st.text(min_size=1, max_size=20), payload, max_size=3))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in entries.items():
                zf.writestr(name, data)
        raw = buf.getvalue()
        cut = draw(st.integers(0, len(raw)))
        return raw if draw(st.booleans()) else raw[:cut]

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def one_request(data: st.DataObject) -> None:
        path, method, op = data.draw(st.sampled_from(operations))
        for name in re.findall(r"{(\w+)}", path):
            path = path.replace("{" + name + "}", quote(data.draw(st.text(max_size=30)), safe=""))
        headers = data.draw(
            st.sampled_from([AUTH, AUTH, AUTH, {}, {"Authorization": "Bearer x"}])
            | ascii_text.map(lambda t: {"Authorization": f"Bearer {t}".strip()})
        )
        kwargs: dict[str, Any] = {}
        declared = sorted(op.get("requestBody", {}).get("content", {}))
        ctype = data.draw(st.sampled_from([*declared, "text/plain", "application/json", ""]))
        if ctype == "multipart/form-data":
            names = st.sampled_from(["file", "files", "sighting_id", "species"]) | ascii_text
            parts = data.draw(st.lists(st.tuples(names, ascii_text, payload), max_size=3))
            kwargs["files"] = [(n, (f, d, "image/jpeg")) for n, f, d in parts]
            if data.draw(st.booleans()):
                kwargs["data"] = {"sighting_id": data.draw(st.text(max_size=40))}
        elif ctype:
            body = data.draw(zips() if "zip" in ctype else payload)
            kwargs["content"] = body
            headers = {**headers, "content-type": ctype}
        response = httpx.request(
            method.upper(), f"{server.url}{path}", headers=headers, timeout=60, **kwargs
        )
        assert response.status_code < 500, (method, path, response.text)
        if response.status_code >= 400:
            assert set(response.json()) == {"error", "detail"}

    one_request()
    healthy(server.url)


def test_the_documented_shell_and_javascript_clients_work(
    service: tuple[LiveServer, Pipeline], examples_dir: Path, photos: list[Path]
) -> None:
    import os
    import subprocess

    server, pipe = service
    env = {**os.environ, "ECOMARINE_URL": server.url, "ECOMARINE_TOKEN": TOKEN}
    expected = pipe.predict(photos[0])
    if shutil.which("curl") and shutil.which("bash"):
        script = examples_dir / "service" / "predict.sh"
        out = subprocess.run(
            ["bash", str(script), str(photos[0]), str(photos[1])],
            env=env, capture_output=True, text=True, timeout=120, check=True,
        ).stdout.splitlines()  # fmt: skip
        assert json.loads(out[0])["individual_id"] == expected.individual_id
        assert [json.loads(x)["source"] for x in out[1:]] == [photos[0].name, photos[1].name]
    if shutil.which("node"):
        script = examples_dir / "service" / "predict.mjs"
        done = subprocess.run(
            ["node", str(script), str(photos[0])],
            env=env, capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        first = done.stdout.splitlines()[0]
        verdict = "new individual" if expected.is_new_individual else expected.individual_id
        assert first == f"{photos[0].name}: {verdict}"
        wrong = subprocess.run(
            ["node", str(script), str(photos[0])],
            env={**env, "ECOMARINE_TOKEN": "x" * 20},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert wrong.returncode == 1
        assert "error 401 unauthorized" in wrong.stderr


def test_the_cli_serves_and_stops_gracefully(tmp_path: Path, photos: list[Path]) -> None:
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ecomarine",
            "serve",
            "--port",
            str(port),
            "--token-file",
            str(token),
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        r = httpx.post(
            f"{url}/v1/predict",
            headers={**AUTH, "content-type": "image/jpeg"},
            content=photos[0].read_bytes(),
            timeout=60,
        )
        assert r.status_code == 200
        error_of(httpx.get(f"{url}/v1/model"), 401, "unauthorized")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    # uvicorn shuts down cleanly, then re-raises the signal it caught (exit by SIGTERM).
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err
    assert '"path": "/v1/predict", "status": 200' in err  # the access log, with request ids
