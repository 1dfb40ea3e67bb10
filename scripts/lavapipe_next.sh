#!/usr/bin/env bash
# Run a command against the newest lavapipe (Mesa's software Vulkan driver, from Debian
# unstable), which offers cooperative matrices (8x8 f16 fragments) where the distribution's
# Mesa does not, so the cooperative-matrix matmul can be tested without a GPU.
#   scripts/lavapipe_next.sh cargo test --release --test matmul cooperative
# Mesa and what it links against (its own glibc, LLVM, loader) are unpacked into
# target/lavapipe-next/ (no root, nothing installed); test binaries run through that tree's
# dynamic loader (cargo's target runner), with only its lavapipe visible and
# LORA_WGPU_COOPMAT=1, so a missing cooperative-matrix feature fails the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${LAVAPIPE_NEXT_DIR:-$PWD/target/lavapipe-next}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LIB=$DIR/root/usr/lib/x86_64-linux-gnu

if [ ! -e "$DIR/lvp.json" ]; then
    mkdir -p "$DIR/debs"
    curl -fsS --retry 3 "$MIRROR/dists/sid/main/binary-amd64/Packages.xz" | xz -d >"$DIR/Packages"
    # The packages mesa-vulkan-drivers needs, recursively (first alternative of each).
    python3 - "$DIR/Packages" mesa-vulkan-drivers libvulkan1 libc6 >"$DIR/files.txt" <<'PY'
import sys
packages, provides, cur = {}, {}, {}
for line in open(sys.argv[1], encoding="utf-8"):
    if line == "\n":
        if "Package" in cur:
            packages.setdefault(cur["Package"], cur)
        cur = {}
    elif not line[0].isspace():
        key, _, value = line.partition(":")
        cur[key] = value.strip()
for name, p in packages.items():
    for v in p.get("Provides", "").split(","):
        if v.strip():
            provides.setdefault(v.split()[0], name)
# Maintainer-script machinery that the unpacked libraries never load.
skip = {"debconf", "perl-base", "dpkg", "install-info", "sensible-utils", "ucf",
        "debianutils", "base-files"}
seen, todo = set(), sys.argv[2:]
while todo:
    name = todo.pop()
    name = name if name in packages else provides.get(name, name)
    if name in seen or name in skip:
        continue
    if name not in packages:
        sys.exit(f"lavapipe_next: {name} is not in Debian unstable's package index")
    seen.add(name)
    for field in ("Pre-Depends", "Depends"):
        for dep in filter(None, (d.strip() for d in packages[name].get(field, "").split(","))):
            todo.append(dep.split("|")[0].split()[0].split(":")[0])
for name in sorted(seen):
    print(packages[name]["Filename"])
PY
    (cd "$DIR/debs" && sed "s#^#$MIRROR/#" "$DIR/files.txt" | xargs curl -fsS --retry 3 --remote-name-all)
    for f in "$DIR"/debs/*.deb; do dpkg-deb -x "$f" "$DIR/root"; done
    sed "s#\"library_path\": *\"[^\"]*\"#\"library_path\": \"$LIB/libvulkan_lvp.so\"#" \
        "$DIR/root/usr/share/vulkan/icd.d/lvp_icd.json" >"$DIR/lvp.json.tmp"
    mv "$DIR/lvp.json.tmp" "$DIR/lvp.json"
    echo "lavapipe_next: $(grep -c . "$DIR/files.txt") packages unpacked into $DIR"
fi

export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$LIB/ld-linux-x86-64.so.2 --library-path $LIB"
export VK_ICD_FILENAMES=$DIR/lvp.json VK_LOADER_LAYERS_DISABLE='~implicit~'
export WGPU_BACKEND=vulkan LORA_WGPU_COOPMAT=1
exec "$@"
