#!/usr/bin/env bash
# Generates the stubs from proto/ and compiles the client into $BUILD
# (default .build), offline, against Debian's Java packages; writes the
# launcher $BUILD/client.
#   sudo apt-get install default-jdk-headless protobuf-compiler \
#     protobuf-compiler-grpc-java-plugin libgrpc-java libprotobuf-java \
#     libgoogle-common-protos-java libguava-java libnetty-java libperfmark-java \
#     libgoogle-gson-java libgeronimo-annotation-1.3-spec-java \
#     libnetty-tcnative-java libnetty-tcnative-jni
# With Maven or Gradle, depend on io.grpc:grpc-netty-shaded, grpc-protobuf and
# grpc-stub, and generate with protobuf-maven-plugin or the protobuf Gradle plugin.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "${BUILD:-$here/.build}"
build="$(cd "${BUILD:-$here/.build}" && pwd)"
jars=/usr/share/java
classpath=""
for jar in grpc-api grpc-context grpc-core grpc-netty grpc-protobuf grpc-protobuf-lite \
  grpc-stub protobuf proto-google-common-protos guava perfmark-api gson \
  error_prone_annotations jsr305 netty-buffer netty-codec netty-codec-http \
  netty-codec-http2 netty-codec-socks netty-common netty-handler \
  netty-handler-proxy netty-resolver netty-transport netty-tcnative; do
  classpath="$classpath:$jars/$jar.jar"
done
classpath="${classpath#:}"
rm -rf "$build/generated" "$build/classes" "$build/native"
mkdir -p "$build/generated" "$build/classes" "$build/native"
# TLS: Debian's netty has no ALPN on the JDK's own TLS, and gRPC needs ALPN,
# so TLS goes through OpenSSL (netty-tcnative). Netty loads the library as
# libnetty_tcnative.so, and the library checks the name it is loaded under:
# a copy, not a link, under that name.
cp "$(dpkg -L libnetty-tcnative-jni | grep '/libnetty-tcnative\.so$')" "$build/native/libnetty_tcnative.so"
protoc -I "$here/../../proto" \
  --java_out="$build/generated" \
  --plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin --grpc-java_out="$build/generated" \
  cognito/idp/v1/identity_provider.proto
# The plugin marks its output @javax.annotation.Generated, which JDK 11+ lacks.
find "$build/generated" -name '*.java' >"$build/sources"
echo "$here/Client.java" >>"$build/sources"
javac -nowarn -d "$build/classes" \
  -cp "$classpath:$jars/geronimo-annotation-1.3-spec.jar" @"$build/sources"
cat > "$build/client" <<LAUNCHER
#!/bin/sh
exec java -Djava.library.path="$build/native" -cp "$build/classes:$classpath" Client "\$@"
LAUNCHER
chmod +x "$build/client"
