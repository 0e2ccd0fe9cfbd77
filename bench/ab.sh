#!/usr/bin/env bash
# bench/ab.sh — A/B of two cachet binaries in one run: does a change cost CPU per request?
#
# Alternates bench/run.sh (cachet vs direct Redis, SET and GET at -P 1 and -P 16) and
# bench/tags.sh (plain and tagged SETs) between the binary before a change (A) and after it
# (B), ALTERNATIONS times each, in the order A B A B ... so that drift in the machine's load
# falls on both. Each invocation is one round of the script with its own Redis. Reported per
# measurement: cachet's CPU µs per request (the steadiest figure on a shared machine), the
# median over alternations with its range, for A and B, and B/A; and cachet's ops/s as a
# fraction of direct Redis's in the same invocation (run.sh only).
#
# Environment (defaults in brackets):
#   A=...                 the binary before the change (required)
#   B=...                 the binary after it [target/release/cachet]
#   ALTERNATIONS=3        A/B pairs
#   SCRIPTS="run tags"    which scripts to alternate
#   N_P1, N_P16           passed to the scripts [run: 100000 / 1000000; tags: 50000 / 300000]
#   RESULTS_DIR=bench/results   the table goes to $RESULTS_DIR/ab-latest.md
#
# Example:
#   git worktree add /tmp/old <rev> && (cd /tmp/old && cargo build --release)
#   A=/tmp/old/target/release/cachet bench/ab.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
: "${A:?set A to the binary before the change}"
B=${B:-"${CARGO_TARGET_DIR:-$repo/target}/release/cachet"}
ALTERNATIONS=${ALTERNATIONS:-3}
SCRIPTS=${SCRIPTS:-"run tags"}
RESULTS_DIR=${RESULTS_DIR:-"$repo/bench/results"}
for bin in "$A" "$B"; do [[ -x $bin ]] || { echo "not an executable: $bin" >&2; exit 1; }; done
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="$RESULTS_DIR/runs/ab-$stamp"
mkdir -p "$out"
rows="$out/rows.csv" # script,label,alternation,measure,cachet us/op,ops/s fraction of direct
: >"$rows"

latest_run() { find "$1/runs" -mindepth 1 -maxdepth 1 -type d | sort | tail -1; }

for ((i = 1; i <= ALTERNATIONS; i++)); do
    for label in A B; do
        bin=$A; [[ $label == B ]] && bin=$B
        for script in $SCRIPTS; do
            dir="$out/$script-$label-$i"
            mkdir -p "$dir"
            echo "[ab] alternation $i, $label, $script" >&2
            case $script in
            run)
                RESULTS_DIR=$dir SKIP_BUILD=1 CACHET_BIN=$bin ROUNDS=1 TARGETS="direct cachet" \
                    N_P1=${N_P1:-100000} N_P16=${N_P16:-1000000} "$repo/bench/run.sh" >"$dir/out.md"
                run_dir=$(latest_run "$dir")
                # cpu_stats.csv: target,test,pipeline,n,proxy us/op,...; stats.csv: target,test,pipeline,n,rps,...
                awk -F, -v l="$label" -v i="$i" '
                    FNR == 1 { file++ }
                    file == 1 { rps[$1 "," $2 "," $3] = $5 }
                    file == 2 && $1 == "cachet" {
                        k = $2 "," $3; d = rps["direct," k]; c = rps["cachet," k]
                        printf "run,%s,%s,%s -P %s,%s,%.3f\n", l, i, $2, $3, $5, (d > 0 ? c / d : 0)
                    }' "$run_dir/stats.csv" "$run_dir/cpu_stats.csv" >>"$rows"
                ;;
            tags)
                RESULTS_DIR=$dir SKIP_BUILD=1 CACHET_BIN=$bin ROUNDS=1 SKIP_INV=1 INV_ALL_ITEMS=0 \
                    IDLE_SECS=0 VARIANTS="plain shared" \
                    N_P1=${N_P1:-50000} N_P16=${N_P16:-300000} "$repo/bench/tags.sh" >"$dir/out.md"
                run_dir=$(latest_run "$dir")
                # set_stats.csv: variant,pipeline,n,rps,lo,hi,p50,p99,cachet us/op,...
                awk -F, -v l="$label" -v i="$i" '{
                        printf "tags,%s,%s,%s SET -P %s,%s,\n", l, i, $1, $2, $9
                    }' "$run_dir/set_stats.csv" >>"$rows"
                ;;
            *) echo "unknown script $script" >&2; exit 1 ;;
            esac
        done
    done
done

{
    echo "# cachet A/B run $stamp"
    echo
    echo "- A: \`$A\` ($("$A" --version 2>/dev/null || echo '?'))"
    echo "- B: \`$B\` ($("$B" --version 2>/dev/null || echo '?'))"
    echo "- $ALTERNATIONS alternations (A B A B ...), one round of each script per invocation;" \
         "$(nproc) cores, load average at end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| script | measure | A: cachet µs/request (range) | B: cachet µs/request (range) | B/A | A: ops/s vs direct | B: ops/s vs direct |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    awk -F, '
        function median(list,   n, v, i, j, t) {
            n = split(list, v, " ")
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
            if (n == 0) return ""
            return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        }
        function range(list,   n, v, i, lo, hi) {
            n = split(list, v, " "); lo = v[1]; hi = v[1]
            for (i = 2; i <= n; i++) { if (v[i] + 0 < lo + 0) lo = v[i]; if (v[i] + 0 > hi + 0) hi = v[i] }
            return lo "-" hi
        }
        {
            key = $1 SUBSEP $4
            if (!(key in seen)) { seen[key] = 1; order[++n] = key }
            us[key, $2] = us[key, $2] " " $5
            if ($6 != "") ratio[key, $2] = ratio[key, $2] " " $6
        }
        END {
            for (k = 1; k <= n; k++) {
                key = order[k]; split(key, part, SUBSEP)
                a = median(us[key, "A"]); b = median(us[key, "B"])
                ra = median(ratio[key, "A"]); rb = median(ratio[key, "B"])
                printf "| %s | %s | %.3f (%s) | %.3f (%s) | %.2f | %s | %s |\n", part[1], part[2],
                    a, range(us[key, "A"]), b, range(us[key, "B"]), (a > 0 ? b / a : 0),
                    (ra == "" ? "-" : sprintf("%.2f", ra)), (rb == "" ? "-" : sprintf("%.2f", rb))
            }
        }' "$rows"
} | tee "$out/report.md"
cp "$out/report.md" "$RESULTS_DIR/ab-latest.md"
echo "[ab] written $RESULTS_DIR/ab-latest.md; raw rows in $rows" >&2
