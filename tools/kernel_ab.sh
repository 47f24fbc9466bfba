#!/usr/bin/env bash
# Compares the CPU scan kernels of the working tree with those of another revision, on this
# machine and in one run: builds the CPU library of both (CMake, no CUDA, no Python), compiles
# tools/scan_kernel_bench.cpp against each with that tree's own headers, and alternates their runs
# (on a shared machine the load drifts; alternating exposes both builds to the same drift).
# Prints, per coupling and size, each build's best forward and backward time, the ratio working
# tree / base of those and the median of the rounds' paired ratios, and writes the runs and the
# summary as JSON. --clock cpu compares the process CPU time instead of the wall time; --layout
# model stores every sequence tensor as the channel-major branch of a layer does ((M, rows, Bt, L),
# strided), --layout steps as its token-major one does ((M, Bt, L, rows), step-major).
# --base-layout runs the base build in another layout (default: the same): with BASE_REV HEAD it
# compares two layouts of the same kernels.
#
#   tools/kernel_ab.sh BASE_REV [--rounds 5] [--repeats 5] [--threads 1] [--clock wall|cpu]
#                      [--couplings "mean none general"] [--sizes "paper long"]
#                      [--layout contiguous|model|steps] [--base-layout L] [--out kernel_ab.json]
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -ge 1 && $1 != -* ]] || usage
base_rev=$1; shift
rounds=5 repeats=5 threads=1 clock=wall couplings="mean none general" sizes="paper long" layout=contiguous
out=kernel_ab.json base_layout=
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --clock) clock=$2; shift 2 ;;
    --couplings) couplings=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --layout) layout=$2; shift 2 ;;
    --base-layout) base_layout=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "kernel_ab.sh: unknown option $1" >&2; usage ;;
  esac
done
[[ $clock == wall || $clock == cpu ]] || { echo "kernel_ab.sh: --clock: expected wall or cpu, got $clock" >&2; exit 2; }
base_layout=${base_layout:-$layout}
for l in "$layout" "$base_layout"; do
  [[ $l == contiguous || $l == model || $l == steps ]] || {
    echo "kernel_ab.sh: --layout, --base-layout: expected contiguous, model or steps, got $l" >&2; exit 2; }
done

root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
base_sha=$(git -C "$root" rev-parse --verify "$base_rev^{commit}")
tree_changes=$(git -C "$root" status --porcelain -- cpp tools CMakeLists.txt | wc -l)
if [[ $tree_changes -gt 0 ]]; then
  echo "kernel_ab.sh: note: the working tree differs from HEAD in cpp/, tools/ or CMakeLists.txt ($tree_changes paths); the JSON records it" >&2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

build() {  # build SOURCE_DIR NAME: the CPU library and the bench, into $work/NAME
  local src=$1 name=$2
  cmake -S "$src" -B "$work/$name" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCOUPLED_MAMBA_CUDA=OFF \
    -DCOUPLED_MAMBA_BUILD_TESTS=OFF -DCOUPLED_MAMBA_BUILD_PYTHON=OFF > "$work/$name.cmake.log"
  cmake --build "$work/$name" -j2 --target coupled_scan_cpu > "$work/$name.build.log"
  "${CXX:-g++}" -O2 -std=c++17 -I"$src/cpp/include" "$root/tools/scan_kernel_bench.cpp" \
    "$work/$name/libcoupled_scan_cpu.a" -lpthread -o "$work/$name/scan_kernel_bench"
}

echo "building $base_rev ($base_sha) and the working tree ..." >&2
mkdir -p "$work/base-src"
git -C "$root" archive "$base_sha" | tar -x -C "$work/base-src"
build "$work/base-src" base
build "$root" head

runs="$work/runs.jsonl"
for ((r = 1; r <= rounds; r++)); do
  for c in $couplings; do
    for s in $sizes; do
      for name in base head; do
        lay=$layout; [[ $name == base ]] && lay=$base_layout
        line=$("$work/$name/scan_kernel_bench" "$c" "$s" "$repeats" "$threads" "$lay")
        echo "{\"build\": \"$name\", \"round\": $r, \"run\": $line}" >> "$runs"
      done
    done
  done
  echo "round $r of $rounds done" >&2
done

python3 - "$runs" "$out" "$base_rev" "$base_sha" "$(git -C "$root" rev-parse HEAD)" "$tree_changes" "$clock" "$layout" "$base_layout" <<'EOF'
import json, platform, subprocess, sys
runs_path, out, base_rev, base_sha, head_sha, tree_changes, clock, layout, base_layout = sys.argv[1:]
suffix = "_cpu_ms" if clock == "cpu" else "_ms"
runs = [json.loads(line) for line in open(runs_path)]
best = {}
for r in runs:
    key = (r["run"]["coupling"], tuple(r["run"]["size"]), r["build"])
    b = best.setdefault(key, {"fwd_ms": float("inf"), "bwd_ms": float("inf"), "checksums": set()})
    b["fwd_ms"] = min(b["fwd_ms"], r["run"]["fwd" + suffix])
    b["bwd_ms"] = min(b["bwd_ms"], r["run"]["bwd" + suffix])
    b["checksums"].add(r["run"]["checksum"])
rows = []
print(f"best of each build, {clock} clock, {layout} layout (base: {base_layout}), ms")
# Each round runs base then tree back to back: the median of the rounds' tree / base ratios
# (paired) is steadier than the ratio of the best times when the machine's speed drifts.
paired = {}
for (i, r) in enumerate(runs):
    if r["build"] != "head" or i == 0 or runs[i - 1]["build"] != "base":
        continue
    x, y = runs[i - 1]["run"], r["run"]
    key = (y["coupling"], tuple(y["size"]))
    for part in ("fwd", "bwd"):
        paired.setdefault(key + (part,), []).append(y[part + suffix] / x[part + suffix])
med = lambda v: sorted(v)[len(v) // 2] if len(v) % 2 else 0.5 * (sorted(v)[len(v) // 2 - 1] + sorted(v)[len(v) // 2])
print(f"{'coupling':9s} {'(Bt, M, D, N, L)':22s} {'base fwd':>9s} {'tree fwd':>9s} {'ratio':>6s} {'paired':>6s} "
      f"{'base bwd':>9s} {'tree bwd':>9s} {'ratio':>6s} {'paired':>6s} {'tree bwd/fwd':>12s} {'rel. checksum diff':>18s}")
for (c, size, build) in sorted(k for k in best if k[2] == "base"):
    b, h = best[(c, size, "base")], best[(c, size, "head")]
    if len(b["checksums"]) > 1 or len(h["checksums"]) > 1:
        print(f"warning: {c} {size}: a build's checksum varies between runs", file=sys.stderr)
    cb, ch = min(b["checksums"]), min(h["checksums"])
    row = {"coupling": c, "size": list(size), "base_fwd_ms": b["fwd_ms"], "tree_fwd_ms": h["fwd_ms"],
           "fwd_ratio": h["fwd_ms"] / b["fwd_ms"], "base_bwd_ms": b["bwd_ms"], "tree_bwd_ms": h["bwd_ms"],
           "bwd_ratio": h["bwd_ms"] / b["bwd_ms"], "tree_bwd_over_fwd": h["bwd_ms"] / h["fwd_ms"],
           "fwd_paired_ratio_median": med(paired[(c, size, "fwd")]),
           "bwd_paired_ratio_median": med(paired[(c, size, "bwd")]),
           "checksum_rel_diff": abs(ch - cb) / max(abs(cb), 1e-30)}
    rows.append(row)
    print(f"{c:9s} {str(size):22s} {b['fwd_ms']:9.1f} {h['fwd_ms']:9.1f} {row['fwd_ratio']:6.2f} "
          f"{row['fwd_paired_ratio_median']:6.2f} {b['bwd_ms']:9.1f} {h['bwd_ms']:9.1f} {row['bwd_ratio']:6.2f} "
          f"{row['bwd_paired_ratio_median']:6.2f} {row['tree_bwd_over_fwd']:12.2f} "
          f"{row['checksum_rel_diff']:18.1e}")
model = ""
try:
    model = [l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
             if l.startswith("Model name")][0]
except Exception:
    pass
with open(out, "w") as f:
    json.dump({"base_rev": base_rev, "base_sha": base_sha, "tree_head_sha": head_sha,
               "tree_differs_from_head": int(tree_changes) > 0, "clock": clock, "layout": layout, "base_layout": base_layout, "machine": model,
               "platform": platform.platform(), "isa": runs[0]["run"]["isa"], "summary": rows, "runs": runs}, f, indent=1)
print(f"wrote {out}")
EOF
