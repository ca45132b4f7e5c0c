// A Go client of cognito-facade: calls GetUserAuthFactors and prints the
// user's factors, or the error with its google.rpc details, retrying what
// the README's error tables mark retryable.
//
//	./build.sh && .build/client --addr 127.0.0.1:50051 --token "$ACCESS_TOKEN"
//	.build/client --addr facade.internal:443 --ca ca.pem --token "$ACCESS_TOKEN"
//
// With --username and --user-pool-id it calls AdminGetUserAuthFactors
// instead, which the service answers only for the callers its
// --admin-callers names: usually over mutual TLS, with --cert and --key.
//
//	.build/client --addr facade.internal:443 --ca ca.pem --cert me.pem --key me.key \
//	  --user-pool-id eu-west-1_AbCdEf123 --username alice
//
// The stubs are generated from proto/ by build.sh (protoc-gen-go and
// protoc-gen-go-grpc); nothing generated is committed.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	idpv1 "cognitofacade/gen/idpv1"
)

// retryable holds the ErrorInfo reasons the README's error tables mark
// retryable. An error without ErrorInfo is retried only when it is
// UNAVAILABLE (the service itself unreachable, or draining).
var retryable = map[string]bool{
	"TOO_MANY_REQUESTS":         true,
	"COGNITO_INTERNAL_ERROR":    true,
	"UPSTREAM_UNAVAILABLE":      true,
	"UPSTREAM_UNREACHABLE":      true,
	"CREDENTIALS_SOURCE_FAILED": true,
	"UPSTREAM_TIMEOUT":          true,
	"UPSTREAM_BAD_RESPONSE":     true,
	"UPSTREAM_RATE_LIMITED":     true,
	"OVERLOADED":                true,
	"REQUEST_BYTES_EXHAUSTED":   true,
}

const (
	// firstBackoff is doubled after each attempt up to maxBackoff, and
	// jittered.
	firstBackoff = 200 * time.Millisecond
	maxBackoff   = 2 * time.Second
	// minAttempt: no retry with less of the deadline left.
	minAttempt = 100 * time.Millisecond
)

// failure is an error status and what its details say.
type failure struct {
	status     *status.Status
	trailer    metadata.MD
	info       *errdetails.ErrorInfo
	retryDelay *time.Duration // RetryInfo's, when it gives at least 1 ms
	violations []*errdetails.BadRequest_FieldViolation
}

func newFailure(err error, trailer metadata.MD) *failure {
	f := &failure{status: status.Convert(err), trailer: trailer}
	// A detail that does not decode comes back as an error value: skipped.
	for _, detail := range f.status.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			f.info = d
		case *errdetails.RetryInfo:
			if delay := d.GetRetryDelay().AsDuration(); delay >= time.Millisecond {
				f.retryDelay = &delay
			}
		case *errdetails.BadRequest:
			f.violations = d.GetFieldViolations()
		}
	}
	return f
}

func (f *failure) reason() string {
	if f.info == nil {
		return "-"
	}
	return f.info.GetReason()
}

func (f *failure) retryable() bool {
	if f.info == nil {
		return f.status.Code() == codes.Unavailable
	}
	return retryable[f.info.GetReason()]
}

// codeName is a code's canonical name, as other gRPC libraries print it:
// NotFound becomes NOT_FOUND.
func codeName(code codes.Code) string {
	if code == codes.Canceled {
		return "CANCELLED"
	}
	var name strings.Builder
	for i, c := range code.String() {
		if i > 0 && c >= 'A' && c <= 'Z' {
			name.WriteByte('_')
		}
		name.WriteRune(c)
	}
	return strings.ToUpper(name.String())
}

// factors is what both RPCs answer: the user's name, MFA methods and
// sign-in factors.
type factors struct {
	username  string
	preferred *idpv1.MfaType
	mfa       []idpv1.MfaType
	factors   []idpv1.AuthFactorType
}

// answer is a success and the response metadata it came with.
type answer struct {
	response factors
	header   metadata.MD
}

// attempt makes one call of the RPC chosen, into header and trailer.
type attempt func(ctx context.Context, header, trailer *metadata.MD) (factors, error)

// byToken is GetUserAuthFactors: the token goes in metadata; the request's
// field stays empty.
func byToken(client idpv1.IdentityProviderServiceClient, token string) attempt {
	return func(ctx context.Context, header, trailer *metadata.MD) (factors, error) {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
		r, err := client.GetUserAuthFactors(ctx, &idpv1.GetUserAuthFactorsRequest{},
			grpc.Header(header), grpc.Trailer(trailer))
		if err != nil {
			return factors{}, err
		}
		return factors{r.GetUsername(), r.PreferredMfaSetting, r.GetUserMfaSettingList(), r.GetConfiguredUserAuthFactors()}, nil
	}
}

// byUsername is AdminGetUserAuthFactors: a user named by pool and username.
func byUsername(client idpv1.IdentityProviderServiceClient, pool, username string) attempt {
	return func(ctx context.Context, header, trailer *metadata.MD) (factors, error) {
		request := &idpv1.AdminGetUserAuthFactorsRequest{UserPoolId: pool, Username: username}
		r, err := client.AdminGetUserAuthFactors(ctx, request, grpc.Header(header), grpc.Trailer(trailer))
		if err != nil {
			return factors{}, err
		}
		return factors{r.GetUsername(), r.PreferredMfaSetting, r.GetUserMfaSettingList(), r.GetConfiguredUserAuthFactors()}, nil
	}
}

// call calls until an answer, an error not worth retrying, the last
// attempt, or a wait that would pass the deadline.
func call(rpc attempt, timeout time.Duration, attempts int) (*answer, *failure, int) {
	deadline := time.Now().Add(timeout)
	random := rand.New(rand.NewSource(time.Now().UnixNano()))
	for attempt := 1; ; attempt++ {
		attemptCtx, cancel := context.WithDeadline(context.Background(), deadline)
		var header, trailer metadata.MD
		response, err := rpc(attemptCtx, &header, &trailer)
		cancel()
		if err == nil {
			return &answer{response, header}, nil, attempt
		}
		f := newFailure(err, trailer)
		if attempt >= attempts || !f.retryable() {
			return nil, f, attempt
		}
		backoff := maxBackoff
		if attempt <= 10 && firstBackoff<<(attempt-1) < maxBackoff {
			backoff = firstBackoff << (attempt - 1)
		}
		wait := backoff/2 + time.Duration(random.Int63n(int64(backoff/2)+1))
		how := "after backoff"
		if f.retryDelay != nil {
			wait = *f.retryDelay
			how = fmt.Sprintf("in %dms (RetryInfo)", wait.Milliseconds())
		}
		if !time.Now().Add(wait + minAttempt).Before(deadline) {
			return nil, f, attempt
		}
		fmt.Printf("retry %d %s: %s %s\n", attempt, how, codeName(f.status.Code()), f.reason())
		time.Sleep(wait)
	}
}

func first(md metadata.MD, key string) string {
	if values := md.Get(key); len(values) > 0 {
		return values[0]
	}
	return ""
}

func printFailure(f *failure, attempts int) {
	fmt.Printf("error: %s: %s\n", codeName(f.status.Code()), f.status.Message())
	if source := first(f.trailer, "x-cognito-facade-source"); source != "" {
		fmt.Printf("source: %s\n", source)
	}
	if f.info != nil {
		fmt.Printf("reason: %s\n", f.info.GetReason())
		fmt.Printf("domain: %s\n", f.info.GetDomain())
		keys := make([]string, 0, len(f.info.GetMetadata()))
		for key := range f.info.GetMetadata() {
			keys = append(keys, key)
		}
		sort.Strings(keys)
		for _, key := range keys {
			fmt.Printf("metadata %s: %s\n", key, f.info.GetMetadata()[key])
		}
	}
	for _, v := range f.violations {
		fmt.Printf("violation %s: %s\n", v.GetField(), v.GetDescription())
	}
	if f.retryDelay != nil {
		fmt.Printf("retry delay: %dms\n", f.retryDelay.Milliseconds())
	}
	yes := map[bool]string{true: "yes", false: "no"}
	fmt.Printf("retryable: %s\n", yes[f.retryable()])
	fmt.Printf("attempts: %d\n", attempts)
}

func printAnswer(a *answer, attempts int) {
	if source := first(a.header, "x-cognito-facade-source"); source != "" {
		fmt.Printf("source: %s\n", source)
	}
	if age := first(a.header, "x-cognito-facade-age-seconds"); age != "" {
		fmt.Printf("age: %ss\n", age)
	}
	r := a.response
	fmt.Printf("username: %s\n", r.username)
	if r.preferred != nil {
		fmt.Printf("preferred MFA: %s\n", *r.preferred)
	}
	for _, mfa := range r.mfa {
		fmt.Printf("MFA: %s\n", mfa)
	}
	for _, factor := range r.factors {
		fmt.Printf("factor: %s\n", factor)
	}
	fmt.Printf("attempts: %d\n", attempts)
}

// transport is TLS (trusting --ca, or the system's roots) or plaintext;
// with a client certificate (--cert and --key), mutual TLS.
func transport(useTLS bool, ca, cert, key string) (grpc.DialOption, error) {
	switch {
	case cert != "":
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, err
		}
		config := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
		if ca != "" {
			pem, err := os.ReadFile(ca)
			if err != nil {
				return nil, err
			}
			config.RootCAs = x509.NewCertPool()
			if !config.RootCAs.AppendCertsFromPEM(pem) {
				return nil, errors.New("no certificate in " + ca)
			}
		}
		return grpc.WithTransportCredentials(credentials.NewTLS(config)), nil
	case ca != "":
		creds, err := credentials.NewClientTLSFromFile(ca, "")
		if err != nil {
			return nil, err
		}
		return grpc.WithTransportCredentials(creds), nil
	case useTLS:
		return grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})), nil
	default:
		// grpc-go 1.34 and later: grpc.WithTransportCredentials(insecure.NewCredentials()).
		return grpc.WithInsecure(), nil
	}
}

func usage(why string) {
	fmt.Fprintf(os.Stderr, "%s\nusage: client --addr HOST:PORT (--token TOKEN | --username USER --user-pool-id POOL) [--tls | --ca FILE] [--cert FILE --key FILE] [--timeout SECONDS] [--attempts N]\n", why)
	os.Exit(2)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "HOST:PORT of the service")
	token := flag.String("token", "", "the user's access token")
	username := flag.String("username", "", "with --user-pool-id: ask by pool and username instead")
	pool := flag.String("user-pool-id", "", "the user's pool, with --username")
	useTLS := flag.Bool("tls", false, "TLS, trusting the system's roots")
	ca := flag.String("ca", "", "TLS, trusting this PEM CA bundle")
	cert := flag.String("cert", "", "mutual TLS: this client certificate (PEM), with --key")
	key := flag.String("key", "", "mutual TLS: the client certificate's private key (PEM)")
	timeout := flag.Float64("timeout", 5, "seconds, every attempt included (at most 3600)")
	attempts := flag.Int("attempts", 3, "attempts at most, the first included (1 to 10)")
	flag.Parse()
	switch {
	case (*username == "") != (*pool == ""):
		usage("--username and --user-pool-id go together")
	case (*token == "") == (*username == ""):
		usage("give --token, or --username and --user-pool-id")
	case (*cert == "") != (*key == ""):
		usage("--cert and --key go together")
	case *token != "" && strings.IndexFunc(*token, func(c rune) bool { return c < '!' || c > '~' }) >= 0:
		usage("--token must be visible ASCII (it goes in metadata)")
	case flag.NArg() > 0:
		usage("unexpected argument: " + flag.Arg(0))
	case !(*timeout > 0 && *timeout <= 3600) || *attempts < 1 || *attempts > 10:
		usage("--attempts must be 1 to 10, and --timeout more than 0 and at most 3600 seconds")
	}
	creds, err := transport(*useTLS, *ca, *cert, *key)
	if err != nil {
		usage(err.Error())
	}
	// Dial does not wait for a connection: an unreachable service is an
	// UNAVAILABLE status like any other, and can be retried. (grpc-go 1.63
	// and later: grpc.NewClient.)
	conn, err := grpc.Dial(*addr, creds)
	if err != nil {
		usage(err.Error())
	}
	defer conn.Close()
	client := idpv1.NewIdentityProviderServiceClient(conn)
	rpc := byToken(client, *token)
	if *username != "" {
		rpc = byUsername(client, *pool, *username)
	}
	a, f, n := call(rpc, time.Duration(*timeout*float64(time.Second)), *attempts)
	if f != nil {
		printFailure(f, n)
		conn.Close()
		os.Exit(1)
	}
	printAnswer(a, n)
}
