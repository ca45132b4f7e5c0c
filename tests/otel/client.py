"""A gRPC caller traced by OpenTelemetry's own Python SDK and its gRPC
client instrumentation: it calls GetUserAuthFactors inside a span of its
own, exports its spans over OTLP/gRPC, and prints its trace id.

    python client.py SERVICE_ADDR OTLP_GRPC_ADDR TOKEN [CALLS]
"""

import sys

import grpc
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

METHOD = "/cognito.idp.v1.IdentityProviderService/GetUserAuthFactors"


def request_bytes(token):
    """GetUserAuthFactorsRequest{access_token = token}: field 1, a string."""
    data = token.encode()
    length, varint = len(data), b""
    while True:
        byte = length & 0x7F
        length >>= 7
        varint += bytes([byte | (0x80 if length else 0)])
        if not length:
            break
    return b"\x0a" + varint + data


def main():
    service, collector, token = sys.argv[1], sys.argv[2], sys.argv[3]
    calls = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    provider = TracerProvider(resource=Resource.create({"service.name": "python-caller"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=collector, insecure=True)))
    trace.set_tracer_provider(provider)
    GrpcInstrumentorClient().instrument()
    channel = grpc.insecure_channel(service)
    call = channel.unary_unary(METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    tracer = trace.get_tracer("python-caller")
    with tracer.start_as_current_span("caller-operation") as span:
        for _ in range(calls):
            call(request_bytes(token), timeout=10)
        print(format(span.get_span_context().trace_id, "032x"), flush=True)
    provider.shutdown()


if __name__ == "__main__":
    main()
