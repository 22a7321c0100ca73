#!/usr/bin/env bash
# Adds Hearth to the user's application menu: a .desktop entry and its icons under
# $XDG_DATA_HOME (default ~/.local/share). Points at the built bundle (dist/hearth/hearth) when
# there is one, else at the venv's `hearth`. Nothing outside the user's home is touched.
#
#   bash installers/linux/install-desktop.sh            (make install-desktop)
#   bash installers/linux/install-desktop.sh --uninstall
# Variables: VENV (default .venv), HEARTH_EXEC (an explicit command to launch).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
DATA=${XDG_DATA_HOME:-$HOME/.local/share}
APPS="$DATA/applications"
ICONS="$DATA/icons/hicolor"
ENTRY="$APPS/hearth.desktop"

if [ "${1:-}" = "--uninstall" ]; then
  rm -f "$ENTRY"
  find "$ICONS" -name hearth.png -path '*/apps/*' -delete 2>/dev/null || true
  rm -f "$ICONS/scalable/apps/hearth.svg"
  echo "hearth: removed the menu entry $ENTRY"
  exit 0
fi

if [ -n "${HEARTH_EXEC:-}" ]; then
  exec_cmd=$HEARTH_EXEC
elif [ -x "$ROOT/dist/hearth/hearth" ]; then
  exec_cmd="$ROOT/dist/hearth/hearth"
elif [ -x "$ROOT/${VENV:-.venv}/bin/hearth" ]; then
  exec_cmd="$ROOT/${VENV:-.venv}/bin/hearth"
else
  echo "hearth: neither dist/hearth/hearth nor ${VENV:-.venv}/bin/hearth exists; run make dist or make install first" >&2
  exit 1
fi

for size in 16 24 32 48 64 128 256 512; do
  install -D -m 644 "resources/icons/hearth-$size.png" "$ICONS/${size}x${size}/apps/hearth.png"
done
install -D -m 644 resources/icons/hearth.svg "$ICONS/scalable/apps/hearth.svg"

# A path with spaces must be quoted in Exec (Desktop Entry spec, "The Exec key").
quoted=$exec_cmd
case $exec_cmd in *" "*) quoted="\"$exec_cmd\"" ;; esac
mkdir -p "$APPS"
tmp=$(mktemp "$APPS/.hearth.desktop.XXXXXX")
sed -e "s|@EXEC@|$quoted|" -e "s|@TRYEXEC@|$exec_cmd|" -e "s|@ICON@|hearth|" installers/linux/hearth.desktop.in > "$tmp"
chmod 644 "$tmp"
mv "$tmp" "$ENTRY"
if command -v desktop-file-validate >/dev/null 2>&1; then desktop-file-validate "$ENTRY"; fi
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$APPS" || true
command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q -t "$ICONS" 2>/dev/null || true
echo "hearth: added $ENTRY (runs $exec_cmd)"
