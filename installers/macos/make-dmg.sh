#!/usr/bin/env bash
# macOS: builds dist/Hearth.app (PyInstaller's BUNDLE step in installers/pyinstaller/hearth.spec)
# and packs it as dist/Hearth-<version>.dmg with a link to /Applications.
#   bash installers/macos/make-dmg.sh
# Unsigned: Gatekeeper asks on first open (right-click > Open). To sign and notarize, set
# CODESIGN_IDENTITY (a "Developer ID Application" identity) and run notarytool on the .dmg.
# Not run on this project's Linux machines: hdiutil and codesign exist only on macOS.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(uname -s)" = Darwin ] || { echo "make-dmg: macOS only (hdiutil)" >&2; exit 1; }
PY=${VENV:-.venv}/bin/python
"$PY" -m PyInstaller --noconfirm --distpath dist --workpath build/pyinstaller installers/pyinstaller/hearth.spec
version=$("$PY" -c "import app; print(app.__version__)")
[ -d dist/Hearth.app ] || { echo "make-dmg: dist/Hearth.app was not built" >&2; exit 1; }
if [ -n "${CODESIGN_IDENTITY:-}" ]; then
  codesign --deep --force --options runtime --sign "$CODESIGN_IDENTITY" dist/Hearth.app
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -R dist/Hearth.app "$stage/"
ln -s /Applications "$stage/Applications"
rm -f "dist/Hearth-$version.dmg"
hdiutil create -volname Hearth -srcfolder "$stage" -ov -format UDZO "dist/Hearth-$version.dmg"
echo "make-dmg: wrote dist/Hearth-$version.dmg"
