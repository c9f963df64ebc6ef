"""The studio: its JSON API in process (every action of every model kind, and the inputs it must
refuse with a 4xx), its bounded model-call gate, `sketchlab serve`, and the page in a real
headless Chromium (draw, complete; mask, heal)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the studio extra is not installed (pip install -e .[studio])")
import httpx  # noqa: E402

with warnings.catch_warnings():
    # starlette's TestClient asks for httpx2 now; plain httpx still drives it
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from sketchlab.cli import main  # noqa: E402
from sketchlab.data.sketches import Sketches  # noqa: E402
from sketchlab.studio import Studio, StudioSettings, create_app, load_models  # noqa: E402
from sketchlab.studio import schemas  # noqa: E402

CATEGORIES = "fish,house"
# Tiny versions of every model kind (the sizes of each model's own CLI test).
TINY = {
    "sketch-rnn": "enc_rnn_size=8,dec_rnn_size=16,z_size=4,max_seq_len=60,batch_size=8,eval_every=0",
    "rpcl-pix2seq": "dec_model=lstm,dec_rnn_size=16,z_size=8,batch_size=8,max_valid_batches=1,"
                    "num_mixture=3,num_sub=2,cnn_channels=[4,4,4,4]",
    "rpcl-pix2seqh": "dec_model=lstm,dec_rnn_size=16,z_size=8,batch_size=8,max_valid_batches=1,"
                     "num_layer_j=4,num_layer_i=4",
    "sp-gra2seq": "graph_picture_size=16,cnn_channels=[4,8,8],dec_rnn_size=16,z_size=8,"
                  "num_mixture=5,batch_size=8,max_valid_batches=1",
    "sketchgloc": "enc_rnn_size=8,dec_model=hyper,dec_rnn_size=16,hyper_num_units=8,"
                  "hyper_embedding_size=4,z_size=4,batch_size=8,max_valid_batches=1,re_scale=0.1",
    "sketchknitter": "num_points=32,model_channels=32,lift_dim=16,channel_mult=[1,2],"
                     "num_res_blocks=1,diffusion_steps=30,batch_size=8,eval_every=0,ema_rate=0.9,"
                     "class_cond=1",
}
KINDS = list(TINY)
ACTIONS = ["sample", "reconstruct", "heal", "complete", "interpolate"]

# A drawing in raw units (the pad's 256 box): a roof and a wall.
DRAWING = [[[40.0, 90.0, 140.0], [120.0, 60.0, 120.0]],
           [[50.0, 50.0, 130.0, 130.0], [120.0, 200.0, 200.0, 120.0]]]
HOST = {"host": "localhost"}


@pytest.fixture(scope="session")
def studio_runs(tmp_path_factory) -> dict[str, Path]:
    """A 3-step run of every model kind on the built-in doodles."""
    root = tmp_path_factory.mktemp("studio-runs")
    runs = {}
    for kind, hp in TINY.items():
        out = root / kind
        assert main(["train", kind, "--out", str(out), "--categories", CATEGORIES,
                     "--limit-per-category", "16", "--max-steps", "3", "--hparams", hp,
                     "--no-progress", "--device", "cpu"]) == 0
        runs[kind] = out
    return runs


@pytest.fixture(scope="session")
def studio_models(studio_runs):
    return load_models([str(p) for p in studio_runs.values()], device="cpu", log=lambda s: None)


@pytest.fixture(scope="module")
def client(studio_models):
    app = create_app(Studio(studio_models, StudioSettings(workers=2, queue=8)))
    with TestClient(app, headers=HOST) as c:
        yield c


def post(client, action, **body):
    return client.post(f"/api/{action}", json=body)


def finite_drawing(strokes) -> bool:
    return all(len(xs) == len(ys) and all(math.isfinite(v) for v in xs + ys) for xs, ys in strokes)


def same_strokes(a, b, tol=0.02) -> bool:
    return len(a) == len(b) and all(
        len(xa) == len(xb) and np.allclose(xa, xb, atol=tol) and np.allclose(ya, yb, atol=tol)
        for (xa, ya), (xb, yb) in zip(a, b))


# ---- listing ---------------------------------------------------------------------------------


def test_models_lists_every_kind_with_what_it_can_do(client):
    data = client.get("/api/models").json()
    by_id = {m["id"]: m for m in data["models"]}
    assert sorted(m["kind"] for m in data["models"]) == sorted(KINDS)
    for m in data["models"]:
        assert m["categories"] == CATEGORIES.split(",")
        assert set(m["actions"]) <= set(ACTIONS) and m["source"]
        assert ("interpolate" in m["actions"]) == ("can_encode" in m["capabilities"])
        assert (m["components"] is not None) == ("has_components" in m["capabilities"])
        assert ("component" in m["sample_by"]) == ("has_components" in m["capabilities"])
    # what the models declare: every action is offered by some model, components by the RPCLs
    for action in ACTIONS:
        assert any(action in m["actions"] for m in data["models"]), action
    assert by_id["rpcl-pix2seq"]["components"] == 3 * 2      # num_mixture x num_sub Gaussians
    assert by_id["rpcl-pix2seqh"]["components"] >= 1
    assert "category" in by_id["sketchknitter"]["sample_by"]      # class-conditional
    assert by_id["sketch-rnn"]["max_points"] == 60
    assert data["limits"]["max_points"] == schemas.MAX_POINTS


def test_the_page_and_its_files_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/studio.js" in page.text and "http" not in page.text.replace("http-equiv", "")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("studio.js", "javascript"), ("studio.css", "css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert "://" not in r.text.replace("http://www.w3.org/2000/svg", "")   # no CDN, offline
    assert client.get("/static/app.py").status_code == 404
    assert client.get("/static/..%2f__init__.py").status_code == 404


# ---- every action of every model kind -------------------------------------------------------


def _request(action: str, model: dict) -> dict:
    body = {"model": model["id"], "temperature": 0.5, "seed": 3}
    if action == "sample":
        body["n"] = 3
        if model["components"]:
            body["component"] = model["components"] - 1
        if "category" in model["sample_by"]:
            body["category"] = "house"
    elif action in ("reconstruct", "complete"):
        body.update(sketch=DRAWING, n=2)
    elif action == "heal":
        body.update(sketch=DRAWING, n=2, masks=[{"x0": 100, "y0": 150, "x1": 140, "y1": 210}])
    elif action == "interpolate":
        body.update(a=DRAWING, b=DRAWING[:1], steps=4)
    return body


@pytest.mark.parametrize("kind", KINDS)
def test_every_action_of_every_model(client, kind):
    model = next(m for m in client.get("/api/models").json()["models"] if m["kind"] == kind)
    for action in ACTIONS:
        body = _request(action, model)
        r = post(client, action, **body)
        if action not in model["actions"]:
            assert r.status_code == 422, (action, r.text)
            assert "cannot" in r.json()["error"] and "models here that can" in r.json()["error"]
            continue
        assert r.status_code == 200, (kind, action, r.text)
        data = r.json()
        assert data["action"] == action
        assert data["model"] == {"id": model["id"], "kind": kind, "source": model["source"]}
        for key in ("temperature", "seed"):
            assert data["settings"][key] == body[key]
        expected = {"sample": 3, "reconstruct": 2, "heal": 2, "complete": 2, "interpolate": 4}
        assert len(data["sketches"]) == expected[action]
        for sk in data["sketches"]:
            assert set(sk) == {"strokes", "category", "component"} and finite_drawing(sk["strokes"])
        if action == "sample" and model["components"]:
            assert {sk["component"] for sk in data["sketches"]} == {body["component"]}
        if action == "sample" and "category" in body:
            assert {sk["category"] for sk in data["sketches"]} == {"house"}
        if action == "reconstruct" and "has_components" in model["capabilities"]:
            # the redraw reports the RPCL component its code falls in
            assert all(0 <= sk["component"] < model["components"] for sk in data["sketches"])
        if action == "complete":
            assert data["prefix_strokes"] == len(DRAWING)
            for sk in data["sketches"]:    # each candidate starts with the drawing, where it was
                assert same_strokes(sk["strokes"][:len(DRAWING)], DRAWING), sk["strokes"][:3]
        if action == "heal":
            assert data["input"] == DRAWING and data["masked_points"] >= 1
            assert data["settings"]["masks"] == body["masks"]
            # no strength asked: the model's own, echoed, and its corruption shown (SP-gra2seq
            # and SketchGloc heal what they are given, SketchKnitter noises it first)
            assert data["settings"]["strength"] == model["heal_strength"]
            if model["heal_strength"] > 0:
                assert len(data["corrupted"]) == 2
                assert all(finite_drawing(c["strokes"]) for c in data["corrupted"])
            else:
                assert data["corrupted"] is None


def test_heal_masks_cut_strokes_and_show_before(client, studio_models):
    healer = next(i for i, m in studio_models.items() if "can_heal" in m.capabilities)
    wall = [[[0.0, 10, 20, 30, 40, 50], [0.0, 0, 0, 0, 0, 0]]]
    r = post(client, "heal", model=healer, sketch=wall, strength=0.0,
             masks=[{"x0": 15, "y0": -5, "x1": 35, "y1": 5}])
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["before"] == [[[0.0, 10.0], [0.0, 0.0]], [[40.0, 50.0], [0.0, 0.0]]]
    assert data["masked_points"] == 2 and data["settings"]["strength"] == 0.0
    assert data["corrupted"] is None           # strength 0: the masked drawing as it is
    everything = [{"x0": -1, "y0": -1, "x1": 60, "y1": 1}]
    r = post(client, "heal", model=healer, sketch=wall, masks=everything)
    assert r.status_code == 422 and "whole drawing" in r.json()["error"]


def test_completions_continue_from_the_strokes_drawn(client, studio_models):
    completer = next(i for i, m in studio_models.items() if "can_complete" in m.capabilities)
    far = [[[200.0, 230.0], [30.0, 45.0]]]          # a stroke far from the origin
    r = post(client, "complete", model=completer, sketch=far, n=3, temperature=0.8, seed=1)
    assert r.status_code == 200, r.text
    for sk in r.json()["sketches"]:
        assert same_strokes(sk["strokes"][:1], far)
        if len(sk["strokes"]) > 1:     # the model's strokes start from the end of the drawing
            x, y = sk["strokes"][1][0][0], sk["strokes"][1][1][0]
            assert abs(x - 230) < 2000 and abs(y - 45) < 2000


def test_same_seed_same_result_and_settings_echoed(client, studio_models):
    sampler = next(i for i, m in studio_models.items() if "can_sample" in m.capabilities)
    a = post(client, "sample", model=sampler, n=2, seed=7, temperature=0.3).json()
    b = post(client, "sample", model=sampler, n=2, seed=7, temperature=0.3).json()
    assert a["sketches"] == b["sketches"]
    assert a["settings"] == {"temperature": 0.3, "seed": 7, "n": 2, "component": None,
                             "category": None}


# ---- bad input: a 4xx with a message, never a 500, and the server keeps serving --------------

BIG = [[[float(i) for i in range(300)], [0.0] * 300]] * 20            # 6000 points
MANY = [[[float(i)], [0.0]] for i in range(schemas.MAX_STROKES + 1)]


def _raw(client, body: bytes, content_type="application/json", path="/api/complete"):
    return client.post(path, content=body, headers={"content-type": content_type})


@pytest.mark.parametrize("name, send, status, words", [
    ("malformed JSON", lambda c: _raw(c, b'{"model": "x", '), 400, "malformed JSON"),
    ("NaN", lambda c: _raw(c, b'{"model": "rpcl-pix2seq", "temperature": NaN}'), 400, "NaN"),
    ("Infinity in a drawing", lambda c: _raw(
        c, b'{"model": "rpcl-pix2seq", "sketch": [[[1, Infinity], [2, 3]]]}'), 400, "Infinity"),
    ("not an object", lambda c: _raw(c, b'[1, 2]'), 400, "JSON object"),
    ("invalid UTF-8", lambda c: _raw(c, b'{"model": "\xff\xfe"}'), 400, "malformed JSON"),
    ("deeply nested", lambda c: _raw(c, b'{"sketch": ' + b"[" * 200000 + b"]" * 200000 + b"}"),
     400, "nested too deeply"),
    ("not JSON", lambda c: _raw(c, b"model=x", "application/x-www-form-urlencoded"), 415, "JSON"),
    ("too large", lambda c: _raw(c, b"[" + b" " * (2 << 20) + b"]"), 413, "too large"),
    ("too large, chunked", lambda c: c.post(
        "/api/complete", content=(b" " * 65536 for _ in range(40)),
        headers={"content-type": "application/json"}), 413, "too large"),
    ("unknown model", lambda c: post(c, "sample", model="no-such-model"), 404, "unknown model"),
    ("a path as model", lambda c: post(c, "sample", model="../../../etc/passwd"), 404,
     "unknown model"),
    ("empty drawing", lambda c: post(c, "complete", model="rpcl-pix2seq", sketch=[]), 422,
     "empty drawing"),
    ("strokes without points", lambda c: post(
        c, "complete", model="rpcl-pix2seq", sketch=[[[], []], [[], []]]), 422, "empty drawing"),
    ("no drawing", lambda c: post(c, "complete", model="rpcl-pix2seq"), 422, "sketch"),
    ("xs and ys differ", lambda c: post(
        c, "complete", model="rpcl-pix2seq", sketch=[[[1, 2, 3], [1, 2]]]), 422, "3 xs but 2 ys"),
    ("a string for a number", lambda c: post(
        c, "complete", model="rpcl-pix2seq", sketch=[[[1, "2"], [1, 2]]]), 422, "non-number"),
    ("booleans for numbers", lambda c: post(
        c, "complete", model="rpcl-pix2seq", sketch=[[[True, False], [1, 2]]]), 422, "non-number"),
    ("a stroke that is not [xs, ys]", lambda c: post(
        c, "complete", model="rpcl-pix2seq", sketch=[[1, 2]]), 422, "stroke 0"),
    ("a huge coordinate", lambda c: post(
        c, "complete", model="rpcl-pix2seq", sketch=[[[1, 1e300], [1, 2]]]), 422, "within"),
    ("too many points", lambda c: post(c, "complete", model="rpcl-pix2seq", sketch=BIG), 422,
     f"more than {schemas.MAX_POINTS} points"),
    ("too many strokes", lambda c: post(c, "complete", model="rpcl-pix2seq", sketch=MANY), 422,
     "strokes; at most"),
    ("too many results", lambda c: post(c, "sample", model="rpcl-pix2seq", n=1000), 422, "n:"),
    ("zero temperature", lambda c: post(c, "sample", model="rpcl-pix2seq", temperature=0), 422,
     "temperature"),
    ("a negative seed", lambda c: post(c, "sample", model="rpcl-pix2seq", seed=-1), 422, "seed"),
    ("a typo in a field", lambda c: post(c, "sample", model="rpcl-pix2seq", temprature=1), 422,
     "temprature"),
    ("a component that does not exist", lambda c: post(
        c, "sample", model="rpcl-pix2seq", component=99), 422, "component"),
    ("a category the model does not know", lambda c: post(
        c, "sample", model="rpcl-pix2seq", category="zebra"), 422, "category"),
    ("too many interpolation steps", lambda c: post(
        c, "interpolate", model="rpcl-pix2seq", a=DRAWING, b=DRAWING, steps=100), 422, "steps"),
    ("too many masks", lambda c: post(
        c, "heal", model="sp-gra2seq", sketch=DRAWING,
        masks=[{"x0": 0, "y0": 0, "x1": 1, "y1": 1}] * 17), 422, "masks"),
    ("an action the model cannot do", lambda c: post(
        c, "heal", model="rpcl-pix2seq", sketch=DRAWING), 422, "cannot heal"),
    ("unknown route", lambda c: c.get("/api/nothing"), 404, "no such"),
    ("GET on an action", lambda c: c.get("/api/sample"), 405, "method"),
    ("another Host (DNS rebinding)", lambda c: c.get("/api/models", headers={"host": "evil.test"}),
     400, ""),
])
def test_bad_requests_get_a_4xx_with_a_message(client, name, send, status, words):
    r = send(client)
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    assert "Traceback" not in r.text and 'File "' not in r.text
    if words:
        message = r.json()["error"]
        assert words in message, (name, message)
    assert client.get("/api/health").json()["ok"]          # and it keeps serving
    assert post(client, "sample", model="rpcl-pix2seq", n=1).status_code == 200


def test_a_drawing_longer_than_the_model_takes_is_refused_by_name(client):
    long = [[[float(i % 50) for i in range(400)], [float(i // 50) for i in range(400)]]]
    r = post(client, "complete", model="sketch-rnn", sketch=long)
    assert r.status_code == 422 and "longer" in r.json()["error"]


# ---- bounded concurrency -----------------------------------------------------------------------


class SlowModel:
    """A stand-in for `sketchlab.api.Model` whose sampling waits until released."""

    name = "slow"
    categories = ["fish"]
    capabilities = {"can_sample"}
    n_components = heal_strength = None

    def max_points(self):
        return "any"

    def __init__(self):
        self.started = threading.Event()
        self.release = threading.Event()

    def describe(self):
        return {"model": self.name, "source": "test", "categories": self.categories}

    def sample(self, n, *, temperature=None, seed=0, **options):
        self.started.set()
        assert self.release.wait(30)
        return Sketches.from_list([np.array([[0, 0, 0], [5, 5, 1]], np.float32)] * n)


def test_saturated_studio_answers_429_and_keeps_the_page_responsive(studio_models):
    slow = SlowModel()
    quick = next(i for i, m in studio_models.items() if "can_sample" in m.capabilities)
    studio = Studio({"slow": slow, quick: studio_models[quick]},
                    StudioSettings(workers=2, queue=1))
    app = create_app(studio)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            calls = [asyncio.create_task(c.post("/api/sample", json={"model": "slow", "n": 1}))
                     for _ in range(3)]
            for _ in range(500):
                if studio.gate.admitted == 3:
                    break
                await asyncio.sleep(0.01)
            assert slow.started.is_set() and studio.gate.admitted == 3
            # full: the next model call is refused at once, with Retry-After
            t0 = time.perf_counter()
            busy = await c.post("/api/sample", json={"model": quick, "n": 1})
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert "busy" in busy.json()["error"] and time.perf_counter() - t0 < 2
            # the page and the listing do not wait for the model calls
            assert (await c.get("/")).status_code == 200
            assert (await c.get("/api/models")).status_code == 200
            health = (await c.get("/api/health")).json()["gate"]
            assert health == {"workers": 2, "capacity": 3, "in_flight": 3, "refused": 1}
            slow.release.set()
            done = await asyncio.gather(*calls)
            assert [r.status_code for r in done] == [200, 200, 200]
            for _ in range(200):
                if studio.gate.admitted == 0:
                    break
                await asyncio.sleep(0.01)
            assert studio.gate.admitted == 0
            assert (await c.post("/api/sample", json={"model": quick, "n": 1})).status_code == 200

    asyncio.run(scenario())
    studio.gate.close()


def test_a_model_that_fails_is_a_500_without_a_trace(studio_models):
    class Broken(SlowModel):
        def sample(self, n, **kw):
            raise RuntimeError("secret internals")

    app = create_app({"broken": Broken()})
    with TestClient(app, headers=HOST, raise_server_exceptions=False) as c:
        r = c.post("/api/sample", json={"model": "broken"})
        assert r.status_code == 500 and "secret" not in r.text and "Traceback" not in r.text
        assert "broken failed" in r.json()["error"]
        assert c.get("/api/health").status_code == 200


# ---- sketchlab serve ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow   # a new process: importing torch and loading two models takes ~20 s here
def test_serve_command_starts_the_studio_on_localhost(studio_runs, tmp_path):
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from sketchlab.cli import main; sys.exit(main())",
         "serve", "--models",
         f"{studio_runs['rpcl-pix2seq']},{studio_runs['sketch-rnn']}", "--port", str(port),
         "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/models", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() < deadline, "the studio did not start"
                time.sleep(0.3)
        assert [m["id"] for m in r.json()["models"]] == ["rpcl-pix2seq", "sketch-rnn"]
        r = httpx.post(f"http://127.0.0.1:{port}/api/sample",
                       json={"model": "rpcl-pix2seq", "n": 2}, timeout=60)
        assert r.status_code == 200 and len(r.json()["sketches"]) == 2
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out


def test_serve_refuses_bad_arguments_by_name(capsys):
    assert main(["serve", "--models", "no-such-model-anywhere", "--port", "8000"]) == 2
    assert "no-such-model-anywhere" in capsys.readouterr().err
    assert main(["serve", "--models", ",", "--port", "8000"]) == 2
    assert main(["serve", "--port", "70000", "--models", "x"]) == 2


def test_serve_without_models_says_how_to_name_some(monkeypatch, capsys):
    from sketchlab import zoo

    monkeypatch.setattr(zoo, "names", lambda: [])
    assert main(["serve"]) == 2
    assert "--models" in capsys.readouterr().err


# ---- the page in a real browser ----------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def live_studio(studio_models):
    """The studio on a real uvicorn server in a thread, on a free local port."""
    import uvicorn

    app = create_app(Studio(studio_models, StudioSettings(workers=2, queue=8)))
    config = uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning",
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{config.port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (apt-get install chromium; .ci/run does)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()


def _screenshot_dir(tmp_path) -> Path:
    folder = Path(os.environ.get("STUDIO_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 760})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]", timeout=20000)
    return page, errors


def _drag(page, points):
    """A stroke with the mouse: pointerdown, pointermoves, pointerup (pointer events)."""
    box = page.locator("#pad").bounding_box()
    sx, sy = box["width"] / 256, box["height"] / 256
    at = [(box["x"] + x * sx, box["y"] + y * sy) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for x, y in at[1:]:
        page.mouse.move(x, y, steps=4)
    page.mouse.up()


def test_browser_draw_then_complete(browser, live_studio, studio_models, tmp_path):
    page, errors = _open(browser, live_studio)
    completer = next(i for i, m in studio_models.items() if "can_complete" in m.capabilities)
    page.select_option("#model", completer)
    _drag(page, [(60, 150), (90, 110), (130, 100), (170, 120), (190, 160)])
    _drag(page, [(70, 170), (120, 190), (180, 175)])
    drawn = page.evaluate("window.sketchlabStudio.strokes")
    assert len(drawn) == 2 and all(len(xs) >= 2 for xs, _ in drawn)
    assert 50 < drawn[0][0][0] < 70 and 140 < drawn[0][1][0] < 160     # pad units = raw units
    page.select_option("#complete-n", "4")
    # the slider moved to 1.0 (a 3-step model ends its drawings early when it is cold)
    page.eval_on_selector("#temperature", "el => { el.value = '1'; "
                                          "el.dispatchEvent(new Event('input')); }")
    assert page.inner_text("#temperature-value") == "1.00"
    page.click("#do-complete")
    page.wait_for_selector("#results[data-state=done]", timeout=60000)
    result = page.evaluate("window.sketchlabStudio.result")
    assert result["action"] == "complete" and result["model"]["id"] == completer
    assert result["prefix_strokes"] == 2 and len(result["sketches"]) == 4
    for sk in result["sketches"]:       # every candidate continues from the strokes drawn
        assert same_strokes(sk["strokes"][:2], drawn), sk["strokes"][:2]
    assert any(len(sk["strokes"]) > 2 for sk in result["sketches"])    # and adds strokes
    assert result["settings"]["temperature"] == 1
    assert page.locator("#results .tile").count() == 4
    assert "complete" in page.inner_text("#caption") and completer in page.inner_text("#caption")
    shot = _screenshot_dir(tmp_path) / "studio-complete.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10000
    # downloads: SVG, PNG and ndjson of the first candidate
    tile = page.locator("#results .tile").first
    for fmt, check in (("svg", lambda t: t.startswith("<?xml") and "<polyline" in t),
                       ("ndjson", lambda t: json.loads(t)["drawing"] == result["sketches"][0]["strokes"]),
                       ("png", None)):
        with page.expect_download() as info:
            tile.locator(f"button:text-is('{fmt}')").click()
        path = info.value.path()
        assert info.value.suggested_filename.endswith(f".{fmt}")
        if check:
            assert check(Path(path).read_text())
        else:
            assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # undo and clear
    page.click("#undo")
    assert len(page.evaluate("window.sketchlabStudio.strokes")) == 1
    page.click("#clear")
    assert page.evaluate("window.sketchlabStudio.strokes") == []
    assert not errors, errors
    page.close()


def test_browser_mask_then_heal(browser, live_studio, studio_models, tmp_path):
    page, errors = _open(browser, live_studio)
    # SketchKnitter: its diffusion chain always draws (a 3-step SP-gra2seq may end at once)
    healer = next(i for i, m in studio_models.items() if m.name == "sketchknitter")
    page.select_option("#model", healer)
    _drag(page, [(50, 200), (50, 90), (128, 40), (206, 90), (206, 200), (50, 200)])
    _drag(page, [(110, 200), (110, 150), (146, 150), (146, 200)])
    drawn = page.evaluate("window.sketchlabStudio.strokes")
    page.click("#tool-mask")
    _drag(page, [(150, 30), (230, 120)])            # hide the right side of the roof
    assert len(page.evaluate("window.sketchlabStudio.masks")) == 1
    page.click("#do-heal")
    page.wait_for_selector("#results[data-state=done]", timeout=60000)
    result = page.evaluate("window.sketchlabStudio.result")
    assert result["action"] == "heal" and result["model"]["id"] == healer
    assert result["input"] == drawn and result["masked_points"] >= 1
    assert sum(len(xs) for xs, _ in result["before"]) < sum(len(xs) for xs, _ in drawn)
    assert len(result["settings"]["masks"]) == 1
    assert all(sk["strokes"] for sk in result["sketches"])
    labels = page.locator("#results .tile .label").all_inner_texts()
    assert labels[0] == "before (masked)" and labels[1].startswith("corrupted 1")
    assert labels[2].startswith("after 1")
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "studio-heal.png"))
    assert not errors, errors
    page.close()
