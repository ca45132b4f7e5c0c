// A Node.js client of cognito-facade: calls GetUserAuthFactors and prints the
// user's factors, or the error with its google.rpc details, retrying what the
// README's error tables mark retryable.
//
//   node client.js --addr 127.0.0.1:50051 --token "$ACCESS_TOKEN"
//   node client.js --addr facade.internal:443 --ca ca.pem --token "$ACCESS_TOKEN"
//
// The service definition is loaded from proto/ at run time by
// @grpc/proto-loader (Node's standard way); nothing generated is committed.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const googleProtoFiles = require('google-proto-files');

const PROTO_ROOT = path.join(__dirname, '..', '..', 'proto');

// The ErrorInfo reasons the README's error tables mark retryable. An error
// without ErrorInfo is retried only when it is UNAVAILABLE (the service
// itself unreachable, or draining).
const RETRYABLE = new Set([
  'TOO_MANY_REQUESTS',
  'COGNITO_INTERNAL_ERROR',
  'UPSTREAM_UNAVAILABLE',
  'UPSTREAM_UNREACHABLE',
  'CREDENTIALS_SOURCE_FAILED',
  'UPSTREAM_TIMEOUT',
  'UPSTREAM_BAD_RESPONSE',
  'UPSTREAM_RATE_LIMITED',
  'OVERLOADED',
  'REQUEST_BYTES_EXHAUSTED',
]);
const FIRST_BACKOFF_MS = 200; // doubled after each attempt, jittered
const MAX_BACKOFF_MS = 2000;
const MIN_ATTEMPT_MS = 100; // no retry with less of the deadline left

function loadService() {
  const definition = protoLoader.loadSync('cognito/idp/v1/identity_provider.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the .proto: access_token, username, ...
    enums: String, // enum values as names, e.g. AUTH_FACTOR_TYPE_PASSWORD
    defaults: true, // absent repeated fields as [], not undefined
    oneofs: true, // proto3 `optional` presence, as `_preferred_mfa_setting`
  });
  return grpc.loadPackageDefinition(definition).cognito.idp.v1.IdentityProviderService;
}

// The google.rpc types, to decode the `grpc-status-details-bin` trailer.
function loadErrorTypes() {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(googleProtoFiles.getProtoPath(), '..', target);
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
  return {
    Status: root.lookupType('google.rpc.Status'),
    ErrorInfo: root.lookupType('google.rpc.ErrorInfo'),
    RetryInfo: root.lookupType('google.rpc.RetryInfo'),
    BadRequest: root.lookupType('google.rpc.BadRequest'),
  };
}
const ERROR_TYPES = loadErrorTypes();

// The details of the `grpc-status-details-bin` trailer; none if it does not
// decode.
function statusDetails(error) {
  const [raw] = error.metadata ? error.metadata.get('grpc-status-details-bin') : [];
  try {
    return raw ? ERROR_TYPES.Status.decode(raw).details : [];
  } catch {
    return [];
  }
}

// An error status and what its details say.
function decodeFailure(error) {
  const failure = { error, info: null, retryDelayMs: null, violations: [] };
  for (const detail of statusDetails(error)) {
    try {
      if (detail.type_url.endsWith('/google.rpc.ErrorInfo')) {
        failure.info = ERROR_TYPES.ErrorInfo.decode(detail.value);
      } else if (detail.type_url.endsWith('/google.rpc.RetryInfo')) {
        const delay = ERROR_TYPES.RetryInfo.decode(detail.value).retryDelay;
        const ms = delay ? Number(delay.seconds) * 1000 + Math.trunc(delay.nanos / 1e6) : 0;
        if (ms > 0) failure.retryDelayMs = ms;
      } else if (detail.type_url.endsWith('/google.rpc.BadRequest')) {
        failure.violations = ERROR_TYPES.BadRequest.decode(detail.value).fieldViolations;
      }
    } catch {
      // A detail that does not decode is skipped.
    }
  }
  failure.reason = failure.info ? failure.info.reason : '-';
  failure.retryable = failure.info
    ? RETRYABLE.has(failure.info.reason)
    : error.code === grpc.status.UNAVAILABLE;
  return failure;
}

// One attempt: resolves to { response, headers } or rejects with the error.
function attemptOnce(client, metadata, deadline) {
  return new Promise((resolve, reject) => {
    let headers = new grpc.Metadata();
    const call = client.GetUserAuthFactors({}, metadata, { deadline }, (error, response) =>
      error ? reject(error) : resolve({ response, headers }),
    );
    call.on('metadata', (received) => {
      headers = received;
    });
  });
}

// Calls until an answer, an error not worth retrying, the last attempt, or a
// wait that would pass the deadline.
async function callWithRetries(client, token, timeoutMs, attempts) {
  const deadline = new Date(Date.now() + timeoutMs); // for gRPC, which takes a Date
  const deadlineMs = performance.now() + timeoutMs; // for the waits: a monotonic clock
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`); // the token goes in metadata
  for (let attempt = 1; ; attempt += 1) {
    try {
      return { ...(await attemptOnce(client, metadata, deadline)), attempt };
    } catch (error) {
      const failure = decodeFailure(error);
      if (attempt >= attempts || !failure.retryable) return { failure, attempt };
      const backoff = Math.min(FIRST_BACKOFF_MS * 2 ** Math.min(attempt - 1, 10), MAX_BACKOFF_MS);
      const fromRetryInfo = failure.retryDelayMs !== null;
      const wait = fromRetryInfo ? failure.retryDelayMs : backoff / 2 + Math.random() * (backoff / 2);
      if (performance.now() + wait + MIN_ATTEMPT_MS >= deadlineMs) return { failure, attempt };
      const how = fromRetryInfo ? `in ${Math.round(wait)}ms (RetryInfo)` : 'after backoff';
      console.log(`retry ${attempt} ${how}: ${grpc.status[error.code]} ${failure.reason}`);
      await new Promise((done) => setTimeout(done, wait));
    }
  }
}

function printFailure({ error, info, retryDelayMs, retryable, violations }, attempt) {
  console.log(`error: ${grpc.status[error.code]}: ${error.details || ''}`);
  const [source] = error.metadata ? error.metadata.get('x-cognito-facade-source') : [];
  if (source) console.log(`source: ${source}`);
  if (info) {
    console.log(`reason: ${info.reason}`);
    console.log(`domain: ${info.domain}`);
    for (const key of Object.keys(info.metadata).sort()) {
      console.log(`metadata ${key}: ${info.metadata[key]}`);
    }
  }
  for (const { field, description } of violations) console.log(`violation ${field}: ${description}`);
  if (retryDelayMs !== null) console.log(`retry delay: ${retryDelayMs}ms`);
  console.log(`retryable: ${retryable ? 'yes' : 'no'}`);
  console.log(`attempts: ${attempt}`);
}

function printAnswer(response, headers, attempt) {
  const [source] = headers.get('x-cognito-facade-source');
  if (source) console.log(`source: ${source}`);
  const [age] = headers.get('x-cognito-facade-age-seconds');
  if (age) console.log(`age: ${age}s`);
  console.log(`username: ${response.username}`);
  if (response._preferred_mfa_setting === 'preferred_mfa_setting') {
    console.log(`preferred MFA: ${response.preferred_mfa_setting}`);
  }
  for (const mfa of response.user_mfa_setting_list) console.log(`MFA: ${mfa}`);
  for (const factor of response.configured_user_auth_factors) console.log(`factor: ${factor}`);
  console.log(`attempts: ${attempt}`);
}

function credentials({ ca, tls }) {
  if (ca) return grpc.credentials.createSsl(fs.readFileSync(ca));
  // Node's bundled roots (plus NODE_EXTRA_CA_CERTS; --use-openssl-ca for the system's).
  if (tls) return grpc.credentials.createSsl();
  return grpc.credentials.createInsecure();
}

function usage(why) {
  console.error(`${why}\nusage: node client.js --addr HOST:PORT --token TOKEN [--tls | --ca FILE]`
    + ' [--timeout SECONDS] [--attempts N]');
  process.exit(2);
}

async function main() {
  let values;
  try {
    ({ values } = parseArgs({
      strict: true,
      options: {
        addr: { type: 'string', default: '127.0.0.1:50051' },
        token: { type: 'string' },
        tls: { type: 'boolean', default: false },
        ca: { type: 'string' },
        timeout: { type: 'string', default: '5' }, // seconds, every attempt included
        attempts: { type: 'string', default: '3' },
      },
    }));
  } catch (error) {
    usage(error.message);
  }
  const timeoutMs = Number(values.timeout) * 1000;
  const attempts = Number(values.attempts);
  if (!values.token) usage('--token is required');
  if (!/^[!-~]+$/.test(values.token)) usage('the token must be visible ASCII, to be sent as metadata');
  if (!(timeoutMs > 0 && timeoutMs <= 3600 * 1000) || !(Number.isInteger(attempts) && attempts >= 1 && attempts <= 10)) {
    usage('--attempts must be 1 to 10, and --timeout more than 0 and at most 3600 seconds');
  }
  const Service = loadService();
  let creds;
  try {
    creds = credentials(values);
  } catch (error) {
    usage(`cannot read --ca: ${error.message}`);
  }
  const client = new Service(values.addr, creds);
  const result = await callWithRetries(client, values.token, timeoutMs, attempts);
  client.close();
  if (result.failure) {
    printFailure(result.failure, result.attempt);
    process.exitCode = 1;
    return;
  }
  printAnswer(result.response, result.headers, result.attempt);
}

main();
