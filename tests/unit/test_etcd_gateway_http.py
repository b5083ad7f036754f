"""The etcd gateway's HTTP framing, shared by the blocking and the asyncio client (pure)."""

from __future__ import annotations

import pytest

from datastore.etcd import json_documents, parse_reply_head, post_request

pytestmark = pytest.mark.unit


def test_post_request_is_one_buffer_with_length():
    assert post_request("127.0.0.1", 2379, "/v3/kv/range", b'{"key":"YQ=="}') == (
        b"POST /v3/kv/range HTTP/1.1\r\nHost: 127.0.0.1:2379\r\nContent-Type: application/json\r\n"
        b'Content-Length: 14\r\n\r\n{"key":"YQ=="}')


def test_reply_head_length_chunked_and_close():
    assert parse_reply_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: application/json") == (
        200, 12, False, False)
    assert parse_reply_head(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n"
                            b"Connection: close") == (503, None, True, True)


def test_reply_head_that_is_not_http_is_a_connection_error():
    with pytest.raises(ConnectionError, match="malformed HTTP status line"):
        parse_reply_head(b"\x15\x03\x01garbage")


def test_json_documents_splits_a_stream_and_keeps_the_incomplete_rest():
    import json

    docs, rest = json_documents('{"a":1}\n {"b":[2]}{"c"', json.JSONDecoder())
    assert docs == [{"a": 1}, {"b": [2]}] and rest == '{"c"'
