"""A Python client of cognito-facade: calls GetUserAuthFactors and prints the
user's factors, or the error with its google.rpc details, retrying what the
README's error tables mark retryable.

    python client.py --addr 127.0.0.1:50051 --token "$ACCESS_TOKEN"
    python client.py --addr facade.internal:443 --ca ca.pem --token "$ACCESS_TOKEN"

With --username and --user-pool-id it calls AdminGetUserAuthFactors instead,
which the service answers only for the callers its --admin-callers names:
usually over mutual TLS, with --cert and --key.

    python client.py --addr facade.internal:443 --ca ca.pem --cert me.pem --key me.key \
        --user-pool-id eu-west-1_AbCdEf123 --username alice

The stubs come from proto/ at build time (see README.md); nothing generated
is committed.
"""

import argparse
import math
import os
import random
import re
import sys
import time

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "generated"))
from cognito.idp.v1 import identity_provider_pb2 as pb  # noqa: E402
from cognito.idp.v1 import identity_provider_pb2_grpc as pb_grpc  # noqa: E402

# The ErrorInfo reasons the README's error tables mark retryable. An error
# without ErrorInfo is retried only when it is UNAVAILABLE (the service
# itself unreachable, or draining).
RETRYABLE = {
    "TOO_MANY_REQUESTS",
    "COGNITO_INTERNAL_ERROR",
    "UPSTREAM_UNAVAILABLE",
    "UPSTREAM_UNREACHABLE",
    "CREDENTIALS_SOURCE_FAILED",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_BAD_RESPONSE",
    "UPSTREAM_RATE_LIMITED",
    "OVERLOADED",
    "REQUEST_BYTES_EXHAUSTED",
}
FIRST_BACKOFF = 0.2  # seconds; doubled after each attempt, jittered
MAX_BACKOFF = 2.0  # seconds
MIN_ATTEMPT = 0.1  # seconds: no retry with less of the deadline left


class Failure:
    """An error status and what its details say."""

    def __init__(self, error: grpc.RpcError):
        self.error = error
        self.info = None
        self.retry_delay_ms = None  # when RetryInfo gives at least 1 ms
        self.violations = []
        try:
            status = rpc_status.from_call(error)
        except (ValueError, DecodeError):  # details that do not decode: none
            status = None
        for detail in status.details if status else []:
            try:
                self.read(detail)
            except DecodeError:
                pass  # a detail that does not decode is skipped

    def read(self, detail) -> None:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            self.info = error_details_pb2.ErrorInfo()
            detail.Unpack(self.info)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            if retry.retry_delay.ToMilliseconds() > 0:
                self.retry_delay_ms = retry.retry_delay.ToMilliseconds()
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            self.violations = [(v.field, v.description) for v in bad.field_violations]

    @property
    def reason(self) -> str:
        return self.info.reason if self.info else "-"

    def retryable(self) -> bool:
        if self.info is None:
            return self.error.code() == grpc.StatusCode.UNAVAILABLE
        return self.info.reason in RETRYABLE


def metadata_value(metadata, key: str):
    return next((value for name, value in metadata or () if name == key), None)


def the_call(stub, args):
    """The RPC, its request and its metadata: by token (in metadata), or by
    pool and username."""
    if args.username is not None:
        request = pb.AdminGetUserAuthFactorsRequest(user_pool_id=args.user_pool_id, username=args.username)
        return stub.AdminGetUserAuthFactors, request, []
    request = pb.GetUserAuthFactorsRequest()  # the token goes in metadata
    return stub.GetUserAuthFactors, request, [("authorization", f"Bearer {args.token}")]


def call(rpc_method, request, metadata, timeout: float, attempts: int):
    """Calls until an answer, an error not worth retrying, the last attempt,
    or a wait that would pass the deadline. Returns (response, call, attempt)
    or (Failure, error, attempt)."""
    deadline = time.monotonic() + timeout
    for attempt in range(1, attempts + 1):
        try:
            remaining = deadline - time.monotonic()
            response, rpc = rpc_method.with_call(request, metadata=metadata, timeout=remaining)
            return response, rpc, attempt
        except grpc.RpcError as error:
            failure = Failure(error)
            if attempt == attempts or not failure.retryable():
                return failure, error, attempt
            backoff = min(FIRST_BACKOFF * 2 ** min(attempt - 1, 10), MAX_BACKOFF)
            if failure.retry_delay_ms is not None:
                wait, how = failure.retry_delay_ms / 1000, f"in {failure.retry_delay_ms}ms (RetryInfo)"
            else:
                wait, how = random.uniform(backoff / 2, backoff), "after backoff"
            if time.monotonic() + wait + MIN_ATTEMPT >= deadline:
                return failure, error, attempt
            print(f"retry {attempt} {how}: {error.code().name} {failure.reason}")
            time.sleep(wait)
    raise AssertionError("attempts must be at least 1")


def print_failure(failure: Failure, attempt: int) -> None:
    error = failure.error
    print(f"error: {error.code().name}: {error.details() or ''}")
    source = metadata_value(error.trailing_metadata(), "x-cognito-facade-source")
    if source:
        print(f"source: {source}")
    if failure.info:
        print(f"reason: {failure.info.reason}")
        print(f"domain: {failure.info.domain}")
        for key, value in sorted(failure.info.metadata.items()):
            print(f"metadata {key}: {value}")
    for field, description in failure.violations:
        print(f"violation {field}: {description}")
    if failure.retry_delay_ms is not None:
        print(f"retry delay: {failure.retry_delay_ms}ms")
    print(f"retryable: {'yes' if failure.retryable() else 'no'}")
    print(f"attempts: {attempt}")


def name(enum, value: int) -> str:
    """An enum value's name, or its number if this client's proto predates it."""
    return enum.Name(value) if value in enum.values() else str(value)


def print_answer(response, rpc, attempt: int) -> None:
    headers = rpc.initial_metadata()
    source = metadata_value(headers, "x-cognito-facade-source")
    if source:
        print(f"source: {source}")
    age = metadata_value(headers, "x-cognito-facade-age-seconds")
    if age:
        print(f"age: {age}s")
    print(f"username: {response.username}")
    if response.HasField("preferred_mfa_setting"):
        print(f"preferred MFA: {name(pb.MfaType, response.preferred_mfa_setting)}")
    for mfa in response.user_mfa_setting_list:
        print(f"MFA: {name(pb.MfaType, mfa)}")
    for factor in response.configured_user_auth_factors:
        print(f"factor: {name(pb.AuthFactorType, factor)}")
    print(f"attempts: {attempt}")


def read(path):
    if path is None:
        return None
    with open(path, "rb") as pem:
        return pem.read()


def channel(args) -> grpc.Channel:
    if args.ca or args.tls or args.cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(args.ca),  # None: the system's roots
            private_key=read(args.key),
            certificate_chain=read(args.cert),
        )
        return grpc.secure_channel(args.addr, credentials)
    return grpc.insecure_channel(args.addr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--addr", default="127.0.0.1:50051", help="HOST:PORT of the service")
    parser.add_argument("--token", help="the user's access token")
    parser.add_argument("--username", help="with --user-pool-id: ask by pool and username instead")
    parser.add_argument("--user-pool-id", help="the user's pool, with --username")
    parser.add_argument("--tls", action="store_true", help="TLS, trusting the system's roots")
    parser.add_argument("--ca", help="TLS, trusting this PEM CA bundle")
    parser.add_argument("--cert", help="mutual TLS: this client certificate (PEM), with --key")
    parser.add_argument("--key", help="mutual TLS: the client certificate's private key (PEM)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds, every attempt included (at most 3600)")
    parser.add_argument("--attempts", type=int, default=3, help="attempts at most, the first included (1 to 10)")
    args = parser.parse_args()
    if not 1 <= args.attempts <= 10 or not (math.isfinite(args.timeout) and 0 < args.timeout <= 3600):
        parser.error("--attempts must be 1 to 10, and --timeout more than 0 and at most 3600 seconds")
    if (args.username is None) != (args.user_pool_id is None):
        parser.error("--username and --user-pool-id go together")
    if (args.token is None) == (args.username is None):
        parser.error("give --token, or --username and --user-pool-id")
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    if args.token is not None and not re.fullmatch(r"[!-~]+", args.token):
        parser.error("the token must be visible ASCII, to be sent as metadata")

    try:
        ch = channel(args)
    except OSError as error:
        parser.error(f"cannot read --ca, --cert or --key: {error}")
    with ch:
        rpc_method, request, metadata = the_call(pb_grpc.IdentityProviderServiceStub(ch), args)
        result, rpc, attempt = call(rpc_method, request, metadata, args.timeout, args.attempts)
    if isinstance(result, Failure):
        print_failure(result, attempt)
        return 1
    print_answer(result, rpc, attempt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
