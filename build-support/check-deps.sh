#!/usr/bin/env bash
# The workspace's dependency rules, checked by `make test` (fails naming the offending edge):
# 1. the host trainer (`tolk-training`, binary `tolk-train`) builds without the kiosk runtime and
#    its audio stacks: its normal and build dependencies hold none of tolk-runtime, gstreamer*,
#    alsa*, cpal (so no GStreamer or ALSA development package is needed to build it), and not even
#    its tests link the runtime (they run the `tolk` binary where they need the kiosk);
# 2. the workspace crates form no cycle, dev-dependencies included (cargo accepts a cycle through
#    a dev-dependency, but a crate's unit tests then link a second copy of the crate, whose types
#    are not the test's own, and the crates no longer stack in layers).
# Run from anywhere: build-support/check-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

status=0

# 1. Forbidden crates below tolk-training: each path from it to the first forbidden crate.
cargo tree -p tolk-training -e normal,build --prefix depth --format '{p}' | python3 -c '
import re, sys

forbidden = re.compile(r"^(tolk-runtime|gstreamer.*|alsa.*|cpal)$")
path, found, skip_below = [], [], None
for line in sys.stdin:
    m = re.match(r"^(\d+)(\S+)", line)
    if not m:
        continue
    depth, name = int(m.group(1)), m.group(2)
    if skip_below is not None and depth > skip_below:
        continue
    skip_below = None
    del path[depth:]
    path.append(name)
    if forbidden.match(name):
        chain = " -> ".join(path)
        if chain not in found:
            found.append(chain)
        skip_below = depth
for chain in found:
    print(f"check-deps: tolk-training must not depend on the runtime or audio stacks: {chain}",
          file=sys.stderr)
sys.exit(1 if found else 0)
' || status=1
if cargo metadata --format-version 1 --no-deps | python3 -c '
import json, sys
meta = json.load(sys.stdin)
bad = [d["name"] for p in meta["packages"] if p["name"] == "tolk-training"
       for d in p["dependencies"] if d["name"] == "tolk-runtime"]
sys.exit(0 if bad else 1)
'; then
    echo "check-deps: tolk-training must not depend on tolk-runtime, not even for tests (run the tolk binary)" >&2
    status=1
fi

# 2. Cycles among workspace crates, every dependency kind counted.
cargo metadata --format-version 1 --no-deps | python3 -c '
import json, sys

meta = json.load(sys.stdin)
members = {p["name"] for p in meta["packages"] if p["id"] in meta["workspace_members"]}
edges = {}
for p in meta["packages"]:
    if p["name"] not in members:
        continue
    for d in p["dependencies"]:
        if d["name"] in members:
            kind = d["kind"] or "normal"
            edges.setdefault(p["name"], {}).setdefault(d["name"], set()).add(kind)

def label(a, b):
    kinds = edges[a][b]
    return "->" if "normal" in kinds else "-" + "/".join(sorted(kinds)) + "->"

# Depth-first search; a crate met again on the current path closes a cycle.
state = {}
cycles = []
def visit(node, path):
    state[node] = "open"
    path.append(node)
    for nxt in sorted(edges.get(node, {})):
        if state.get(nxt) == "open":
            loop = path[path.index(nxt):] + [nxt]
            cycles.append(" ".join(
                (f"{a} {label(a, b)}" for a, b in zip(loop, loop[1:]))
            ) + f" {nxt}")
        elif nxt not in state:
            visit(nxt, path)
    path.pop()
    state[node] = "done"

for m in sorted(members):
    if m not in state:
        visit(m, [])
for c in cycles:
    print(f"check-deps: dependency cycle among workspace crates: {c}", file=sys.stderr)
sys.exit(1 if cycles else 0)
' || status=1

if [ "$status" -eq 0 ]; then
    echo "check-deps: tolk-training is free of the runtime and audio stacks; no workspace cycle"
fi
exit "$status"
