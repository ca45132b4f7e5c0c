"""A Python client of cognito-facade: calls GetUserAuthFactors and prints the
user's factors, or the error with its google.rpc details.

    python client.py --addr 127.0.0.1:50051 --token "$ACCESS_TOKEN"

The stubs come from proto/ at build time (see README.md); nothing generated
is committed.
"""

import argparse
import os
import sys

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "generated"))
from cognito.idp.v1 import identity_provider_pb2 as pb  # noqa: E402
from cognito.idp.v1 import identity_provider_pb2_grpc as pb_grpc  # noqa: E402


def print_error_details(error: grpc.RpcError) -> None:
    """Reads the machine-readable details the service attaches to every error."""
    print(f"error: {error.code().name}: {error.details()}")
    status = rpc_status.from_call(error)
    if status is None:
        return
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            print(f"reason: {info.reason}")
            for key, value in sorted(info.metadata.items()):
                print(f"  {key}: {value}")
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            print(f"retry after: {retry.retry_delay.ToTimedelta().total_seconds()}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--token", required=True)
    args = parser.parse_args()

    with grpc.insecure_channel(args.addr) as channel:
        stub = pb_grpc.IdentityProviderServiceStub(channel)
        try:
            # The two lines a caller needs: build the request, send it.
            request = pb.GetUserAuthFactorsRequest(access_token=args.token)
            response = stub.GetUserAuthFactors(request, timeout=5)
        except grpc.RpcError as error:
            print_error_details(error)
            return 1

    print(f"username: {response.username}")
    if response.HasField("preferred_mfa_setting"):
        print(f"preferred MFA: {pb.MfaType.Name(response.preferred_mfa_setting)}")
    for mfa in response.user_mfa_setting_list:
        print(f"MFA: {pb.MfaType.Name(mfa)}")
    for factor in response.configured_user_auth_factors:
        print(f"factor: {pb.AuthFactorType.Name(factor)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
