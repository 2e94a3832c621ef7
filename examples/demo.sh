#!/usr/bin/env bash
# The ntkstream demo: start the ntkd daemon on loopback, stream a real recorded sensor series
# through it with ntk-replay --connect, print its first predictions, the readings it flagged
# and how the online NTK regressor did, stop the daemon cleanly.
#
#   bash examples/demo.sh BUILD_DIR      (what `bash cmake/quickstart.sh demo` runs)
#
# BUILD_DIR holds the built programs (examples/ntk-replay, examples/sensor_daemon/ntkd).
# Everything the demo writes goes to BUILD_DIR/demo.
set -euo pipefail

build=${1:?usage: examples/demo.sh BUILD_DIR}
build=$(cd "$build" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
ntkd="$build/examples/sensor_daemon/ntkd"
replay="$build/examples/ntk-replay"
for bin in "$ntkd" "$replay"; do
  [ -x "$bin" ] || { echo "demo: $bin is missing: build first (bash cmake/quickstart.sh demo)" >&2; exit 1; }
done

# The series: a temperature sensor inside an industrial machine (Numenta Anomaly Benchmark),
# 5-minute readings over 79 days, with four labelled failure windows.
series=machine_temperature_system_failure
input="$root/data/nab/$series.csv"
out="$build/demo"
rm -rf "$out"
mkdir -p "$out"

# 1. The daemon, on loopback, on ports the kernel picks; it writes them to a port file
#    once it listens. Its structured log goes to a file.
"$ntkd" --listen 127.0.0.1:0 --metrics 127.0.0.1:0 --snapshot-dir "$out/snapshots" \
  --snapshot-interval 0 --port-file "$out/ports" 2>"$out/ntkd.log" &
ntkd_pid=$!
stop_daemon() {
  if kill -0 "$ntkd_pid" 2>/dev/null; then kill -TERM "$ntkd_pid" 2>/dev/null || true; fi
}
trap stop_daemon EXIT
for _ in $(seq 300); do
  [ -f "$out/ports" ] && break
  kill -0 "$ntkd_pid" 2>/dev/null || { echo "demo: ntkd did not start:" >&2; cat "$out/ntkd.log" >&2; exit 1; }
  sleep 0.05
done
[ -f "$out/ports" ] || { echo "demo: ntkd did not start in 15 s" >&2; exit 1; }
tcp=$(sed -n 's/^tcp=//p' "$out/ports")
metrics=$(sed -n 's/^metrics=//p' "$out/ports")
echo "== ntkd is listening on $tcp (metrics: http://$metrics/metrics)"
echo "   $("$ntkd" --version): the loader's pick for this CPU (README, \"Building for a CPU\")"

# 2. Replay the recorded series through the daemon as fast as it goes: the key is
#    configured with the model flags, every reading is answered with a prediction.
echo "== streaming $(($(wc -l <"$input") - 1)) readings of data/nab/$series.csv through ntkd"
echo "   (its clock steps back once, as recorded (data/README.md): ntk-replay warns about it)"
"$replay" --connect "$tcp" --input "$input" --time-column timestamp --value-column value \
  --key "demo/$series" --predictions "$out/predictions.csv" --plot "$out/plot.png" \
  --summary-json "$out/summary.json" --no-progress >/dev/null

# 3. What the daemon itself reports (Prometheus text format).
if command -v curl >/dev/null 2>&1; then
  curl -sf "http://$metrics/metrics" >"$out/metrics.txt" || true
else
  python3 - "$metrics" >"$out/metrics.txt" <<'EOF' || true
import sys, urllib.request
print(urllib.request.urlopen("http://%s/metrics" % sys.argv[1], timeout=10).read().decode(), end="")
EOF
fi

# 4. The table: prequential MSE against the naive forecast "same as the last reading",
#    and the anomalies flagged against the benchmark's labelled failure windows.
python3 - "$input" "$out/predictions.csv" "$out/summary.json" "$root/data/nab/nab_windows.csv" \
  "$series" <<'EOF'
import csv, json, sys
series_csv, predictions_csv, summary_json, windows_csv, name = sys.argv[1:]
values = [float(r["value"]) for r in csv.DictReader(open(series_csv))]
rows = list(csv.DictReader(open(predictions_csv)))
n = len(rows)
mse = sum((float(r["truth"]) - float(r["mean"])) ** 2 for r in rows) / n
# Persistence predicts each scored value by the one before it (same rows, same horizon).
mse_persist = sum((values[int(r["row"])] - values[int(r["row"]) - 1]) ** 2 for r in rows) / n
flagged = [int(r["row"]) for r in rows if r["anomaly"] == "1"]
windows = [(int(w["start_row"]), int(w["end_row"])) for w in csv.DictReader(open(windows_csv))
           if w["series"] == name]
inside = [a for a in flagged if any(s <= a <= e for s, e in windows)]
hit = sum(1 for s, e in windows if any(s <= a <= e for a in flagged))
summary = json.load(open(summary_json))

# The predictions themselves: each was made before its reading arrived. The first ones
# show the model at work from its first samples on; the flagged ones are the readings
# that did not fit (all of them are in predictions.csv).
Z95 = 1.959963984540054  # the 95% interval, as the coverage counts it
def show(title, chosen):
    print(title)
    print("  %-19s %9s %9s %19s %7s" % ("time", "reading", "forecast", "95% interval", "z"))
    for r in chosen:
        mean, sd = float(r["mean"]), float(r["sd"])
        mark = "  in a labelled failure window" if int(r["row"]) in in_window else ""
        print("  %-19s %9.2f %9.2f   [%6.2f, %6.2f] %+7.1f%s"
              % (r["time"].replace("T", " "), float(r["truth"]), mean, mean - Z95 * sd,
                 mean + Z95 * sd, float(r["z"]), mark))
in_window = set(inside)
print()
show("== the first predictions (after %s readings of warm-up)" % rows[0]["row"], rows[:5])
print()
show("== the %d readings flagged as anomalies (|z| > 4)" % len(flagged),
     [r for r in rows if r["anomaly"] == "1"])
print()
print("  %-34s %s" % ("predictions scored (n)", n))
print("  %-34s %.4f" % ("MSE, online NTK (ntkd)", mse))
print("  %-34s %.4f" % ("MSE, persistence (last value)", mse_persist))
print("  %-34s %.1f %%" % ("MSE reduction vs persistence", 100 * (1 - mse / mse_persist)))
print("  %-34s %.3f" % ("95% interval coverage", summary.get("coverage95", float("nan"))))
print("  %-34s %d (%d inside labelled windows)" % ("anomalies flagged (|z| > 4)", len(flagged),
                                                   len(inside)))
print("  %-34s %d of %d" % ("labelled failure windows hit", hit, len(windows)))
print()
EOF

# 5. A clean stop: SIGTERM drains the daemon and writes its final snapshot.
kill -TERM "$ntkd_pid"
status=0
wait "$ntkd_pid" || status=$?
trap - EXIT
if [ "$status" -ne 0 ]; then
  echo "demo: ntkd exited with status $status; its log: $out/ntkd.log" >&2
  exit 1
fi
snapshot=$(ls "$out/snapshots"/*.ntks 2>/dev/null | tail -1)
echo "== written:"
echo "  predictions  $out/predictions.csv"
if [ -f "$out/plot.png" ]; then echo "  plot         $out/plot.png"; fi
echo "  summary      $out/summary.json"
echo "  metrics      $out/metrics.txt"
echo "  snapshot     ${snapshot:-none}"
echo "  daemon log   $out/ntkd.log"
echo "== ntkd stopped cleanly (exit 0)"
