"""The Forgeline Console: the web UI the gateway serves at ``/console/``.

The console is plain files in ``static/``: one HTML page, a style sheet and JavaScript modules
written by hand (no framework, no build step, no dependency fetched at install or run time). The
browser loads them from here, then calls the gateway's documented HTTP API (``/v1/...``) with the
user's API key, as any other client does; the console has no API of its own. The files hold no
data, so they are served without a key; every call the pages make is checked as usual (a page
that needs the admin scope says so when the key lacks it).

Every path under ``/console/`` that is not an asset answers the page, whose script routes by
path, so each page (a job, the playground) has its own URL. The page's Content-Security-Policy
lets it load and call only this origin: nothing leaves for another host, whatever a model or a
dataset puts on screen.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from fastapi import FastAPI
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["CONSOLE_PATH", "STATIC", "install_console"]

#: Where the console is served.
CONSOLE_PATH: Final = "/console"
#: The console's files (package data of forgeline-gateway).
STATIC: Final = Path(__file__).parent / "static"

#: Only this origin: scripts, styles, images and API calls; no frames, forms or plugins.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS: Final = {
    # Revalidated on each load (ETag): an upgraded gateway is never shown with stale scripts.
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
}
# Set here rather than guessed from the host's MIME table: module scripts need a JavaScript type.
_MEDIA_TYPES: Final = {
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


class _Assets(StaticFiles):
    """The console's files, with their media types and headers."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        media_type = _MEDIA_TYPES.get(Path(full_path).suffix)
        if media_type is not None:
            response.headers["Content-Type"] = media_type
        response.headers.update(_HEADERS)
        return response


def install_console(app: FastAPI) -> None:
    """Serve the console on `app`: ``/console/assets/*`` are its files, any other path under
    ``/console/`` its page. Not part of the OpenAPI document (it is not API)."""
    page = (STATIC / "index.html").read_bytes()

    @app.get(CONSOLE_PATH, include_in_schema=False)
    async def console_root() -> RedirectResponse:
        return RedirectResponse(f"{CONSOLE_PATH}/", status_code=308)

    app.mount(f"{CONSOLE_PATH}/assets", _Assets(directory=STATIC), name="console-assets")

    @app.get(CONSOLE_PATH + "/{path:path}", include_in_schema=False)
    async def console_page(path: str) -> Response:
        return Response(page, media_type=_MEDIA_TYPES[".html"], headers=_HEADERS)
