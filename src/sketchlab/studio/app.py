"""The studio's web application: the JSON API under `/api/` and the one page that uses it.

Routes (every POST takes and returns JSON; drawings are `[[xs, ys], ...]` in raw units):

    GET  /                      the page (HTML, script and style served from this package)
    GET  /api/models            the loaded models: capabilities, categories, components
    GET  /api/health            liveness and the model-call gate's load
    POST /api/sample            {model, n, temperature, seed, component?, category?}
    POST /api/reconstruct       {model, sketch, n, temperature, seed}       (redraw)
    POST /api/heal              {model, sketch, masks?, strength?, n, temperature, seed}
    POST /api/complete          {model, sketch, n, temperature, seed}
    POST /api/interpolate       {model, a, b, steps, temperature, seed}

Every result says which model (id, kind, source) and which settings produced it. Errors are
`{"error": message}` with a 4xx status (400 malformed JSON, 404 unknown model or route, 413 body
too large, 415 not JSON, 422 a value out of bounds or an action the model cannot do, 429 busy);
a trace never reaches the client.

Safety: a model is named by the id it was given at startup, looked up in a dict, so no client
value ever becomes a file path; request bodies are parsed with `json` (nothing is unpickled) and
bounded before parsing; nothing runs a shell.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from sketchlab import __version__
from sketchlab.api import Model
from sketchlab.errors import SketchlabError
from sketchlab.studio import drawings as D
from sketchlab.studio import schemas as S
from sketchlab.studio.gate import Busy, Gate

log = logging.getLogger("sketchlab.studio")

# What each action needs of a model (the API handle's capability names).
ACTIONS = {"sample": "can_sample", "reconstruct": "can_encode", "interpolate": "can_encode",
           "heal": "can_heal", "complete": "can_complete"}
COMPONENTS = "has_components"

STATIC = {  # URL name -> (file in sketchlab/studio/static, media type)
    "studio.js": ("studio.js", "text/javascript; charset=utf-8"),
    "studio.css": ("studio.css", "text/css; charset=utf-8"),
}

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
     b"frame-ancestors 'none'; form-action 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


@dataclass
class StudioSettings:
    """How much the server takes on. `workers` model calls run at once and `queue` more may wait;
    beyond that requests are refused with 429. Bodies over `max_body_bytes` are refused with 413,
    and a body that takes longer than `body_timeout_s` to arrive with 408."""

    workers: int = 2
    queue: int = 8
    max_body_bytes: int = 1 << 20
    body_timeout_s: float = 10.0
    # Host headers answered (a guard against DNS rebinding: a web page elsewhere cannot reach a
    # studio on localhost through a name of its own). ("*",) answers any.
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]", "::1")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


class Guard:
    """Pure ASGI middleware: bounds request bodies (size and arrival time) before anything parses
    them, and adds the security headers to every response."""

    def __init__(self, app, settings: StudioSettings):
        self.app = app
        self.settings = settings

    async def _reply(self, send, status: int, message: str) -> None:
        body = json.dumps({"error": message, "status": status}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"), *SECURITY_HEADERS]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send_with_headers)
        limit = self.settings.max_body_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await self._reply(send, 413, f"request body too large: at most {limit} bytes")
        chunks: list[bytes] = []

        async def read() -> int | None:      # None: all read; else the status to answer
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return 0
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return 413
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return None

        try:
            status = await asyncio.wait_for(read(), self.settings.body_timeout_s)
        except asyncio.TimeoutError:
            return await self._reply(send, 408, "the request body took too long to arrive")
        if status == 0:
            return
        if status == 413:
            return await self._reply(send, 413, f"request body too large: at most {limit} bytes")
        body = b"".join(chunks)
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send_with_headers)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _validation_message(e: ValidationError) -> tuple[str, list[dict[str, str]]]:
    problems = []
    for err in e.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        msg = str(err.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
            # our drawing checks name the field themselves
            problems.append({"field": where, "message": msg})
        else:
            problems.append({"field": where, "message": f"{where}: {msg}"})
    first = problems[0]["message"] if problems else "invalid request"
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return first + more, problems


async def parse(request: Request, schema):
    """The request body as `schema`, or an ApiError that says what is wrong with it."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "send the body as JSON with Content-Type: application/json")
    body = await request.body()
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply") from None
    except ValueError as e:       # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, f"malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object, e.g. {\"model\": \"...\"}")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        message, problems = _validation_message(e)
        err = ApiError(422, message)
        err.problems = problems
        raise err from None
    except RecursionError:
        raise ApiError(400, "malformed request: nested too deeply") from None


class Studio:
    """The models a studio serves, by id, and the gate their calls go through."""

    def __init__(self, models: dict[str, Model], settings: StudioSettings | None = None):
        if not models:
            raise ValueError("a studio needs at least one model")
        self.models = dict(models)
        self.settings = settings or StudioSettings()
        self.gate = Gate(self.settings.workers, self.settings.queue)
        # One call at a time per model: a model's sampling state (its random generator, cached
        # buffers) is not made for concurrent use; different models run side by side.
        self._locks = {name: threading.Lock() for name in models}

    # ---- facts -------------------------------------------------------------------------------
    def info(self, model_id: str) -> dict[str, Any]:
        m = self.models[model_id]
        return {
            "id": model_id,
            "kind": m.name,
            "source": m.describe().get("source"),
            "categories": list(m.categories),
            "capabilities": sorted(m.capabilities),
            "actions": [a for a, need in ACTIONS.items() if need in m.capabilities],
            "components": self.components(m),
            "max_points": m.max_points(),
            "heal_strength": m.heal_strength,
            # what `sample` can be steered by: a prior component, a category (a model whose
            # sampling options take one)
            "sample_by": [k for k, ok in (("component", COMPONENTS in m.capabilities),
                                          ("category", self.by_category(m))) if ok],
        }

    @staticmethod
    def components(m: Model) -> int | None:
        """How many latent mixture components a model samples from (None: not a mixture)."""
        if COMPONENTS not in m.capabilities:
            return None
        return m.n_components

    @classmethod
    def by_category(cls, m: Model) -> bool:
        """Whether `sample(category=...)` draws that category: the option exists and the model
        was trained class-conditional (SketchKnitter's `class_cond`; a config without the
        switch is taken at its option's word)."""
        return cls.takes_option(m, "category") and bool(getattr(m.config, "class_cond", True))

    @staticmethod
    def takes_option(m: Model, name: str) -> bool:
        options = getattr(m, "options", None)
        return dataclasses.is_dataclass(options) and name in {f.name for f in dataclasses.fields(options)}

    def who(self, model_id: str) -> dict[str, Any]:
        m = self.models[model_id]
        return {"id": model_id, "kind": m.name, "source": m.describe().get("source")}

    def get(self, model_id: str, action: str) -> Model:
        if model_id not in self.models:
            raise ApiError(404, f"unknown model {model_id!r}; this studio serves: "
                                f"{', '.join(self.models)}")
        m = self.models[model_id]
        need = ACTIONS[action]
        if need not in m.capabilities:
            can = [i for i, other in self.models.items() if need in other.capabilities]
            raise ApiError(422, f"{model_id} (a {m.name} model) cannot {action}; models here that "
                                f"can: {', '.join(can) or 'none'}")
        return m

    # ---- running a model call -----------------------------------------------------------------
    async def call(self, model_id: str, fn: Callable[[], Any], origin=None) -> Any:
        """`fn()` (model calls returning Sketches, or a dict of them) through the gate, one at a
        time for this model; the sketches as JSON, moved by `origin` (converted in the worker
        thread too)."""
        lock = self._locks[model_id]

        def locked():
            with lock:
                out = fn()
            if isinstance(out, dict):
                return {k: _sketches_json(v, origin) for k, v in out.items()}
            return _sketches_json(out, origin)

        try:
            return await self.gate.run(locked)
        except Busy as e:
            raise ApiError(429, str(e), {"Retry-After": "1"}) from None
        except SketchlabError as e:
            raise ApiError(422, str(e)) from None
        except Exception:
            log.exception("model %s failed", model_id)
            raise ApiError(500, f"{model_id} failed on this request (a bug in sketchlab; the "
                                f"server's log has the details)") from None


def _sketches_json(sketches, origin=None) -> list[dict[str, Any]]:
    drawings = D.to_drawings(sketches, origin)
    return [{"strokes": drawings[i], "category": sketches.category_name(i),
             "component": None if sketches.component is None else int(sketches.component[i])}
            for i in range(len(sketches))]


def _settings(req, *drop: str) -> dict[str, Any]:
    return req.model_dump(exclude={"model", "sketch", "a", "b", *drop})


def _load_static() -> dict[str, bytes]:
    folder = resources.files("sketchlab.studio") / "static"
    files = {"index.html": (folder / "index.html").read_bytes()}
    for name, (file, _) in STATIC.items():
        files[name] = (folder / file).read_bytes()
    return files


def create_app(studio: Studio | dict[str, Model], settings: StudioSettings | None = None) -> FastAPI:
    """The studio app over `studio` (or a dict of id -> loaded `sketchlab.api.Model`)."""
    if not isinstance(studio, Studio):
        studio = Studio(studio, settings)
    settings = studio.settings
    static = _load_static()

    @asynccontextmanager
    async def lifespan(app):
        yield
        studio.gate.close()

    # No interactive docs: they load their script from a CDN, and the studio works offline.
    app = FastAPI(title="sketchlab studio", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json", lifespan=lifespan)
    app.state.studio = studio

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        resp = _error(exc.status, exc.message, exc.headers)
        problems = getattr(exc, "problems", None)
        if problems:
            resp = JSONResponse({"error": exc.message, "status": exc.status, "problems": problems},
                                status_code=exc.status, headers=exc.headers)
        return resp

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        message = {404: "no such page or API route", 405: "method not allowed here"}.get(
            exc.status_code, str(exc.detail))
        return _error(exc.status_code, message, getattr(exc, "headers", None))

    # ---- the page ------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page():
        return Response(static["index.html"], media_type="text/html; charset=utf-8",
                        headers={"cache-control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str):
        if name not in STATIC:      # a dict key, never a path
            raise ApiError(404, "no such file")
        return Response(static[name], media_type=STATIC[name][1],
                        headers={"cache-control": "no-cache"})

    # ---- facts -----------------------------------------------------------------------------------
    @app.get("/api/models")
    async def models():
        return {"models": [studio.info(i) for i in studio.models], "limits": S.LIMITS,
                "version": __version__}

    @app.get("/api/health")
    async def health():
        return {"ok": True, "gate": studio.gate.stats()}

    def result(action: str, model_id: str, settings_: dict, started: float, **body) -> dict:
        return {"action": action, "model": studio.who(model_id), "settings": settings_, **body,
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 1)}

    # ---- actions ---------------------------------------------------------------------------------
    @app.post("/api/sample")
    async def sample(request: Request):
        t0 = time.perf_counter()
        req = await parse(request, S.SampleRequest)
        m = studio.get(req.model, "sample")
        options = {}
        if req.component is not None:
            n = studio.components(m)
            if COMPONENTS not in m.capabilities:
                raise ApiError(422, f"component: {req.model} (a {m.name} model) has no latent "
                                    f"components")
            if n is not None and req.component >= n:
                raise ApiError(422, f"component: {req.model} has components 0..{n - 1}")
            options["component"] = req.component
        if req.category is not None:
            if not studio.by_category(m):
                raise ApiError(422, f"category: {req.model} (a {m.name} model) does not sample by "
                                    f"category")
            if req.category not in m.categories:
                raise ApiError(422, f"category: {req.model} knows {', '.join(m.categories) or 'none'}")
            options["category"] = req.category
        sketches = await studio.call(req.model, lambda: m.sample(
            req.n, temperature=req.temperature, seed=req.seed, **options))
        return result("sample", req.model, _settings(req), t0,
                      sketches=sketches)

    @app.post("/api/reconstruct")
    async def reconstruct(request: Request):
        t0 = time.perf_counter()
        req = await parse(request, S.ReconstructRequest)
        m = studio.get(req.model, "reconstruct")
        origin = D.origin_of(req.sketch)
        sk = D.to_sketches([req.sketch] * req.n, [origin] * req.n)
        sketches = await studio.call(req.model, lambda: m.reconstruct(
            sk, temperature=req.temperature, seed=req.seed), origin)
        return result("reconstruct", req.model, _settings(req), t0, input=req.sketch,
                      sketches=sketches)

    @app.post("/api/heal")
    async def heal(request: Request):
        t0 = time.perf_counter()
        req = await parse(request, S.HealRequest)
        m = studio.get(req.model, "heal")
        before = D.apply_masks(req.sketch, req.masks)
        if not before:
            raise ApiError(422, "masks: they cover the whole drawing; nothing is left to heal")
        origin = D.origin_of(req.sketch)
        sk = D.to_sketches([before] * req.n, [origin] * req.n)
        # the strength actually used is echoed (None asks for the model's own)
        strength = req.strength if req.strength is not None else m.heal_strength

        def heal_and_show():
            out = {"sketches": m.heal(sk, strength, temperature=req.temperature, seed=req.seed)}
            if strength > 0:      # what the model was given: the drawing, corrupted its way
                out["corrupted"] = m.corrupt(sk, strength, seed=req.seed)
            return out

        out = await studio.call(req.model, heal_and_show, origin)
        settings_ = _settings(req, "masks")
        settings_.update(strength=strength, masks=[mask.model_dump() for mask in req.masks])
        return result("heal", req.model, settings_, t0, input=req.sketch, before=before,
                      masked_points=D.count_points(req.sketch) - D.count_points(before),
                      corrupted=out.get("corrupted"), sketches=out["sketches"])

    @app.post("/api/complete")
    async def complete(request: Request):
        t0 = time.perf_counter()
        req = await parse(request, S.CompleteRequest)
        m = studio.get(req.model, "complete")
        origin = D.origin_of(req.sketch)
        sk = D.to_sketches([req.sketch], [origin])
        sketches = await studio.call(req.model, lambda: m.complete(
            sk, n=req.n, temperature=req.temperature, seed=req.seed), origin)
        # Each completion starts with the drawing (the API's promise); the page colours the
        # strokes after the first `prefix_strokes` as the model's.
        return result("complete", req.model, _settings(req), t0, input=req.sketch,
                      prefix_strokes=len(req.sketch),
                      sketches=sketches)

    @app.post("/api/interpolate")
    async def interpolate(request: Request):
        t0 = time.perf_counter()
        req = await parse(request, S.InterpolateRequest)
        m = studio.get(req.model, "interpolate")
        a = D.to_sketches([req.a], [D.origin_of(req.a)])
        b = D.to_sketches([req.b], [D.origin_of(req.b)])
        sketches = await studio.call(req.model, lambda: m.interpolate(
            a, b, req.steps, temperature=req.temperature, seed=req.seed))
        return result("interpolate", req.model, _settings(req), t0,
                      sketches=sketches)

    # Middleware order: the host check first, then the body bound (outermost runs first).
    app.add_middleware(Guard, settings=settings)
    hosts = list(settings.allowed_hosts)
    if "*" not in hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    return app
