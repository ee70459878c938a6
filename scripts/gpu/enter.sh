#!/usr/bin/env bash
# Carried as .gpu-carry/run/enter.sh (scripts/gpu/prepare.sh puts it there) and run from the root
# of the checkout the device tool sent: unpack .gpu-carry/run/tree.tar.gz (scripts and specs of
# the commit the carry loads were prepared from) into $GPU_ROOT/tree, point its .gpu-carry at the
# carried one, and run that tree's scripts/gpu/device.sh with the arguments. So the device steps
# are the prepared commit's even where the sent checkout is another (the session's, not a worktree's).
set -euo pipefail
tree="${GPU_ROOT:-/root/gpu}/tree"
rm -rf "$tree" && mkdir -p "$tree" && tar -xzf .gpu-carry/run/tree.tar.gz -C "$tree"
ln -sfn "$PWD/.gpu-carry" "$tree/.gpu-carry"
exec bash "$tree/scripts/gpu/device.sh" "$@"
