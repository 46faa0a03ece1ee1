#!/bin/sh
# One job as a shell user would script it: POST the image, then poll until it finishes.
# Usage (from bench_baselines.py): seq 0 N | xargs -P 8 -n 1 sh xargs_job.sh
# Environment: URL, KEY, DATA (folder of jNNNNN/000.png), POLL (seconds between polls).
set -eu
n=$(printf '%05d' "$1")
answer=$(curl -sS --fail -H "X-Api-Key: $KEY" \
  -F "image_files=@$DATA/j$n/000.png" -F "lora_prefix=X$1" "$URL/finetune")
word=$(printf '%s' "$answer" | sed -n 's/.*"trigger_word": *"\([^"]*\)".*/\1/p')
[ -n "$word" ] || { echo "no trigger word in: $answer" >&2; exit 1; }
while :; do
  status=$(curl -sS --fail -H "X-Api-Key: $KEY" "$URL/finetune/$word")
  case $status in
    *'"status": "success"'* | *'"status":"success"'*) exit 0 ;;
    *'"status": "fail"'* | *'"status":"fail"'*) echo "job $1 failed" >&2; exit 1 ;;
  esac
  sleep "$POLL"
done
