"""
The console's browser-facing rules, in one place:

- every answer under C{/admin/} carries a C{Content-Security-Policy} that
  allows scripts, styles, images and connections from this origin only, no
  inline script or style, no framing, no plugins (and the usual companions:
  C{nosniff}, no referrer);
- the session cookie is HttpOnly (no script reads it), SameSite=Strict (no
  other site's page sends it), Secure when the request came over TLS, and
  scoped to the console's path;
- a request that changes something must come from this origin: its
  C{Origin} (or, without one, C{Sec-Fetch-Site}) must say so, and it must
  carry the session's CSRF token in C{X-CSRF-Token}, which only the
  console's own script can read (from C{GET /admin/session}).
"""

from twisted.web import http

from .sessions import COOKIE

CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'self'; "
    b"form-action 'self'; frame-ancestors 'none'"
)

HEADERS = {
    b"content-security-policy": CONTENT_SECURITY_POLICY,
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
    b"cross-origin-opener-policy": b"same-origin",
    b"cross-origin-resource-policy": b"same-origin",
}
"""Headers of every answer under C{/admin/}."""

CSRF_HEADER = b"x-csrf-token"

SAFE_METHODS = (b"GET", b"HEAD")


def secure_headers(request: http.Request) -> None:
    """
    Set L{HEADERS} on C{request}'s answer.
    """
    for name, value in HEADERS.items():
        request.setHeader(name, value)


def own_origin(request: http.Request) -> str:
    """
    This server's origin as the browser sees it: scheme, and the C{Host}
    the request was sent to.
    """
    scheme = "https" if request.isSecure() else "http"
    host = (request.getHeader(b"host") or b"").decode("latin-1").strip().lower()
    return f"{scheme}://{host}"


def _normal(origin: str) -> str:
    origin = origin.strip().lower()
    for scheme, port in (("https://", ":443"), ("http://", ":80")):
        if origin.startswith(scheme) and origin.endswith(port):
            return origin[: -len(port)]
    return origin


def same_origin(request: http.Request) -> bool:
    """
    Whether a request comes from a page of this origin. A browser sends
    C{Origin} with every POST and DELETE (and C{Sec-Fetch-Site}); a
    request with neither is not a browser's, and cannot carry another
    site's cookie.
    """
    origin = request.getHeader(b"origin")
    if origin is not None:
        return _normal(origin.decode("latin-1")) == _normal(own_origin(request))
    fetch_site = request.getHeader(b"sec-fetch-site")
    if fetch_site is not None:
        return fetch_site.strip().lower() in (b"same-origin", b"none")
    return True


def session_token(request: http.Request) -> str | None:
    """
    The session cookie's token, if the request carries one.
    """
    value = request.getCookie(COOKIE)
    if value is None:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def set_session_cookie(request: http.Request, token: str, lifetime: float, path: str) -> None:
    """
    Give the browser its session cookie, for C{lifetime} seconds.
    """
    request.addCookie(
        COOKIE, token.encode("ascii"), path=path.encode("ascii"),
        max_age=str(int(lifetime)).encode("ascii"), httpOnly=True, sameSite="strict",
        secure=request.isSecure(),
    )


def clear_session_cookie(request: http.Request, path: str) -> None:
    """
    Make the browser forget its session cookie.
    """
    request.addCookie(
        COOKIE, b"", path=path.encode("ascii"), max_age=b"0", httpOnly=True,
        sameSite="strict", secure=request.isSecure(),
    )
