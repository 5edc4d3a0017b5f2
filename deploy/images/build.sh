#!/bin/sh
# Build Veil's images reproducibly (BuildKit) and print each image's digest: the value for the
# Helm chart's image.<name>.digest, and what a CoCo pod policy pins (deploy/images/README.md).
#   sh deploy/images/build.sh pin                      resolve base-images.lock tags to digests
#   sh deploy/images/build.sh TARGET [OUT.tar]          build coordinator | worker | worker-gpu
#   sh deploy/images/build.sh verify TARGET             build twice, fail unless the digests match
# Needs docker with buildx (BuildKit >= 0.13 for rewrite-timestamp) and, for `pin`, skopeo or
# buildx imagetools with registry access. Nothing here was run where Veil is developed (no
# registry or Docker daemon there): see README.md for what was checked instead.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LOCK="$ROOT/deploy/images/base-images.lock"

base() {  # the pinned reference of base image $1 from the lock
    ref=$(awk -v n="$1" '$1 == n {print $2}' "$LOCK")
    case "$ref" in
        *@sha256:*) echo "$ref" ;;
        *) echo "build.sh: $1 is not pinned by digest in $LOCK (run: build.sh pin)" >&2; exit 1 ;;
    esac
}

digest_of() {  # the image manifest digest inside an OCI archive
    tar -xOf "$1" index.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["digest"])'
}

build() {
    target=$1 out=$2
    mkdir -p "$(dirname "$out")"
    SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct)
    docker buildx build "$ROOT" -f "$ROOT/deploy/images/Containerfile" --target "$target" \
        --build-arg PYTHON_IMAGE="$(base PYTHON_IMAGE)" --build-arg CUDA_IMAGE="$(base CUDA_IMAGE)" \
        --build-arg SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" \
        --provenance=false --sbom=false \
        --output "type=oci,dest=$out,rewrite-timestamp=true"
    echo "$target $(digest_of "$out")"
}

case "${1:-}" in
    pin)
        tmp=$(mktemp)
        while read -r name ref; do
            case "$name" in ''|'#'*) echo "$name $ref" >> "$tmp"; continue ;; esac
            tag=${ref%@*}
            if command -v skopeo >/dev/null; then
                d=$(skopeo inspect --format '{{.Digest}}' "docker://$tag")
            else
                d=$(docker buildx imagetools inspect "$tag" --format '{{json .Manifest}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["digest"])')
            fi
            echo "$name $tag@$d" >> "$tmp"
        done < "$LOCK"
        mv "$tmp" "$LOCK" && cat "$LOCK" ;;
    verify)
        a=$(mktemp -d)
        build "$2" "$a/one.tar" > "$a/one"
        docker buildx prune -af >/dev/null
        build "$2" "$a/two.tar" > "$a/two"
        if cmp -s "$a/one" "$a/two"; then echo "reproducible: $(cat "$a/one")"; else echo "NOT reproducible: $(cat "$a/one") vs $(cat "$a/two")" >&2; exit 1; fi ;;
    coordinator|worker|worker-gpu)
        build "$1" "${2:-$ROOT/build/veil-$1.oci.tar}" ;;
    *)
        sed -n '2,10p' "$0"; exit 2 ;;
esac
