#!/usr/bin/env bash
# Fetches the 64x64 RGBA emoji PNGs the dataset tests import (npm package
# emoji-datasource-google, pinned) into .cache/emoji/google-64, when they are missing.
# Needs npm and access to the npm registry once; later runs return at once.
set -euo pipefail
cd "$(dirname "$0")/.."

EMOJI_VERSION="${EMOJI_VERSION:-16.0.0}"
dest="$PWD/.cache/emoji/google-64"
stamp="$dest.version"

present() { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$EMOJI_VERSION" ]; }
if present; then
  echo "emoji: $dest present ($EMOJI_VERSION)"
  exit 0
fi
# Test packages run in parallel and may both ask for the emoji: one fetches, the other waits.
mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock 9
if present; then
  echo "emoji: $dest present ($EMOJI_VERSION)"
  exit 0
fi
command -v npm >/dev/null || { echo "emoji: npm not found; install npm (Debian package npm) to fetch emoji-datasource-google" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "emoji: fetching emoji-datasource-google@$EMOJI_VERSION with npm pack (about 75 MB, one-time)"
(cd "$work" && npm pack --silent "emoji-datasource-google@$EMOJI_VERSION" >/dev/null)
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
tar -xzf "$work"/emoji-datasource-google-*.tgz -C "$dest.tmp" --strip-components=4 package/img/google/64
echo "$EMOJI_VERSION" > "$stamp.tmp"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
mv "$stamp.tmp" "$stamp"
echo "emoji: $(ls "$dest" | wc -l) PNGs in $dest"
