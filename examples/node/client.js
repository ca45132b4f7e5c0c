// A Node.js client of cognito-facade: calls GetUserAuthFactors and prints the
// user's factors, or the error with its google.rpc details.
//
//   node client.js --addr 127.0.0.1:50051 --token "$ACCESS_TOKEN"
//
// The service definition is loaded from proto/ at run time by
// @grpc/proto-loader (Node's standard way); nothing generated is committed.
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const googleProtoFiles = require('google-proto-files');

const PROTO_ROOT = path.join(__dirname, '..', '..', 'proto');

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
  };
}

function printErrorDetails(error) {
  console.log(`error: ${grpc.status[error.code]}: ${error.details}`);
  const [raw] = error.metadata.get('grpc-status-details-bin');
  if (!raw) return;
  const types = loadErrorTypes();
  const status = types.Status.decode(raw);
  for (const detail of status.details) {
    if (detail.type_url.endsWith('/google.rpc.ErrorInfo')) {
      const info = types.ErrorInfo.decode(detail.value);
      console.log(`reason: ${info.reason}`);
      for (const key of Object.keys(info.metadata).sort()) {
        console.log(`  ${key}: ${info.metadata[key]}`);
      }
    } else if (detail.type_url.endsWith('/google.rpc.RetryInfo')) {
      const retry = types.RetryInfo.decode(detail.value);
      const seconds = Number(retry.retryDelay.seconds) + retry.retryDelay.nanos / 1e9;
      console.log(`retry after: ${seconds}s`);
    }
  }
}

function main() {
  const { values } = parseArgs({
    options: {
      addr: { type: 'string', default: '127.0.0.1:50051' },
      token: { type: 'string' },
    },
  });
  if (!values.token) {
    console.error('usage: node client.js --addr HOST:PORT --token TOKEN');
    process.exit(2);
  }
  const Service = loadService();
  const client = new Service(values.addr, grpc.credentials.createInsecure());
  const deadline = new Date(Date.now() + 5000);
  // The two lines a caller needs: build the request, send it.
  client.GetUserAuthFactors({ access_token: values.token }, { deadline }, (error, response) => {
    client.close();
    if (error) {
      printErrorDetails(error);
      process.exitCode = 1;
      return;
    }
    console.log(`username: ${response.username}`);
    if (response._preferred_mfa_setting === 'preferred_mfa_setting') {
      console.log(`preferred MFA: ${response.preferred_mfa_setting}`);
    }
    for (const mfa of response.user_mfa_setting_list) console.log(`MFA: ${mfa}`);
    for (const factor of response.configured_user_auth_factors) console.log(`factor: ${factor}`);
  });
}

main();
