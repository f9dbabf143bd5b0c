#!/usr/bin/env bash
# Regenerate .dvc/plots/offline.html: DVC's plots page with Vega, Vega-Lite and Vega-Embed
# inlined (from the npm registry), so `dvc plots show/diff` render without internet.
# .dvc/config points plots.html_template at it. Needs npm; run once per version bump.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSIONS=(vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "${VERSIONS[@]}" >/dev/null && for f in *.tgz; do
    mkdir "${f%.tgz}" && tar -xzf "$f" -C "${f%.tgz}"; done)
out=.dvc/plots/offline.html
mkdir -p .dvc/plots
{
    echo '<!DOCTYPE html>'
    echo '<html>'
    echo '<head>'
    echo '    {refresh_tag}'
    echo '    <meta charset="utf-8">'
    echo "    <title>livecellseg plots</title>"
    echo "    <!-- ${VERSIONS[*]}, inlined by scripts/vendor_vega.sh (BSD-3-Clause) -->"
    for lib in "$tmp"/vega-5*/package/build/vega.min.js "$tmp"/vega-lite-*/package/build/vega-lite.min.js \
        "$tmp"/vega-embed-*/package/build/vega-embed.min.js; do
        echo '    <script>'
        # a literal "{plot_divs}"-style placeholder in the libraries would be substituted
        sed 's/{plot_divs}/{ plot_divs}/g; s/{refresh_tag}/{ refresh_tag}/g' "$lib"
        echo '    </script>'
    done
    echo '    <style>table { border-spacing: 15px; } body { font-family: sans-serif; }</style>'
    echo '</head>'
    echo '<body>'
    echo '    {plot_divs}'
    echo '</body>'
    echo '</html>'
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(wc -c < "$out") bytes)"
