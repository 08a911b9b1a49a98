"""The web console: pages for people and a JSON API that mirrors them (``/api/...``, OpenAPI at
``/api/openapi.json``), both in front of the cloud's Analyst gRPC API.

Every page costs a fixed, small number of cloud calls however many frames a camera has: a
frames page is one ``ListCameras`` (of that camera) and one ``ListFrames`` that brings the
page's thumbnails along (made once, at ingest). Images are cached here by frame: a stored frame
never changes.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time.
import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path as FsPath
from typing import Annotated, Any
from urllib.parse import quote, urlparse

from fastapi import Depends, FastAPI, Form, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from icm_rpc.tls import TLSFiles

from .auth import COOKIE, Auth, Principal
from .cache import ByteLRU
from .cloud import CloudAPI, CloudError, camera_json, frame_json
from .human import HumanViews

__all__ = ["ConsoleConfig", "create_app"]

log = logging.getLogger("icm.console")
access_log = logging.getLogger("icm.console.access")

HERE = FsPath(__file__).resolve().parent
MAX_FRAME_ID = 2**63 - 1          # frame ids are stored as signed 64-bit integers
CAMERA_RE = re.compile(r"[^\x00-\x1f\x7f/]{1,128}")
CLASS_PATTERN = r"^[A-Za-z0-9 _.\-]{0,64}$"
IMMUTABLE = "private, max-age=31536000, immutable"


@dataclass
class ConsoleConfig:
    cloud: str = "localhost:50051"     # the cloud's analyst address (any instance)
    analyst_token: str = ""            # the cloud's analyst bearer token
    tls: TLSFiles = field(default_factory=TLSFiles)   # CA of the cloud's certificate
    server_name: str = ""              # TLS name to expect from the cloud
    viewer_token: str = ""             # login: may look at everything
    admin_token: str = ""              # login: may also change camera settings
    cookie_secure: bool = False        # Secure cookies (set when the console serves HTTPS)
    page_size: int = 48
    thumbnail_cache_mb: float = 64.0
    image_cache_mb: float = 256.0
    timeout_s: float = 15.0
    human_timeout_s: float = 90.0


# -- small helpers used by templates and handlers ------------------------------------------------
def utc(us: int) -> str:
    if not us:
        return "—"
    dt = datetime.fromtimestamp(us / 1e6, tz=timezone.utc)
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{dt.microsecond // 1000:03d} UTC"


def class_color(name: str) -> str:
    """A stable, distinct colour per class name (same on every page)."""
    h = 0
    for ch in name:
        h = (h * 131 + ord(ch)) % 360
    return f"hsl({h}, 85%, 55%)"


def check_camera(camera_id: str) -> str:
    if not CAMERA_RE.fullmatch(camera_id):
        raise CloudError(400, "bad_camera_id", "a camera id is 1-128 characters without "
                         "control characters or '/'")
    return camera_id


def parse_time(value: str | None, name: str) -> int:
    """ISO 8601 (``2026-11-01T17:00``, ``...Z``, ``...+01:00``; no zone: UTC) -> Unix µs."""
    if value is None or not value.strip():
        return 0
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise CloudError(400, "bad_time", f"{name}: {value[:40]!r} is not an ISO 8601 time "
                         "(for example 2026-11-01T17:00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    us = int(dt.timestamp() * 1_000_000)
    if us <= 0:
        raise CloudError(400, "bad_time", f"{name}: times before 1970 hold no frames")
    return us


def time_input(us: int) -> str:
    """Unix µs -> the value of an <input type=datetime-local> (UTC)."""
    if not us:
        return ""
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def safe_next(target: str | None) -> str:
    """Only paths of this site (no open redirect through the login link)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/cameras"
    return target


class NotLoggedInError(Exception):
    pass


# -- who is asking (dependencies of the handlers) --------------------------------------------------
async def current_user(request: Request) -> Principal:
    auth: Auth = request.app.state.auth
    who = (auth.from_bearer(request.headers.get("authorization"))
           or auth.read_session(request.cookies.get(COOKIE)))
    if who is None:
        raise NotLoggedInError()
    return who


def same_origin(request: Request) -> bool:
    """Browsers say where a request comes from (Sec-Fetch-Site, Origin); refuse other sites."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    return origin is None or urlparse(origin).netloc == request.headers.get("host", "")


async def state_changer(request: Request,
                        who: Annotated[Principal, Depends(current_user)]) -> Principal:
    """State-changing requests: a same-site browser request with the session's CSRF token, or a
    bearer-token client (no ambient credential to abuse)."""
    if who.bearer:
        return who
    token = request.headers.get("x-csrf-token")
    if token is None and request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"):
        token = str((await request.form()).get("csrf_token", ""))
    if not same_origin(request) or not request.app.state.auth.csrf_ok(who, token):
        raise CloudError(403, "csrf", "missing or wrong CSRF token (reload the page)")
    return who


async def admin_only(who: Annotated[Principal, Depends(state_changer)]) -> Principal:
    if not who.is_admin:
        raise CloudError(403, "forbidden", "changing camera settings needs an admin login")
    return who


User = Annotated[Principal, Depends(current_user)]
Writer = Annotated[Principal, Depends(state_changer)]
Admin = Annotated[Principal, Depends(admin_only)]
CameraId = Annotated[str, Path(description="camera id", min_length=1, max_length=128)]
FrameId = Annotated[int, Path(description="frame id", ge=1, le=MAX_FRAME_ID)]


class AccessGuard:
    """Pure ASGI (streams untouched): security headers on every response, and one access-log
    line per request with the path only: query strings (``/login?token=``) never reach logs."""

    HEADERS = (
        ("content-security-policy",
         "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
         "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
         "form-action 'self'"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),   # "no-referrer" makes Chromium send Origin: null
        ("cache-control", "no-store"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [0]

        async def send_with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                headers = MutableHeaders(scope=msg)
                for k, v in self.HEADERS:
                    if k not in headers:
                        headers[k] = v
            await send(msg)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            access_log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status[0],
                            1000 * (time.perf_counter() - t0))


# -- the application ----------------------------------------------------------------------------
def create_app(config: ConsoleConfig) -> FastAPI:
    """The console as an ASGI app (``icm console`` serves it with uvicorn)."""
    auth = Auth({"viewer": config.viewer_token, "admin": config.admin_token})
    cloud = CloudAPI(config.cloud, config.analyst_token, config.tls, config.server_name,
                     config.timeout_s, config.human_timeout_s)
    thumbs = ByteLRU(int(config.thumbnail_cache_mb * 2**20))
    machine_images = ByteLRU(int(config.image_cache_mb * 2**19))
    human_images = ByteLRU(int(config.image_cache_mb * 2**19))
    humans = HumanViews(cloud, human_images)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters.update(utc=utc, color=class_color, q=lambda s: quote(str(s), safe=""))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await humans.close()
        await cloud.close()

    app = FastAPI(title="icm console", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None,
                  description="JSON API of the icm web console (docs/console.md). Log in with "
                              "`Authorization: Bearer <token>` or the session cookie of /login; "
                              "browsers send X-CSRF-Token with POSTs.")
    app.state.cloud, app.state.auth, app.state.humans = cloud, auth, humans
    app.state.caches = {"thumbnails": thumbs, "machine": machine_images, "human": human_images}
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(AccessGuard)

    def is_api(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    def render(request: Request, name: str, who: Principal | None, status: int = 200,
               **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {
            "who": who, "csrf": auth.csrf_token(who) if who else "", **ctx},
            status_code=status)

    # -- errors: clear 4xx for bad input, JSON for the API, a page for people -------------------
    def error_response(request: Request, status: int, code: str, message: str) -> Response:
        if is_api(request):
            return JSONResponse({"error": {"status": status, "code": code, "message": message}},
                                status_code=status)
        who = auth.read_session(request.cookies.get(COOKIE))
        return render(request, "error.html", who, status, status_code=status, code=code,
                      message=message)

    @app.exception_handler(CloudError)
    async def on_cloud_error(request: Request, e: CloudError) -> Response:
        return error_response(request, e.status, e.code, e.message)

    @app.exception_handler(NotLoggedInError)
    async def on_not_logged_in(request: Request, e: NotLoggedInError) -> Response:
        if is_api(request) or request.method != "GET":
            resp = error_response(request, 401, "unauthorized", "log in first: open the "
                                  "console's login link, or send Authorization: Bearer <token>")
            resp.headers["www-authenticate"] = "Bearer"
            return resp
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)

    @app.exception_handler(RequestValidationError)
    async def on_bad_request(request: Request, e: RequestValidationError) -> Response:
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "path",
                                                                            "body"))
            parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
        return error_response(request, 400, "bad_request", "; ".join(parts) or "bad request")

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException) -> Response:
        message = {404: "no such page", 405: "method not allowed"}.get(e.status_code,
                                                                       str(e.detail))
        return error_response(request, e.status_code, "http", message)

    # -- data shared by pages and the API ----------------------------------------------------------
    def frame_links(f: dict[str, Any]) -> dict[str, Any]:
        base = f"/api/cameras/{quote(f['camera_id'], safe='')}/frames/{f['frame_id']}"
        f["links"] = {"page": f"/cameras/{quote(f['camera_id'], safe='')}/frames/{f['frame_id']}",
                      "thumbnail": f"{base}/thumbnail.jpg", "machine": f"{base}/machine.png",
                      "human": f"{base}/human", "human_image": f"{base}/human.png"}
        return f

    async def cameras_data() -> dict[str, Any]:
        return {"cameras": [camera_json(c) for c in await cloud.cameras()]}

    async def frames_data(camera_id: str, since: str | None, until: str | None,
                          class_name: str, before: int, after: int, limit: int) -> dict[str, Any]:
        check_camera(camera_id)
        since_us, until_us = parse_time(since, "since"), parse_time(until, "until")
        if since_us and until_us and since_us >= until_us:
            raise CloudError(400, "bad_time", "since must be before until")
        if before and after:
            raise CloudError(400, "bad_request", "give before or after, not both")
        # both at once (an unknown camera lists no frames, and camera() answers 404)
        cam, frames = await asyncio.gather(
            cloud.camera(camera_id),
            cloud.frames(camera_id, class_name=class_name.strip(), since_us=since_us,
                         until_us=until_us, before=before, after=after, limit=limit))
        out = []
        for f in frames:
            if f.thumbnail_jpeg:
                thumbs.put((f.camera_id, f.frame_id), f.thumbnail_jpeg)
            out.append(frame_links(frame_json(f)))
        full = len(frames) == limit
        older = bool(frames) and (full if not after else True)
        newer = bool(frames) and (bool(before) if not after else full)
        return {"camera": camera_json(cam), "frames": out,
                "filters": {"since": since_us, "until": until_us, "class_name": class_name,
                            "limit": limit},
                "older_before": out[-1]["frame_id"] if older else None,
                "newer_after": out[0]["frame_id"] if newer else None}

    async def frame_data(camera_id: str, frame_id: int) -> dict[str, Any]:
        check_camera(camera_id)
        cam = await cloud.camera(camera_id)   # first: "unknown camera" before "no frame"
        resp, older, newer = await asyncio.gather(
            cloud.frame(camera_id, frame_id),
            cloud.frames(camera_id, before=frame_id, limit=1, thumbnails=False),
            cloud.frames(camera_id, after=frame_id, limit=1, thumbnails=False))
        f = frame_links(frame_json(resp.frame))
        job = humans.get(camera_id, frame_id)
        return {"camera": camera_json(cam), "frame": f,
                "human_view_cached": resp.human_view_cached,
                "human_job": job.to_json() if job else None,
                "older": older[0].frame_id if older else None,
                "newer": newer[0].frame_id if newer else None}

    # -- login ----------------------------------------------------------------------------------
    def logged_in(target: str, role: str, secure: bool) -> RedirectResponse:
        resp = RedirectResponse(safe_next(target), status_code=303)
        resp.set_cookie(COOKIE, auth.new_session(role), max_age=int(auth.session_s),
                        httponly=True, samesite="strict", secure=secure, path="/")
        return resp

    def secure_cookies(request: Request) -> bool:
        return config.cookie_secure or request.url.scheme == "https"

    @app.get("/login", include_in_schema=False)
    async def login_page(request: Request, token: str | None = None,
                         next: str | None = None) -> Response:
        if token is not None:
            role = auth.role_of(token)
            if role is None:
                log.warning("login refused (wrong token) from %s",
                            request.client.host if request.client else "?")
                return render(request, "login.html", None, 401, next=safe_next(next),
                              error="That token is not valid.")
            return logged_in(next or "/cameras", role, secure_cookies(request))
        return render(request, "login.html", None, next=safe_next(next), error="")

    @app.post("/login", include_in_schema=False)
    async def login_form(request: Request, token: Annotated[str, Form(max_length=512)],
                         next: Annotated[str, Form(max_length=2048)] = "/cameras") -> Response:
        role = auth.role_of(token) if same_origin(request) else None
        if role is None:
            log.warning("login refused (wrong token) from %s",
                        request.client.host if request.client else "?")
            return render(request, "login.html", None, 401, next=safe_next(next),
                          error="That token is not valid.")
        return logged_in(next, role, secure_cookies(request))

    @app.post("/logout", include_in_schema=False)
    async def logout(who: Writer) -> Response:
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # -- pages ----------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def home(who: User) -> Response:
        return RedirectResponse("/cameras", status_code=303)

    @app.get("/cameras", response_class=HTMLResponse, include_in_schema=False)
    async def cameras_page(request: Request, who: User) -> Response:
        return render(request, "cameras.html", who, **await cameras_data())

    @app.get("/cameras/{camera_id}", response_class=HTMLResponse, include_in_schema=False)
    async def frames_page(
            request: Request, who: User, camera_id: CameraId,
            since: Annotated[str | None, Query(max_length=64)] = None,
            until: Annotated[str | None, Query(max_length=64)] = None,
            class_name: Annotated[str, Query(max_length=64, pattern=CLASS_PATTERN)] = "",
            before: Annotated[int, Query(ge=0, le=MAX_FRAME_ID)] = 0,
            after: Annotated[int, Query(ge=0, le=MAX_FRAME_ID)] = 0,
            limit: Annotated[int | None, Query(ge=1, le=200)] = None) -> Response:
        data = await frames_data(camera_id, since, until, class_name, before, after,
                                 limit or config.page_size)
        return render(request, "frames.html", who, **data, since_input=time_input(
            data["filters"]["since"]), until_input=time_input(data["filters"]["until"]))

    @app.get("/cameras/{camera_id}/frames/{frame_id}", response_class=HTMLResponse,
             include_in_schema=False)
    async def frame_page(request: Request, who: User, camera_id: CameraId,
                         frame_id: FrameId) -> Response:
        return render(request, "frame.html", who, **await frame_data(camera_id, frame_id))

    @app.get("/cameras/{camera_id}/settings", response_class=HTMLResponse,
             include_in_schema=False)
    async def settings_page(request: Request, who: User, camera_id: CameraId,
                            saved: bool = False) -> Response:
        cam = camera_json(await cloud.camera(check_camera(camera_id)))
        return render(request, "settings.html", who, camera=cam, saved=saved, error="")

    @app.post("/cameras/{camera_id}/settings", include_in_schema=False)
    async def settings_form(request: Request, who: Admin, camera_id: CameraId,
                            base_model_id: Annotated[str, Form(max_length=128)] = "",
                            max_fps: Annotated[str, Form(max_length=16)] = "") -> Response:
        try:
            fps = float(max_fps) if max_fps.strip() else 0.0
        except ValueError:
            fps = -1.0
        try:
            await change_settings(camera_id, base_model_id, fps)
        except CloudError as e:
            cam = camera_json(await cloud.camera(camera_id))
            return render(request, "settings.html", who, e.status, camera=cam, saved=False,
                          error=e.message)
        return RedirectResponse(f"/cameras/{quote(camera_id, safe='')}/settings?saved=1",
                                status_code=303)

    @app.get("/live", response_class=HTMLResponse, include_in_schema=False)
    async def live_page(request: Request, who: User,
                        camera_id: Annotated[str, Query(max_length=128)] = "",
                        class_name: Annotated[str, Query(max_length=64,
                                                         pattern=CLASS_PATTERN)] = "") -> Response:
        if camera_id:
            check_camera(camera_id)
        return render(request, "live.html", who, camera_id=camera_id, class_name=class_name,
                      cameras=[c.camera_id for c in await cloud.cameras()])

    # -- JSON API -------------------------------------------------------------------------------
    @app.get("/api/openapi.json", include_in_schema=False)
    async def openapi(who: User) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/api/cameras", summary="Cameras: online state, size, rate point, bitrate")
    async def api_cameras(who: User) -> dict[str, Any]:
        return await cameras_data()

    @app.get("/api/cameras/{camera_id}", summary="One camera")
    async def api_camera(who: User, camera_id: CameraId) -> dict[str, Any]:
        return camera_json(await cloud.camera(check_camera(camera_id)))

    @app.get("/api/cameras/{camera_id}/frames",
             summary="A camera's frames, newest first (page with before / after)")
    async def api_frames(
            who: User, camera_id: CameraId,
            since: Annotated[str | None, Query(max_length=64,
                                               description="ISO 8601, UTC if no zone")] = None,
            until: Annotated[str | None, Query(max_length=64)] = None,
            class_name: Annotated[str, Query(max_length=64, pattern=CLASS_PATTERN)] = "",
            before: Annotated[int, Query(ge=0, le=MAX_FRAME_ID,
                                         description="frame ids below this")] = 0,
            after: Annotated[int, Query(ge=0, le=MAX_FRAME_ID,
                                        description="frame ids above this")] = 0,
            limit: Annotated[int | None, Query(ge=1, le=200)] = None) -> dict[str, Any]:
        return await frames_data(camera_id, since, until, class_name, before, after,
                                 limit or config.page_size)

    @app.get("/api/cameras/{camera_id}/frames/{frame_id}", summary="One frame and its "
             "detections")
    async def api_frame(who: User, camera_id: CameraId, frame_id: FrameId) -> dict[str, Any]:
        return await frame_data(camera_id, frame_id)

    @app.get("/api/cameras/{camera_id}/frames/{frame_id}/thumbnail.jpg",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}},
             summary="Small JPEG of the machine image")
    async def api_thumbnail(who: User, camera_id: CameraId, frame_id: FrameId) -> Response:
        key = (check_camera(camera_id), frame_id)
        data = thumbs.get(key)
        if data is None:
            data = (await cloud.frame(camera_id, frame_id, thumbnail=True)).frame.thumbnail_jpeg
            thumbs.put(key, data)
        return Response(data, media_type="image/jpeg", headers={"cache-control": IMMUTABLE})

    @app.get("/api/cameras/{camera_id}/frames/{frame_id}/machine.png",
             response_class=Response, responses={200: {"content": {"image/png": {}}}},
             summary="The machine image (decoded base layer)")
    async def api_machine(who: User, camera_id: CameraId, frame_id: FrameId) -> Response:
        key = (check_camera(camera_id), frame_id)
        data = machine_images.get(key)
        if data is None:
            data = (await cloud.frame(camera_id, frame_id, image=True)).machine_png
            machine_images.put(key, data)
        return Response(data, media_type="image/png", headers={"cache-control": IMMUTABLE})

    @app.get("/api/cameras/{camera_id}/frames/{frame_id}/human.png",
             response_class=Response, responses={200: {"content": {"image/png": {}}}},
             summary="The human image, once made (POST .../human first)")
    async def api_human_image(who: User, camera_id: CameraId, frame_id: FrameId) -> Response:
        key = (check_camera(camera_id), frame_id)
        data = human_images.get(key)
        if data is None:
            try:
                data = (await cloud.human_view(camera_id, frame_id, cached_only=True)).png
            except CloudError as e:
                if e.status == 404:
                    raise CloudError(404, "no_human_view", f"no human view of frame {frame_id} "
                                     "has been made yet: POST .../human first") from None
                raise
            human_images.put(key, data)
        return Response(data, media_type="image/png", headers={"cache-control": IMMUTABLE})

    async def human_job(camera_id: str, frame_id: int, start: bool) -> dict[str, Any]:
        check_camera(camera_id)
        job = humans.get(camera_id, frame_id)
        if start:
            f = (await cloud.frame(camera_id, frame_id)).frame   # 404 for a frame not stored
            job = humans.start(camera_id, frame_id, f.width, f.height, f.base_bytes)
        if job is None:
            raise CloudError(404, "no_job", f"no human view of frame {frame_id} was requested")
        return job.to_json() | {"image": f"/api/cameras/{quote(camera_id, safe='')}/frames/"
                                         f"{frame_id}/human.png"}

    @app.post("/api/cameras/{camera_id}/frames/{frame_id}/human", status_code=202,
              summary="Ask for the human view: the cloud pulls the enhancement layer from "
                      "the edge. Poll with GET, or pass wait (seconds) to block.")
    async def api_human_start(who: Writer, camera_id: CameraId, frame_id: FrameId,
                              wait: Annotated[float, Query(ge=0, le=120)] = 0) -> Response:
        out = await human_job(camera_id, frame_id, start=True)
        if wait and out["state"] == "pending":
            job = humans.get(camera_id, frame_id)
            await humans.wait(job, wait)  # type: ignore[arg-type]
            out = await human_job(camera_id, frame_id, start=False)
        status = {"pending": 202, "done": 200}.get(out["state"], out.get("error", {}).get(
            "status", 502))
        return JSONResponse(out, status_code=status)

    @app.get("/api/cameras/{camera_id}/frames/{frame_id}/human",
             summary="State of a human-view request")
    async def api_human_state(who: User, camera_id: CameraId,
                              frame_id: FrameId) -> dict[str, Any]:
        return await human_job(camera_id, frame_id, start=False)

    async def change_settings(camera_id: str, base_model_id: str, max_fps: float) -> None:
        check_camera(camera_id)
        if not 0 <= max_fps <= 240:
            raise CloudError(400, "bad_fps", "max fps is a number from 0 (unchanged) to 240")
        if not base_model_id and not max_fps:
            raise CloudError(400, "nothing_to_change", "give a base model or a max fps")
        cam = await cloud.camera(camera_id)
        if not cam.online:
            raise CloudError(503, "camera_offline", f"Camera {camera_id} is offline: settings "
                             "reach a camera only while it is connected.")
        if base_model_id and cam.base_models and base_model_id not in cam.base_models:
            raise CloudError(400, "unknown_base_model",
                             f"camera {camera_id} has no base model {base_model_id!r} (it has: "
                             f"{', '.join(cam.base_models)})")
        await cloud.change_settings(camera_id, base_model_id, max_fps)
        log.info("settings of camera %s changed: base model %r, max fps %g", camera_id,
                 base_model_id, max_fps)

    @app.post("/api/cameras/{camera_id}/settings", summary="Change a camera's base rate "
              "point or frame rate (admin)")
    async def api_settings(who: Admin, camera_id: CameraId,
                           body: dict[str, Any]) -> dict[str, Any]:
        base = body.get("base_model_id", "")
        fps = body.get("max_fps", 0)
        if not isinstance(base, str) or len(base) > 128:
            raise CloudError(400, "bad_request", "base_model_id must be a string")
        if isinstance(fps, bool) or not isinstance(fps, int | float):
            raise CloudError(400, "bad_fps", "max_fps must be a number")
        await change_settings(camera_id, base, float(fps))
        return {"sent": True}

    @app.get("/api/live", response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}},
             summary="Server-sent events: each frame as the cloud stores it")
    async def api_live(who: User, camera_id: Annotated[str, Query(max_length=128)] = "",
                       class_name: Annotated[str, Query(max_length=64,
                                                        pattern=CLASS_PATTERN)] = "") -> Response:
        if camera_id:
            check_camera(camera_id)

        async def events() -> AsyncIterator[str]:
            yield "retry: 3000\n: connected\n\n"
            try:
                async for f in cloud.watch(camera_id, class_name):
                    if f is None:
                        yield ": keep-alive\n\n"
                        continue
                    if f.thumbnail_jpeg:
                        thumbs.put((f.camera_id, f.frame_id), f.thumbnail_jpeg)
                    data = frame_links(frame_json(f)) | {"time": utc(f.capture_time_us)}
                    yield f"event: frame\ndata: {json.dumps(data)}\n\n"
            except CloudError as e:
                yield f"event: problem\ndata: {json.dumps({'message': e.message})}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})

    return app
