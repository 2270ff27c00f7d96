#!/usr/bin/env bash
# Render an `rindex eval` HTML page in headless Chromium (Debian: apt-get install -y chromium) and check that the
# screenshot is not blank. Usage: tools/check_report_html.sh [REPORT_DIR=eval-report] [SHOT=REPORT_DIR/page.png]
set -euo pipefail
dir="${1:-eval-report}"
shot="${2:-$dir/page.png}"
browser="$(command -v chromium || command -v chromium-browser || true)"
[ -n "$browser" ] || { echo "chromium is not installed: apt-get install -y chromium" >&2; exit 2; }
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --user-data-dir="$profile" --screenshot="$shot" --window-size=1280,4000 \
  "file://$(realpath "$dir/index.html")" 2>/dev/null
"${PYTHON:-$(command -v python || command -v python3)}" - "$shot" <<'PY'
import sys
from PIL import Image, ImageStat
im = Image.open(sys.argv[1]).convert("RGB")
std = sum(ImageStat.Stat(im).stddev) / 3
print(f"{sys.argv[1]}: {im.size[0]}x{im.size[1]}, pixel std {std:.1f}")
sys.exit(0 if std > 10 else 1)
PY
