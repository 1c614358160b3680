#!/usr/bin/env bash
# Speech clips for bench/run-asr.sh: English sentences spoken by espeak-ng, joined with short
# pauses, resampled by sox to 16 kHz mono 16-bit and cut to exactly 10 s and 30 s.
#   bash bench/make-asr-clips.sh [out-dir]     (default .bench/asr/clips; writes speech10.wav, speech30.wav)
set -euo pipefail
OUT=${1:-.bench/asr/clips}
mkdir -p "$OUT"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
SENTENCES=(
  "Speech recognition turns spoken words into written text."
  "The quick brown fox jumps over the lazy dog, and then it runs back home before the rain begins."
  "kvrun converts transformer checkpoints into ONNX graphs and runs them with a key value cache."
  "An audio encoder reads eighty mel filter banks every ten milliseconds."
  "The adaptor maps every encoder frame into the embedding space of the language model."
  "Greedy decoding picks the most likely token at every step until the end of the turn."
  "On a small computer with two cores every millisecond of work matters."
  "Please call me back tomorrow at eight o'clock, or send a short message instead."
  "The weather today is cloudy with a chance of light rain in the late afternoon."
  "Numbers such as twenty three, one hundred and five, and two thousand are spoken in full."
  "A quiet room and a clear voice make the task much easier for any model."
  "This clip was made by a speech synthesizer for a benchmark, not by a person."
)
parts=()
for i in "${!SENTENCES[@]}"; do
  espeak-ng -v en-us -s 160 -w "$TMP/s$i.wav" "${SENTENCES[$i]}"
  sox -R -D "$TMP/s$i.wav" -r 16000 -c 1 -b 16 "$TMP/p$i.wav" pad 0 0.3
  parts+=("$TMP/p$i.wav")
done
sox -R -D "${parts[@]}" "$TMP/all.wav"
for s in 10 30; do
  sox -R -D "$TMP/all.wav" "$OUT/speech$s.wav" trim 0 "$s"
  echo "$OUT/speech$s.wav: $(soxi -D "$OUT/speech$s.wav") s, $(soxi -r "$OUT/speech$s.wav") Hz, $(soxi -c "$OUT/speech$s.wav") channel(s)"
done
echo "all sentences: $(soxi -D "$TMP/all.wav") s" >&2
