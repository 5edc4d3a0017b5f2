"""The verification page's files and headers, without a browser (tests/test_webpage_browser.py has one).

What the page promises a user: it is served by the proxy alone (no other origin anywhere in its
files), under a strict Content-Security-Policy (no inline script or style, no frames, no forms),
read-only, and behind the proxy's Host and same-origin checks like every other route.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from starlette.testclient import TestClient

from veil.client.proxy import create_encrypting_proxy
from veil.client.webpage import ASSETS, CONTENT_SECURITY_POLICY, asset
from veil.ohttp.keyconfig import KeyPair

STATUS = {"status": "verified", "verification": {"platform": "sim-snp"}, "refusal": None}


@pytest.fixture(scope="module")
def http() -> TestClient:
    app = create_encrypting_proxy(KeyPair.generate(1).config, "http://127.0.0.1:9", STATUS)
    return TestClient(app, base_url="http://127.0.0.1:8472")


@pytest.mark.parametrize("path, media", [(p, m) for p, (_, m) in ASSETS.items()])
def test_every_file_is_served_with_the_strict_headers(http: TestClient, path: str, media: str) -> None:
    resp = http.get(path)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == media
    assert resp.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["referrer-policy"] == "no-referrer"


def test_the_policy_allows_this_origin_only_and_nothing_inline() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "connect-src", "img-src"):
        assert directives[name] == "'self'", name  # no 'unsafe-inline', no other host
    assert directives["frame-ancestors"] == "'none'" and directives["form-action"] == "'none'"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        if self.tags and self.tags[-1][0] in ("script", "style") and data.strip():
            self.inline_script = True


def test_the_page_has_no_inline_code_and_names_no_other_origin() -> None:
    parser = _Tags()
    parser.feed(asset("index.html").decode())
    assert not parser.inline_script
    for tag, attrs in parser.tags:
        assert "style" not in attrs and not any(k.startswith("on") for k in attrs), (tag, attrs)
        for ref in (attrs.get("src"), attrs.get("href")):
            assert ref is None or ref.startswith("/veil/"), ref
    for name in ("index.html", "page.js", "page.css"):  # icon.svg names its XML namespace only
        text = asset(name).decode()
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", text, re.I), name
    assert "innerHTML" not in asset("page.js").decode()  # every value is shown as text


def test_verification_json_and_verify_now(http: TestClient) -> None:
    assert http.get("/veil/verification").json() == STATUS
    resp = http.post("/veil/verify", json={})
    assert resp.status_code == 200 and resp.json() == STATUS
    assert resp.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_the_page_is_read_only(http: TestClient) -> None:
    assert http.post("/", json={}).status_code == 405
    assert http.put("/veil/verification", json={}).status_code == 405
    assert http.get("/veil/verify").status_code == 405


@pytest.mark.parametrize("path", ["/", "/veil/page.js", "/veil/verification"])
def test_the_proxy_guard_covers_the_page(http: TestClient, path: str) -> None:
    rebound = http.get(path, headers={"host": "evil.example:8472"})
    assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "proxy.bad_host"
    framed = http.get(path, headers={"sec-fetch-site": "cross-site", "sec-fetch-dest": "iframe"})
    assert framed.status_code == 403 and framed.json()["error"]["code"] == "proxy.cross_site"
    foreign = http.get(path, headers={"origin": "http://127.0.0.1:9999"})
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "proxy.cross_site"
    typed = http.get(path, headers={"sec-fetch-site": "none", "sec-fetch-dest": "document"})
    assert typed.status_code == 200  # the user typed the address


def test_a_cross_site_form_cannot_ask_for_a_verification(http: TestClient) -> None:
    resp = http.post("/veil/verify", content="x=1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 415 and resp.json()["error"]["code"] == "proxy.bad_content_type"


def test_with_a_token_the_page_stays_open_and_the_chat_needs_it() -> None:
    app = create_encrypting_proxy(KeyPair.generate(1).config, "http://127.0.0.1:9", STATUS, token="t0ken")
    http = TestClient(app, base_url="http://127.0.0.1:8472")
    for path in [*ASSETS, "/veil/verification"]:
        assert http.get(path).status_code == 200, path
    refused = http.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "proxy.unauthorized"
    assert http.get("/anything-else").status_code == 401  # only the page itself is open
