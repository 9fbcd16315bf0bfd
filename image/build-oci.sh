#!/usr/bin/env bash
# Builds the hartslag image as an OCI archive without a Docker daemon, using umoci: the same
# layout as the Dockerfile (binary in /usr/local/bin, the C runtime it links, CA
# certificates, non-root user 65532, /data as working directory and volume).
#
#   image/build-oci.sh [OUTPUT.tar]        (BINARY=path/to/hartslag to use a built binary;
#                                           default: cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/hartslag-oci.tar}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
command -v umoci >/dev/null || { echo "umoci is missing: apt-get install umoci" >&2; exit 1; }
if [[ -z ${BINARY:-} ]]; then
  cargo build --release --locked --bin hartslag
  BINARY=target/release/hartslag
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umoci init --layout "$work/layout"
umoci new --image "$work/layout:hartslag"
umoci unpack --image "$work/layout:hartslag" "$work/bundle"
root="$work/bundle/rootfs"
install -D -m 0755 "$BINARY" "$root/usr/local/bin/hartslag"
# The C runtime the binary links (glibc, libgcc_s, the dynamic loader), at their paths.
for lib in $(ldd "$BINARY" | grep -o '/[^ ]*'); do
  install -D -m 0644 "$lib" "$root$lib"
done
chmod 0755 "$root"/lib*/ld-linux* "$root"/lib/x86_64-linux-gnu/ld-linux* 2>/dev/null || true
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
install -d -m 0755 -o 65532 -g 65532 "$root/data"
install -d -m 1777 "$root/tmp"
umoci repack --image "$work/layout:hartslag" "$work/bundle"
umoci config --image "$work/layout:hartslag" \
  --config.entrypoint /usr/local/bin/hartslag --config.cmd operator \
  --config.user 65532:65532 --config.workingdir /data --config.volume /data \
  --config.exposedports 8080/tcp \
  --config.label org.opencontainers.image.title=hartslag \
  --config.label "org.opencontainers.image.version=$version" \
  --config.label org.opencontainers.image.licenses=Apache-2.0 \
  --config.label "org.opencontainers.image.description=Kubernetes-native heartbeat service"
umoci tag --image "$work/layout:hartslag" "$version"
umoci gc --layout "$work/layout"
mkdir -p "$(dirname "$out")"
tar -C "$work/layout" -cf "$out" .
echo "OCI archive: $out (tags hartslag, $version)"
