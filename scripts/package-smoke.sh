#!/usr/bin/env bash
# Packs HySparse.Onnx and the hysparse tool and uses them the way a user does, outside the repository:
# installs the tool from a local feed, converts a real PyTorch-exported decoder with it, then builds a
# fresh app (tests/PackageSmoke, copied to a temporary folder) that references the packed HySparse.Onnx
# plus Microsoft.ML.OnnxRuntime and decodes the converted model with no environment variable, run with
# `dotnet run`, after `dotnet publish -r linux-x64`, and as a self-contained single-file app.
# Prints one line per check and "package smoke: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d /tmp/hysparse-package-smoke.XXXXXX)
feed=$work/feed
version=$(sed -n 's:.*<Version>\(.*\)</Version>.*:\1:p' Directory.Build.props | head -1)
passed=0
failed=0
check() {  # check NAME COMMAND...: runs the command, logs its output, counts the result
  local name=$1; shift
  local log="$work/$(tr ' /' '__' <<<"$name").log"
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1)); echo "  ok    $name"
  else
    failed=$((failed + 1)); echo "  FAIL  $name (log: $log)"; tail -15 "$log" | sed 's/^/        /'
  fi
}
unset HYSPARSE_NATIVE_LIBRARY
# A package of the same version cached by an earlier run would hide what was packed now.
rm -rf "${NUGET_PACKAGES:-$HOME/.nuget/packages}/hysparse.onnx" "${NUGET_PACKAGES:-$HOME/.nuget/packages}/hysparse.cli" \
       "${NUGET_PACKAGES:-$HOME/.nuget/packages}/hysparse.cli.linux-x64"

echo "package smoke (version $version, work folder $work)"
check "pack HySparse.Onnx" dotnet pack managed/HySparse.Onnx -c Release -o "$feed"
check "pack HySparse.Cli" dotnet pack exporter/HySparse.Cli -c Release -o "$feed"

package_contents() {  # the HySparse.Onnx package: native library, license, readme, one dependency
  local nupkg="$feed/HySparse.Onnx.$version.nupkg" listing
  # The listing is read whole first: `unzip -l | grep -q` fails under pipefail when grep exits at its
  # first match and unzip dies of SIGPIPE (it did, once, in CI).
  listing=$(unzip -l "$nupkg") || { echo "cannot list $nupkg"; return 1; }
  grep -q "runtimes/linux-x64/native/libhysparse_onnx.so" <<<"$listing" || { echo "no native library in $nupkg"; return 1; }
  grep -qE " LICENSE$" <<<"$listing" || { echo "no LICENSE"; return 1; }
  grep -qE " README.md$" <<<"$listing" || { echo "no README.md"; return 1; }
  local nuspec; nuspec=$(unzip -p "$nupkg" HySparse.Onnx.nuspec)
  grep -q '<description>Package Description</description>' <<<"$nuspec" && { echo "placeholder description"; return 1; }
  local deps; deps=$(grep -o 'dependency id="[^"]*"' <<<"$nuspec" | sort -u)
  echo "$deps"
  [ "$deps" = 'dependency id="Microsoft.ML.OnnxRuntime.Managed"' ] || { echo "dependencies must be Microsoft.ML.OnnxRuntime.Managed only"; return 1; }
}
check "HySparse.Onnx package: native library, LICENSE, readme, depends on ORT .Managed only" package_contents

tool_size() {  # every tool package (pointer and RID-specific) stays far under nuget.org's 250 MB
  local f size
  for f in "$feed"/HySparse.Cli*.nupkg; do
    size=$(stat -c %s "$f"); echo "$(basename "$f"): $((size / 1048576)) MiB"
    [ "$size" -le $((60 * 1048576)) ] || return 1
  done
}
check "tool package <= 60 MiB" tool_size

cat >"$work/nuget.config" <<CONFIG
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <add key="hysparse-local" value="$feed" />
  </packageSources>
</configuration>
CONFIG

hysparse=$work/tool/hysparse
check "dotnet tool install HySparse.Cli from the local feed" \
  dotnet tool install HySparse.Cli --version "$version" --tool-path "$work/tool" --configfile "$work/nuget.config"
check "hysparse --version" bash -c "'$hysparse' --version | grep -qF '$version'"
check "hysparse native-library" bash -c "test -f \"\$('$hysparse' native-library)\""
dense=$work/tiny_llama_gqa.onnx
cp models/fixtures/torch/tiny_llama_gqa.onnx "$dense"
# Top-k 16 blocks of 16 cover every key of the smoke app's 36 tokens: the hybrid must decode exactly as dense.
check "hysparse convert (installed tool)" "$hysparse" convert "$dense" -o "$work/converted.onnx" --ratio 1:1 --top-k 16 --block-size 16 --window 16
# The demo's built-in trained model travels inside the tool.
check "hysparse demo (installed tool, built-in trained model)" bash -c "'$hysparse' demo --prompt 200 --steps 4 -q | grep -q 'same next byte as dense'"

mkdir -p "$work/app"
cp tests/PackageSmoke/PackageSmoke.csproj tests/PackageSmoke/Program.cs "$work/app/"
cp "$work/nuget.config" "$work/app/nuget.config"
# The app's own nuget.config lists only the local feed; restore still needs the public packages.
sed -i "s|</packageSources>|  <add key=\"nuget.org\" value=\"https://api.nuget.org/v3/index.json\" />\n  </packageSources>|" "$work/app/nuget.config"
cd "$work/app"
check "fresh app: dotnet run" dotnet run -p:HySparseVersion="$version" -- "$dense" "$work/converted.onnx"
check "fresh app: dotnet publish -r linux-x64" dotnet publish -r linux-x64 --self-contained false -p:HySparseVersion="$version" -o "$work/publish"
check "published app runs" "$work/publish/PackageSmoke" "$dense" "$work/converted.onnx"
check "fresh app: single-file self-contained publish" dotnet publish -r linux-x64 --self-contained true -p:PublishSingleFile=true \
  -p:IncludeNativeLibrariesForSelfExtract=true -p:HySparseVersion="$version" -o "$work/single"
check "single-file app runs (native libraries extracted by .NET)" bash -c "cd / && DOTNET_BUNDLE_EXTRACT_BASE_DIR='$work/extract' '$work/single/PackageSmoke' '$dense' '$work/converted.onnx'"
cd "$repo"

echo "package smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && rm -rf "$work"
[ "$failed" -eq 0 ]
