"""The one retry policy (`storage.retry`): which failures are tried again, and how often."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from mixture import storage


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


@pytest.mark.parametrize(
    "err",
    [
        ResponseStreamingError(error="Connection broken: IncompleteRead(70 bytes read, 70 more expected)"),
        IncompleteReadError(actual_bytes=70, expected_bytes=140),
        ReadTimeoutError(endpoint_url="http://s3"),
        EndpointConnectionError(endpoint_url="http://s3"),
        _client_error("SlowDown", 503),
        _client_error("InternalError", 500),
        _client_error("BadDigest", 400),
        OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 18, Transferred a partial file"),
        storage.Transient("verification failed after upload"),
    ],
)
def test_dropped_bodies_connections_and_5xx_are_transient(err):
    assert storage.transient(err)


@pytest.mark.parametrize(
    "err",
    [
        _client_error("AccessDenied", 403),
        _client_error("NoSuchKey", 404),
        _client_error("PreconditionFailed", 412),
        NoCredentialsError(),
        FileNotFoundError("/x"),
        PermissionError("/x"),
        ValueError("bad json"),
    ],
)
def test_permanent_errors_are_not(err):
    assert not storage.transient(err)


def test_retry_tries_again_then_gives_up_with_the_last_error():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ResponseStreamingError(error="dropped")
        return "body"

    assert storage.retry(flaky, "read x", attempts=5) == "body" and len(calls) == 3
    tries = []

    def dropped():
        tries.append(1)
        raise ResponseStreamingError(error="always dropped")

    with pytest.raises(ResponseStreamingError):
        storage.retry(dropped, "read y", attempts=4)
    assert len(tries) == 4


def test_a_permanent_error_is_raised_at_once():
    calls = []

    def denied():
        calls.append(1)
        raise _client_error("AccessDenied", 403)

    with pytest.raises(ClientError, match="AccessDenied"):
        storage.retry(denied, "write z", attempts=5)
    assert len(calls) == 1
