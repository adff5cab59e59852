"""Unit tests of the conversion: ForwardingReq -> ASGI scope / WSGI environ."""

import pytest

from forwarding_adapter._pb import forwarding_pb2 as pb
from forwarding_adapter.convert import (Malformed, asgi_scope, check_request, to_fields, wsgi_environ,
                                        wsgi_status)


def request(**kw):
    base = dict(method="POST", scheme="https", authority="api.example:8443", path="/orders/a%2Fb",
                query="x=1&x=2", has_query=True, version=pb.HTTP_VERSION_HTTP_2,
                headers=[pb.Header(name="x-a", value=b"1"), pb.Header(name="x-a", value=b"2"),
                         pb.Header(name="cookie", value=b"a=1"), pb.Header(name="cookie", value=b"b=2"),
                         pb.Header(name="content-type", value=b"text/plain"),
                         pb.Header(name="x-bytes", value=b"\xff\x80")],
                context=pb.RequestContext(request_id="r-1", deadline_ms=1500,
                                          client_addresses=["10.0.0.1", "192.0.2.7:5555"]))
    base.update(kw)
    return pb.ForwardingReq(**base)


def test_scope_keeps_the_raw_path_query_and_every_header_in_order():
    trailers = []
    s = asgi_scope(request(), trailers)
    assert s["type"] == "http" and s["method"] == "POST" and s["scheme"] == "https"
    assert s["http_version"] == "2"
    assert s["path"] == "/orders/a/b"  # ASGI: decoded
    assert s["raw_path"] == b"/orders/a%2Fb"  # as received
    assert s["query_string"] == b"x=1&x=2"
    assert s["headers"][:2] == [(b"x-a", b"1"), (b"x-a", b"2")]
    assert (b"x-bytes", b"\xff\x80") in s["headers"]
    assert s["client"] == ("192.0.2.7", 5555)
    assert s["server"] == ("api.example", 8443)
    fwd = s["extensions"]["forwarding"]
    assert fwd["has_query"] is True and fwd["deadline_ms"] == 1500 and fwd["request_id"] == "r-1"
    assert fwd["request_trailers"] is trailers
    assert "http.response.trailers" in s["extensions"]


def test_scope_tells_an_empty_query_from_none():
    with_q = asgi_scope(request(path="/a", query="", has_query=True), [])
    without = asgi_scope(request(path="/a", query="", has_query=False), [])
    assert with_q["query_string"] == without["query_string"] == b""
    assert with_q["extensions"]["forwarding"]["has_query"] is True
    assert without["extensions"]["forwarding"]["has_query"] is False


def test_scope_defaults_for_a_minimal_request():
    s = asgi_scope(pb.ForwardingReq(method="GET", path="/"), [])
    assert s["scheme"] == "http" and s["http_version"] == "1.1"
    assert s["server"] == ("localhost", 80) and s["client"] is None


def test_environ_joins_same_name_fields_as_cgi_does():
    env = wsgi_environ(request(), b"abc", [])
    assert env["REQUEST_METHOD"] == "POST"
    assert env["PATH_INFO"] == "/orders/a/b"
    assert env["RAW_URI"] == "/orders/a%2Fb?x=1&x=2"
    assert env["QUERY_STRING"] == "x=1&x=2"
    assert env["HTTP_X_A"] == "1, 2"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert env["CONTENT_TYPE"] == "text/plain"
    assert env["HTTP_X_BYTES"] == "\xff\x80"  # latin-1 native string (PEP 3333)
    assert env["SERVER_PROTOCOL"] == "HTTP/2.0" and env["wsgi.url_scheme"] == "https"
    assert env["REMOTE_ADDR"] == "192.0.2.7" and env["wsgi.input"].read() == b"abc"
    assert env["CONTENT_LENGTH"] == "3"
    assert list(env["forwarding.request"].headers) == list(request().headers)


def test_environ_path_info_is_latin1_of_the_decoded_bytes():
    env = wsgi_environ(request(path="/caf%C3%A9"), b"", [])
    assert env["PATH_INFO"] == "/caf\xc3\xa9"


@pytest.mark.parametrize("bad, message", [
    (dict(method="GE T"), "method"),
    (dict(method=""), "method"),
    (dict(headers=[pb.Header(name="bad name", value=b"x")]), "not a lower-case token"),
    (dict(headers=[pb.Header(name="X-Upper", value=b"x")]), "not a lower-case token"),
    (dict(headers=[pb.Header(name="x-a", value=b"a\r\nb")]), "CR, LF or NUL"),
    (dict(trailers=[pb.Header(name="", value=b"x")]), "trailer"),
    (dict(path="orders"), "path"),
    (dict(path="/a b"), "path"),
    (dict(context=pb.RequestContext(deadline_ms=(1 << 64) - 1)), "negative"),
])
def test_malformed_requests_are_refused_with_a_reason(bad, message):
    with pytest.raises(Malformed, match=message):
        check_request(request(**bad))


def test_a_good_request_passes():
    check_request(request())
    check_request(request(method="X-EXTENSION.1!", context=pb.RequestContext(deadline_ms=(1 << 63) - 1)))


def test_response_fields_are_lower_cased_and_bytes():
    fields = to_fields([(b"Set-Cookie", b"a"), ("X-Str", "\xff")])
    assert [(f.name, f.value) for f in fields] == [("set-cookie", b"a"), ("x-str", b"\xff")]


def test_wsgi_status():
    assert wsgi_status("404 Not Found") == 404
    with pytest.raises(ValueError):
        wsgi_status("OK")
