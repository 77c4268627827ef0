"""serve: the model behind HTTP gives predict's numbers, batches concurrent requests, refuses bad
input with a 4xx and one JSON line and keeps serving, guards its bind, and its page works in a
real browser.

Tiny models (MobileNet 0.25, a seeded random-init weights file, 32 and 48 px) served in-process
through FastAPI's TestClient; one real uvicorn (the page), one with two worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest

from bottleneck.cli import build_parser, main
from bottleneck.data.images import class_folders
from features.errors import UserError
from tests.helpers import ROOT

pytest.importorskip("fastapi", reason="serve needs the [serve] extra")
httpx = pytest.importorskip("httpx", reason="the tests need httpx (the [test] extra)")

from bottleneck.serve.app import create_app
from bottleneck.serve.model import LocalModel
from bottleneck.serve.options import ServeOptions


def _keras_network(head: str, weights: str, out: str) -> str:
    """A network as finetune saves it (the head's backbone and a seeded dense softmax head),
    without the training: what serve needs of a .keras is that load_network reads it."""
    from bottleneck.backbones.network import feature_model_from_provenance
    from bottleneck.finetune.transplant import build_network, random_spec, save_network
    from features.heads.headfile import load_head

    prov = load_head(head)["provenance"]
    body, _ = feature_model_from_provenance(prov, weights=weights)
    d_in = sum(int(np.prod(out.shape[1:])) for out in body.outputs)
    spec = random_spec(d_in, len(prov.class_names), seed=3)
    save_network(build_network(body, spec, prov.class_names, info={"route": "test"}), out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_heads, tiny_weights):
    """A head, a two-size ensemble (the suite's tiny_heads) and a fine-tuned-style network."""
    tmp = tmp_path_factory.mktemp("serve")
    made = tiny_heads
    head = made["heads"][0]
    return {"head": head, "ensemble": made["ensemble"],
            "keras": _keras_network(head, tiny_weights, str(tmp / "net.keras")),
            "tmp": tmp, "weights": tiny_weights}


@pytest.fixture(scope="module")
def images(tiny_folder, tmp_path_factory):
    """Three PNGs, a JPEG and a 1-bit BMP (TensorFlow refuses it; Pillow decodes it)."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("upload")
    pngs = [os.path.join(tiny_folder, c, min(os.listdir(os.path.join(tiny_folder, c))))
            for c in class_folders(tiny_folder)[:3]]
    with Image.open(pngs[0]) as img:
        img.convert("RGB").resize((60, 44)).save(tmp / "photo.jpg", quality=90)
        img.convert("1").save(tmp / "mono.bmp")
    return pngs + [str(tmp / "photo.jpg"), str(tmp / "mono.bmp")]


class AppClient:
    """Requests to an ASGI app in this process (httpx's ASGI transport), one event loop each."""

    def __init__(self, app):
        self.app = app

    def request(self, method: str, url: str, **kw) -> httpx.Response:
        async def send():
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
                return await client.request(method, url, **kw)

        return asyncio.run(send())

    def get(self, url, **kw):
        return self.request("GET", url, **kw)

    def post(self, url, **kw):
        return self.request("POST", url, **kw)


def _client(path, **settings) -> AppClient:
    return AppClient(create_app(LocalModel(ServeOptions(model=path, **settings))))


@pytest.fixture(scope="module")
def head_client(models):
    """The head behind small limits: 3 images a request, 64 KiB bodies, 0.01 megapixels."""
    return _client(models["head"], max_images=3, max_body_mb=1 / 16, max_megapixels=0.01)


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _post(client, paths, **kw):
    files = [("file", (os.path.basename(p), _read(p))) for p in paths]
    return client.post("/predict", files=files, **kw)


def _predict_cli(model, paths, capsys) -> dict:
    assert main(["predict", *paths, "--model", model, "--json", "--top-k", "4"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return {os.path.basename(r["path"]): r for r in rows}


def _assert_same_rows(served, predicted):
    assert [r["file"] for r in served] == list(predicted)
    for row in served:
        want = predicted[row["file"]]
        assert row["label"] == want["label"]
        assert [c for c, _ in row["top_k"]] == [c for c, _ in want["top_k"]]
        np.testing.assert_allclose([p for _, p in row["top_k"]], [p for _, p in want["top_k"]],
                                   atol=2e-6)


@pytest.mark.parametrize("kind", ["head", "ensemble", "keras"])
def test_served_numbers_are_predicts(kind, models, images, capsys):
    """One request with every image, and one request per image: predict's rows each time."""
    predicted = _predict_cli(models[kind], images, capsys)
    client = _client(models[kind], top_k=4)
    batch = _post(client, images)
    assert batch.status_code == 200, batch.text
    _assert_same_rows(batch.json()["predictions"], predicted)
    singles = [_post(client, [p]).json()["predictions"][0] for p in images]
    _assert_same_rows(singles, predicted)
    info = client.get("/info").json()
    assert info["kind"] == kind
    assert info["classes"] == class_folders(os.path.dirname(os.path.dirname(images[0])))
    assert info["image_sizes"] == ([32, 48] if kind == "ensemble" else [32])
    assert client.get("/health").json()["images"] == 2 * len(images)


def test_top_k_of_the_request(head_client, images):
    rows = _post(head_client, images[:1], params={"top_k": 2}).json()["predictions"]
    assert len(rows[0]["top_k"]) == 2
    assert len(_post(head_client, images[:1]).json()["predictions"][0]["top_k"]) == 3


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds almost none (an image bomb)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _jpeg(size=(40, 40)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), np.uint8)).save(
        out, "JPEG")
    return out.getvalue()


def _bad_requests(images):
    """(name, request keyword arguments, the status it must get)."""
    png = _read(images[0])
    return [
        ("not an image", {"files": [("file", ("notes.txt", b"plain text, not pixels"))]}, 415),
        ("truncated JPEG", {"files": [("file", ("cut.jpg", _jpeg()[:300]))]}, 422),
        ("image bomb", {"files": [("file", ("bomb.png", _png_header(100_000, 100_000)))]}, 413),
        ("over the pixel limit", {"files": [("file", ("big.png", _png_header(200, 200)))]}, 413),
        ("empty file", {"files": [("file", ("empty.png", b""))]}, 422),
        ("oversized body", {"files": [("file", ("big.bin", b"\0" * 100_000))]}, 413),
        ("wrong field name", {"files": [("image", ("a.png", png))]}, 422),
        ("a text field", {"data": {"file": "a.png"}}, 422),
        ("batch over the limit", {"files": [("file", (f"{i}.png", png)) for i in range(4)]}, 413),
        ("no body", {}, 422),
        ("bad top_k", {"files": [("file", ("a.png", png))], "params": {"top_k": 0}}, 422),
    ]


def test_bad_input_gets_a_4xx_line_and_the_server_keeps_serving(head_client, images):
    good = _post(head_client, images[:1]).json()
    for name, request, status in _bad_requests(images):
        response = head_client.post("/predict", **request)
        assert response.status_code == status, (name, response.status_code, response.text)
        body = response.json()
        assert list(body) == ["error"] and "\n" not in body["error"] and body["error"], name
        assert _post(head_client, images[:1]).json() == good, name


def test_a_chunked_body_over_the_limit_is_cut_off(head_client, images):
    """No Content-Length to refuse by: the limit is applied as the body streams in."""
    async def chunks():
        yield (b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(40):
            yield b"\0" * 4096

    response = head_client.post("/predict", content=chunks(),
                                headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413 and "--max-body-mb" in response.json()["error"]
    assert _post(head_client, images[:1]).status_code == 200


def test_batch_naming_the_bad_file(head_client, images):
    files = [("file", ("ok.png", _read(images[0]))),
             ("file", ("broken.png", b"\x89PNG\r\n\x1a\n broken"))]
    response = head_client.post("/predict", files=files)
    assert response.status_code in (415, 422) and response.json()["error"].startswith("broken.png")


def test_concurrent_requests_are_one_network_call(models, images, capsys):
    """Eight requests arriving together within --max-wait-ms run as one batch, and each gets
    its own image's row."""
    predicted = _predict_cli(models["head"], images[:4] * 2, capsys)
    model = LocalModel(ServeOptions(model=models["head"], max_wait_ms=400, top_k=4))
    app = create_app(model)

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            async def one(path):
                files = [("file", (os.path.basename(path), _read(path)))]
                return (await client.post("/predict", files=files)).json()["predictions"][0]

            return await asyncio.gather(*(one(p) for p in images[:4] * 2))

    rows = asyncio.run(burst())
    _assert_same_rows(rows[:4], predicted)
    _assert_same_rows(rows[4:], predicted)
    health = model.health()
    assert health["images"] == 8 and health["batches"] <= 2 and health["largest_batch"] >= 4
    model.close()


def test_batcher_bounds_the_batch_and_survives_a_failed_call():
    from bottleneck.serve.batcher import Batcher

    sizes = []

    def run(items):
        sizes.append(len(items))
        if "boom" in items:
            raise ValueError("boom")
        return [item * 2 for item in items]

    batcher = Batcher(run, max_batch=4, max_wait_s=0.3)

    async def main_():
        got = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        failed = await asyncio.gather(batcher.submit("boom"), return_exceptions=True)
        alone = await batcher.submit(7)
        return got, failed, alone

    got, failed, alone = asyncio.run(main_())
    batcher.close()
    assert got == [2 * i for i in range(10)] and sizes[:3] == [4, 4, 2]
    assert isinstance(failed[0], ValueError) and alone == 14


def test_bearer_token(models, images):
    client = _client(models["head"], token="s3cret")
    assert client.get("/health").status_code == 200     # open: a load balancer's probe
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        response = _post(client, images[:1], headers=headers)
        assert response.status_code == 401 and "Bearer" in response.json()["error"]
        assert client.get("/info", headers=headers).status_code == 401
    ok = _post(client, images[:1], headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["predictions"][0]["label"]
    assert "s3cret" not in client.get("/info", headers={"Authorization": "Bearer s3cret"}).text


def _args(*argv):
    return build_parser().parse_args(["serve", *argv])


def test_a_public_bind_needs_a_token_or_an_explicit_flag(models, monkeypatch):
    from bottleneck.cli.serve import check_flags

    monkeypatch.delenv("BOTTLENECK_SERVE_TOKEN", raising=False)
    port = str(_free_port())
    with pytest.raises(UserError, match="--token"):
        check_flags(_args("--model", models["head"], "--host", "0.0.0.0", "--port", port))
    check_flags(_args("--model", models["head"], "--host", "0.0.0.0", "--port", port,
                      "--allow-open"))
    check_flags(_args("--model", models["head"], "--host", "0.0.0.0", "--port", port,
                      "--token", "t"))
    monkeypatch.setenv("BOTTLENECK_SERVE_TOKEN", "from-env")
    args = _args("--model", models["head"], "--host", "0.0.0.0", "--port", port)
    check_flags(args)
    assert args.token == "from-env"


@pytest.mark.parametrize("argv,message", [
    (["--model", "missing.joblib"], "no such file"),
    (["--max-batch", "0"], "--max-batch"),
    (["--max-wait-ms", "-1"], "--max-wait-ms"),
    (["--token", " "], "--token is empty"),
    (["--workers", "2", "--engine", "ray"], "--replicas"),
])
def test_serve_refuses_bad_flags_in_one_line_before_loading(argv, message, models, capsys):
    full = (["--model", models["head"]] if "--model" not in argv else []) + argv
    assert main(["serve", *full, "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_port_in_use_is_refused(models, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--model", models["head"], "--port",
                     str(taken.getsockname()[1])]) == 2
    assert "--port" in capsys.readouterr().err


def test_help_explains_every_flag():
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]
    for action in serve._actions:
        assert action.help and len(action.help) > 10, action.option_strings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running(app):
    """A real uvicorn serving `app` on a free loopback port, in a thread."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}/"
    finally:
        server.should_exit = True
        thread.join(30)


def test_page_in_headless_chromium(models, images, tmp_path):
    """Upload an image on the page: it is shown, with the model's label on top."""
    from bench.gallery import chromium

    if chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("websockets", reason="the page test drives Chromium over websockets")
    from tests.cdp import headless_page

    app = create_app(LocalModel(ServeOptions(model=models["head"])))
    with running(app) as url:
        want = httpx.post(url + "predict", files=[("file", _read(images[3]))]).json()
        with headless_page() as page:
            page.open(url)
            assert "h13.joblib" in page.evaluate("document.querySelector('h1').textContent")
            page.set_files("#pick", [images[3]])
            label = page.wait_for("document.body.dataset.label")
            shown = page.evaluate("[...document.querySelectorAll('.row .name span:first-child')]"
                                  ".map(e => e.textContent)")
            width = page.wait_for("document.getElementById('preview').naturalWidth")
            png = page.screenshot(str(tmp_path / "page.png"))
    top = want["predictions"][0]["top_k"]
    assert label == want["predictions"][0]["label"] and shown == [c for c, _ in top]
    assert width == 60 and png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_two_worker_processes(models, images, head_client):
    """`serve --workers 2`: two processes, each with the model, both answering with its rows."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "cli.py"), "serve", "--model",
                             models["head"], "--port", str(port), "--workers", "2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        pids = _pids_answering(url, proc)
        local = _post(head_client, images[:3]).json()["predictions"]
        for _ in range(4):
            files = [("file", (os.path.basename(p), _read(p))) for p in images[:3]]
            served = httpx.post(url + "predict", files=files, timeout=60).json()["predictions"]
            _assert_same_rows(served, {r["file"]: r for r in local})
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    assert len(pids) == 2, out


def _pids_answering(url: str, proc, timeout: float = 240.0) -> set:
    """The worker pids seen over fresh connections, once both workers are up."""
    pids, deadline = set(), time.monotonic() + timeout
    while len(pids) < 2 and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            pids.add(httpx.get(url + "health", timeout=5,
                               headers={"Connection": "close"}).json()["pid"])
        except httpx.TransportError:
            time.sleep(0.5)
    return pids
