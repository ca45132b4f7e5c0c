// A Java client of cognito-facade: calls GetUserAuthFactors and prints the
// user's factors, or the error with its google.rpc details, retrying what
// the README's error tables mark retryable.
//
//   ./build.sh && .build/client --addr 127.0.0.1:50051 --token "$ACCESS_TOKEN"
//   .build/client --addr facade.internal:443 --ca ca.pem --token "$ACCESS_TOKEN"
//
// The stubs are generated from proto/ by build.sh (protoc's java output and
// grpc-java's plugin); nothing generated is committed.

import cognito.idp.v1.IdentityProvider.AuthFactorType;
import cognito.idp.v1.IdentityProvider.GetUserAuthFactorsRequest;
import cognito.idp.v1.IdentityProvider.GetUserAuthFactorsResponse;
import cognito.idp.v1.IdentityProvider.MfaType;
import cognito.idp.v1.IdentityProviderServiceGrpc;
import com.google.protobuf.Any;
import com.google.protobuf.ByteString;
import com.google.protobuf.CodedInputStream;
import com.google.protobuf.WireFormat;
import com.google.rpc.BadRequest;
import com.google.rpc.RetryInfo;
import io.grpc.ChannelCredentials;
import io.grpc.Deadline;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.MetadataUtils;
import java.io.File;
import java.io.IOException;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

public final class Client {
  /**
   * The ErrorInfo reasons the README's error tables mark retryable. An error without ErrorInfo is
   * retried only when it is UNAVAILABLE (the service itself unreachable, or draining).
   */
  static final Set<String> RETRYABLE =
      Set.of(
          "TOO_MANY_REQUESTS",
          "COGNITO_INTERNAL_ERROR",
          "UPSTREAM_UNAVAILABLE",
          "UPSTREAM_UNREACHABLE",
          "CREDENTIALS_SOURCE_FAILED",
          "UPSTREAM_TIMEOUT",
          "UPSTREAM_BAD_RESPONSE",
          "UPSTREAM_RATE_LIMITED",
          "OVERLOADED",
          "REQUEST_BYTES_EXHAUSTED");
  /** Doubled after each attempt up to MAX_BACKOFF, and jittered. */
  static final Duration FIRST_BACKOFF = Duration.ofMillis(200);

  static final Duration MAX_BACKOFF = Duration.ofSeconds(2);
  /** No retry with less of the deadline left. */
  static final Duration MIN_ATTEMPT = Duration.ofMillis(100);

  static final Metadata.Key<String> AUTHORIZATION = ascii("authorization");
  static final Metadata.Key<String> SOURCE = ascii("x-cognito-facade-source");
  static final Metadata.Key<String> AGE = ascii("x-cognito-facade-age-seconds");

  static Metadata.Key<String> ascii(String name) {
    return Metadata.Key.of(name, Metadata.ASCII_STRING_MARSHALLER);
  }

  /**
   * google.rpc.ErrorInfo. With proto-google-common-protos 1.18 or later, use {@code
   * detail.unpack(com.google.rpc.ErrorInfo.class)} instead: Debian's 1.16 predates ErrorInfo, so
   * it is read here by its field numbers.
   */
  record ErrorInfo(String reason, String domain, Map<String, String> metadata) {
    static ErrorInfo parse(ByteString bytes) throws IOException {
      CodedInputStream in = bytes.newCodedInput();
      String reason = "";
      String domain = "";
      Map<String, String> metadata = new TreeMap<>(); // sorted by key
      for (int tag = in.readTag(); tag != 0; tag = in.readTag()) {
        boolean delimited = WireFormat.getTagWireType(tag) == WireFormat.WIRETYPE_LENGTH_DELIMITED;
        switch (delimited ? WireFormat.getTagFieldNumber(tag) : 0) {
          case 1 -> reason = in.readStringRequireUtf8();
          case 2 -> domain = in.readStringRequireUtf8();
          case 3 -> { // map<string, string>: entries of key (1) and value (2)
            String[] entry = {"", ""};
            CodedInputStream pair = in.readBytes().newCodedInput();
            for (int t = pair.readTag(); t != 0; t = pair.readTag()) {
              int field = WireFormat.getTagFieldNumber(t);
              if ((field == 1 || field == 2)
                  && WireFormat.getTagWireType(t) == WireFormat.WIRETYPE_LENGTH_DELIMITED) {
                entry[field - 1] = pair.readStringRequireUtf8();
              } else {
                pair.skipField(t);
              }
            }
            metadata.put(entry[0], entry[1]);
          }
          default -> in.skipField(tag);
        }
      }
      return new ErrorInfo(reason, domain, metadata);
    }
  }

  /** An error status and what its details say. */
  static final class Failure {
    final Status status;
    final Metadata trailers;
    ErrorInfo info;
    /** RetryInfo's delay, when it gives at least 1 ms. */
    Duration retryDelay;

    List<BadRequest.FieldViolation> violations = List.of();

    Failure(StatusRuntimeException error) {
      status = error.getStatus();
      trailers = error.getTrailers() != null ? error.getTrailers() : new Metadata();
      com.google.rpc.Status rich;
      try {
        rich = StatusProto.fromThrowable(error);
      } catch (RuntimeException e) { // details that do not decode count as none
        rich = null;
      }
      for (Any detail : rich != null ? rich.getDetailsList() : List.<Any>of()) {
        try {
          read(detail);
        } catch (IOException e) {
          // A detail that does not decode is skipped.
        }
      }
    }

    private void read(Any detail) throws IOException {
      if (detail.getTypeUrl().endsWith("/google.rpc.ErrorInfo")) {
        info = ErrorInfo.parse(detail.getValue());
      } else if (detail.is(RetryInfo.class)) {
        com.google.protobuf.Duration delay = detail.unpack(RetryInfo.class).getRetryDelay();
        Duration wait = Duration.ofSeconds(delay.getSeconds(), delay.getNanos());
        retryDelay = wait.toMillis() > 0 ? wait : null;
      } else if (detail.is(BadRequest.class)) {
        violations = detail.unpack(BadRequest.class).getFieldViolationsList();
      }
    }

    String reason() {
      return info == null ? "-" : info.reason();
    }

    boolean retryable() {
      if (info == null) {
        return status.getCode() == Status.Code.UNAVAILABLE;
      }
      return RETRYABLE.contains(info.reason());
    }
  }

  /** An answer or a failure, and the attempt that ended the call. */
  record Outcome(
      GetUserAuthFactorsResponse response, Metadata headers, Failure failure, int attempts) {}

  /**
   * Calls until an answer, an error not worth retrying, the last attempt, or a wait that would
   * pass the deadline.
   */
  static Outcome call(ManagedChannel channel, String token, Duration timeout, int attempts)
      throws InterruptedException {
    Deadline deadline = Deadline.after(timeout.toNanos(), TimeUnit.NANOSECONDS);
    Metadata bearer = new Metadata();
    bearer.put(AUTHORIZATION, "Bearer " + token); // the token goes in metadata
    for (int attempt = 1; ; attempt++) {
      AtomicReference<Metadata> headers = new AtomicReference<>();
      AtomicReference<Metadata> trailers = new AtomicReference<>();
      IdentityProviderServiceGrpc.IdentityProviderServiceBlockingStub stub =
          IdentityProviderServiceGrpc.newBlockingStub(channel)
              .withDeadline(deadline)
              .withInterceptors(
                  MetadataUtils.newAttachHeadersInterceptor(bearer),
                  MetadataUtils.newCaptureMetadataInterceptor(headers, trailers));
      try {
        GetUserAuthFactorsResponse response =
            stub.getUserAuthFactors(GetUserAuthFactorsRequest.getDefaultInstance());
        return new Outcome(response, headers.get(), null, attempt);
      } catch (StatusRuntimeException error) {
        Failure failure = new Failure(error);
        if (attempt >= attempts || !failure.retryable()) {
          return new Outcome(null, null, failure, attempt);
        }
        long backoff =
            Math.min(FIRST_BACKOFF.toMillis() << Math.min(attempt - 1, 10), MAX_BACKOFF.toMillis());
        Duration wait =
            failure.retryDelay != null
                ? failure.retryDelay
                : Duration.ofMillis(ThreadLocalRandom.current().nextLong(backoff / 2, backoff + 1));
        Duration left = Duration.ofNanos(deadline.timeRemaining(TimeUnit.NANOSECONDS));
        if (wait.compareTo(left.minus(MIN_ATTEMPT)) >= 0) {
          return new Outcome(null, null, failure, attempt);
        }
        String how =
            failure.retryDelay != null
                ? "in " + wait.toMillis() + "ms (RetryInfo)"
                : "after backoff";
        System.out.printf(
            "retry %d %s: %s %s%n", attempt, how, failure.status.getCode(), failure.reason());
        Thread.sleep(wait.toMillis());
      }
    }
  }

  static void printFailure(Failure failure, int attempts) {
    String message = failure.status.getDescription();
    System.out.printf("error: %s: %s%n", failure.status.getCode(), message != null ? message : "");
    String source = failure.trailers.get(SOURCE);
    if (source != null && !source.isEmpty()) {
      System.out.printf("source: %s%n", source);
    }
    if (failure.info != null) {
      System.out.printf("reason: %s%n", failure.info.reason());
      System.out.printf("domain: %s%n", failure.info.domain());
      failure.info.metadata().forEach((k, v) -> System.out.printf("metadata %s: %s%n", k, v));
    }
    for (BadRequest.FieldViolation v : failure.violations) {
      System.out.printf("violation %s: %s%n", v.getField(), v.getDescription());
    }
    if (failure.retryDelay != null) {
      System.out.printf("retry delay: %dms%n", failure.retryDelay.toMillis());
    }
    System.out.printf("retryable: %s%n", failure.retryable() ? "yes" : "no");
    System.out.printf("attempts: %d%n", attempts);
  }

  static String mfa(int number) {
    MfaType known = MfaType.forNumber(number);
    return known != null ? known.name() : Integer.toString(number);
  }

  static void printAnswer(GetUserAuthFactorsResponse response, Metadata headers, int attempts) {
    String source = headers.get(SOURCE);
    if (source != null && !source.isEmpty()) {
      System.out.printf("source: %s%n", source);
    }
    if (headers.get(AGE) != null) {
      System.out.printf("age: %ss%n", headers.get(AGE));
    }
    System.out.printf("username: %s%n", response.getUsername());
    // The raw numbers, so a value newer than this client's proto prints as its number.
    if (response.hasPreferredMfaSetting()) {
      System.out.printf("preferred MFA: %s%n", mfa(response.getPreferredMfaSettingValue()));
    }
    for (int mfa : response.getUserMfaSettingListValueList()) {
      System.out.printf("MFA: %s%n", mfa(mfa));
    }
    for (int factor : response.getConfiguredUserAuthFactorsValueList()) {
      AuthFactorType known = AuthFactorType.forNumber(factor);
      System.out.printf("factor: %s%n", known != null ? known : factor);
    }
    System.out.printf("attempts: %d%n", attempts);
  }

  /** TLS (trusting --ca, or the system's roots) or plaintext. */
  static ChannelCredentials credentials(boolean tls, String ca) throws IOException {
    if (ca != null) {
      return TlsChannelCredentials.newBuilder().trustManager(new File(ca)).build();
    }
    return tls ? TlsChannelCredentials.create() : InsecureChannelCredentials.create();
  }

  static int usage(String why) {
    System.err.println(
        why
            + "\nusage: client --addr HOST:PORT --token TOKEN [--tls | --ca FILE]"
            + " [--timeout SECONDS] [--attempts N]");
    return 2;
  }

  static int run(String[] args) throws InterruptedException {
    Map<String, String> flags =
        new TreeMap<>(Map.of("--addr", "127.0.0.1:50051", "--timeout", "5", "--attempts", "3"));
    Set<String> valued = Set.of("--addr", "--token", "--ca", "--timeout", "--attempts");
    for (int i = 0; i < args.length; i++) {
      int equals = args[i].indexOf('=');
      if (args[i].equals("--tls")) {
        flags.put("--tls", "true");
      } else if (equals > 0 && valued.contains(args[i].substring(0, equals))) {
        flags.put(args[i].substring(0, equals), args[i].substring(equals + 1));
      } else if (valued.contains(args[i]) && i + 1 < args.length) {
        flags.put(args[i], args[++i]);
      } else {
        return usage("unknown flag or missing value: " + args[i]);
      }
    }
    String token = flags.get("--token");
    if (token == null || !token.matches("[!-~]+")) {
      return usage("--token is required, in visible ASCII (it goes in metadata)");
    }
    double seconds;
    int attempts;
    try {
      seconds = Double.parseDouble(flags.get("--timeout"));
      attempts = Integer.parseInt(flags.get("--attempts"));
    } catch (NumberFormatException e) {
      seconds = attempts = 0;
    }
    if (!(seconds > 0 && seconds <= 3600) || attempts < 1 || attempts > 10) {
      return usage("--attempts must be 1 to 10, and --timeout over 0 and at most 3600 seconds");
    }
    ChannelCredentials credentials;
    try {
      credentials = credentials(flags.containsKey("--tls"), flags.get("--ca"));
    } catch (IOException e) {
      return usage("cannot read --ca: " + e.getMessage());
    }
    // The channel connects on first use: an unreachable service is an UNAVAILABLE status like
    // any other, and can be retried.
    ManagedChannel channel = Grpc.newChannelBuilder(flags.get("--addr"), credentials).build();
    try {
      Duration timeout = Duration.ofNanos((long) (seconds * 1e9));
      Outcome outcome = call(channel, token, timeout, attempts);
      if (outcome.failure() != null) {
        printFailure(outcome.failure(), outcome.attempts());
        return 1;
      }
      printAnswer(outcome.response(), outcome.headers(), outcome.attempts());
      return 0;
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  public static void main(String[] args) throws InterruptedException {
    System.exit(run(args));
  }
}
