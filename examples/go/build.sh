#!/usr/bin/env bash
# Generates the stubs from proto/ and builds the client into $OUT (default
# .build/client), offline, against Debian's Go packages:
#   sudo apt-get install golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc \
#     golang-google-grpc-dev golang-google-genproto-dev golang-google-protobuf-dev \
#     golang-github-golang-protobuf-1-5-dev
# Debian ships the libraries for GOPATH mode, in /usr/share/gocode; with Go
# modules, `go get google.golang.org/grpc google.golang.org/genproto/googleapis/rpc`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "${BUILD:-$here/.build}"
build="$(cd "${BUILD:-$here/.build}" && pwd)"
out="${OUT:-$build/client}"
src="$build/gopath/src/cognitofacade"
rm -rf "$src"
mkdir -p "$src/gen/idpv1" "$src/client"
# The proto has no go_package: map it to an import path here.
map="Mcognito/idp/v1/identity_provider.proto=cognitofacade/gen/idpv1"
protoc -I "$here/../../proto" \
  --go_out="$src/gen/idpv1" --go_opt=paths=source_relative,"$map" \
  --go-grpc_out="$src/gen/idpv1" --go-grpc_opt=paths=source_relative,"$map" \
  cognito/idp/v1/identity_provider.proto
mv "$src/gen/idpv1/cognito/idp/v1/"*.go "$src/gen/idpv1/"
cp "$here/main.go" "$src/client/"
cd "$src/client"
GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$build/gopath:/usr/share/gocode" \
  GOCACHE="$build/cache" go build -o "$out" .
