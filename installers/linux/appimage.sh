#!/usr/bin/env bash
# Packs the one-folder build (dist/hearth, from `make dist`) as dist/Hearth-<version>-<arch>.AppImage.
# Needs appimagetool (https://github.com/AppImage/appimagetool) on PATH or in $APPIMAGETOOL; without
# it, this says so and exits 0 after preparing dist/Hearth.AppDir, so the rest of a release still runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUNDLE=dist/hearth
APPDIR=dist/Hearth.AppDir
[ -x "$BUNDLE/hearth" ] || { echo "appimage: $BUNDLE/hearth is missing; run make dist first" >&2; exit 1; }
version=$(${VENV:-.venv}/bin/python -c "import app; print(app.__version__)" 2>/dev/null || echo 0)
arch=$(uname -m)

rm -rf "$APPDIR"
mkdir -p "$APPDIR/usr/lib"
cp -a "$BUNDLE" "$APPDIR/usr/lib/hearth"
cat > "$APPDIR/AppRun" <<'RUN'
#!/bin/sh
# The AppImage is mounted read-only: Hearth writes only to the user's folders (app/paths.py).
here=$(dirname "$(readlink -f "$0")")
exec "$here/usr/lib/hearth/hearth" "$@"
RUN
chmod 755 "$APPDIR/AppRun"
sed -e "s|@EXEC@|hearth|" -e "s|@TRYEXEC@|hearth|" -e "s|@ICON@|hearth|" installers/linux/hearth.desktop.in \
  | grep -v '^TryExec=' > "$APPDIR/hearth.desktop"
cp resources/icons/hearth-256.png "$APPDIR/hearth.png"
mkdir -p "$APPDIR/usr/share/icons/hicolor/256x256/apps"
cp resources/icons/hearth-256.png "$APPDIR/usr/share/icons/hicolor/256x256/apps/hearth.png"

tool=${APPIMAGETOOL:-$(command -v appimagetool || true)}
if [ -z "$tool" ]; then
  echo "appimage: appimagetool not found; prepared $APPDIR (run: appimagetool $APPDIR)"
  exit 0
fi
out="dist/Hearth-$version-$arch.AppImage"
ARCH=$arch "$tool" "$APPDIR" "$out"
echo "appimage: wrote $out"
