#!/usr/bin/env bash
# Translation (issue 13): kvrun beside CTranslate2 (fp32, int8) and optimum's
# ORTModelForSeq2SeqLM.generate() on one random OPUS-MT-shaped MarianMTModel
# (bench/make-marian-model.py), each engine's model made by its own converter. Same sentences,
# beam 4, batch 32, 2 intra-op threads, exactly GEN_LEN target tokens per sentence on every engine.
#   bash bench/run-translate.sh            # setup + models (first time), 2 interleaved passes, table
#   SENTENCES=96 PASSES=3 bash bench/run-translate.sh
#   ONLY="kvrun-fp32 ct2-int8" PASSES=1 bash bench/run-translate.sh
# Stages (each skipped when its output exists):
#   1. $CACHE/venv-ct2: python -m venv + ctranslate2 $CT2_VER, sentencepiece, psutil; its converter
#      needs torch + transformers: a .pth line adds $OPTIMUM_VENV's site-packages (transformers 4.57)
#      after its own, nothing is installed there.
#   2. $CACHE/marian/ckpt: bench/make-marian-model.py with the sentencepiece sdist's test model
#      (pip download sentencepiece==0.2.3 --no-binary into $CACHE/src).
#   3. models: kvrun build ckpt --target ort; ct2-transformers-converter --quantization float32|int8;
#      optimum-cli export onnx --task text2text-generation-with-past. Logs in $CACHE/marian/logs/.
#   4. $RESULTS/sentences.txt: SENTENCES lines (bench/translate_common.py: English-like words of the
#      spm, ~5-60 source tokens); then PASSES passes over the job list (A B C D, A B C D: drift over
#      time hits every engine alike), results $RESULTS/<job>.pass<k>.json, table bench/translate_table.py.
# Fixed output length: kvrun: the package's kvrun.json "generation" min_length = max_length =
# GEN_LEN + 1 (HF counts the start token; set here before the passes); CTranslate2:
# min_decoding_length = max_decoding_length = GEN_LEN; optimum: min_new_tokens = max_new_tokens =
# GEN_LEN. Each runner reports the min/max target tokens per sentence it counted.
# Env: CACHE (~/.cache/kvrun/bench), RESULTS (bench/results/translate), KVRUN (./build/kvrun),
#      TOOLS_PY (~/.cache/kvrun/venv-tools/bin/python: makes the checkpoint), OPTIMUM_VENV
#      (~/.cache/kvrun/venv-optimum), SENTENCES (300), GEN_LEN (48), BEAMS (4), BATCH (32),
#      THREADS (2), PASSES (2), ONLY (job names).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${CACHE:-$HOME/.cache/kvrun/bench}
M=$CACHE/marian
RESULTS=${RESULTS:-bench/results/translate}
export KVRUN=${KVRUN:-./build/kvrun}
TOOLS_PY=${TOOLS_PY:-$HOME/.cache/kvrun/venv-tools/bin/python}
OPTIMUM_VENV=${OPTIMUM_VENV:-$HOME/.cache/kvrun/venv-optimum}
OPT_PY=$OPTIMUM_VENV/bin/python
CT2_VENV=$CACHE/venv-ct2
CT2_PY=$CT2_VENV/bin/python
CT2_VER=${CT2_VER:-4.8.5}
SPM_VER=0.2.3
SENTENCES=${SENTENCES:-300}
GEN_LEN=${GEN_LEN:-48}
BEAMS=${BEAMS:-4}
BATCH=${BATCH:-32}
THREADS=${THREADS:-2}
PASSES=${PASSES:-2}
mkdir -p "$M/logs" "$CACHE/src" "$RESULTS"
log() { echo "run-translate: $*" >&2; }
step() {  # step NAME CMD...: run CMD with its output in $M/logs/NAME.log; the log's tail on failure
  local name=$1; shift
  log "$name (log: $M/logs/$name.log)"
  if ! "$@" >"$M/logs/$name.log" 2>&1; then
    log "$name FAILED; last lines:"; tail -n 8 "$M/logs/$name.log" | cut -c1-300 >&2; return 1
  fi
}

# 1. CTranslate2 venv
if [[ ! -x $CT2_PY ]] || ! "$CT2_PY" -c "import ctranslate2" 2>/dev/null; then
  setup_ct2() {
    python3 -m venv "$CT2_VENV" &&
      "$CT2_VENV/bin/pip" install "ctranslate2==$CT2_VER" sentencepiece psutil &&
      local sp && sp=$("$CT2_PY" -c 'import site; print(site.getsitepackages()[0])') &&
      "$OPT_PY" -c 'import site; print(site.getsitepackages()[0])' >"$sp/zz-venv-optimum.pth"
  }
  step setup-ct2 setup_ct2 || true
fi

# 2. checkpoint
SPM=$CACHE/src/sentencepiece-$SPM_VER/test/botchan_en_unigram_1000.model
if [[ ! -f $M/ckpt/model.safetensors ]]; then
  if [[ ! -f $SPM ]]; then
    step spm-sdist bash -c "'$TOOLS_PY' -m pip download --no-binary :all: --no-deps sentencepiece==$SPM_VER -d '$CACHE/src' &&
      tar -xzf '$CACHE/src/sentencepiece-$SPM_VER.tar.gz' -C '$CACHE/src'"
  fi
  step make-marian-model "$TOOLS_PY" bench/make-marian-model.py --spm "$SPM" --out "$M/ckpt"
fi

# 3. each engine's model
for p in fp32 int8; do
  if [[ ! -f $M/kvrun-$p/kvrun.json ]]; then
    step "kvrun-build-$p" "$KVRUN" build "$M/ckpt" -o "$M/kvrun-$p" --target ort --precision "$p" --overwrite -q ||
      rm -rf "$M/kvrun-$p"
  fi
done
for q in float32 int8; do
  if [[ ! -f $M/ct2-$q/model.bin && -x $CT2_PY ]]; then
    step "ct2-convert-$q" "$CT2_VENV/bin/ct2-transformers-converter" --model "$M/ckpt" --output_dir "$M/ct2-$q" \
      --quantization "$q" --copy_files source.spm target.spm --force || rm -rf "$M/ct2-$q"
  fi
done
if [[ ! -f $M/optimum/encoder_model.onnx ]]; then
  step optimum-export "$OPTIMUM_VENV/bin/optimum-cli" export onnx --model "$M/ckpt" \
    --task text2text-generation-with-past "$M/optimum" || rm -rf "$M/optimum"
fi
# kvrun: the output length lives in the package's generation settings
for p in fp32 int8; do
  [[ -f $M/kvrun-$p/kvrun.json ]] || continue
  python3 - "$M/kvrun-$p/kvrun.json" "$((GEN_LEN + 1))" <<'PYEOF'
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
j = json.load(open(path))
j["generation"]["min_length"] = j["generation"]["max_length"] = n
json.dump(j, open(path, "w"), indent=2)
PYEOF
done

# 4. sentences, passes, table
SENT=$RESULTS/sentences.txt
"$CT2_PY" bench/translate_common.py "$M/ckpt/source.spm" "$SENT" "$SENTENCES"
ARGS=(--sentences "$SENT" --gen-len "$GEN_LEN" --beams "$BEAMS" --batch-size "$BATCH" --threads "$THREADS")

# name | python | runner | model | runner arguments
JOBS="
kvrun-fp32   python3  run_kvrun_translate.py   $M/kvrun-fp32
kvrun-int8   python3  run_kvrun_translate.py   $M/kvrun-int8 --variant int8
ct2-fp32     $CT2_PY  run_ct2_translate.py     $M/ct2-float32 --compute-type float32 --variant fp32
ct2-int8     $CT2_PY  run_ct2_translate.py     $M/ct2-int8 --compute-type int8 --variant int8
optimum-fp32 $OPT_PY  run_optimum_translate.py $M/optimum
"
ran=() skipped=() failed=()
for ((pass = 1; pass <= PASSES; pass++)); do
  while read -r name py runner model rest; do
    [[ -n $name ]] || continue
    [[ -z ${ONLY:-} || " $ONLY " == *" $name "* ]] || continue
    ((pass > 1)) || rm -f "$RESULTS/$name".pass*.json
    out=$RESULTS/$name.pass$pass.json
    echo "== $name ($model), pass $pass/$PASSES, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    if [[ ! -e $model || ! -x $py && $py != python3 ]]; then
      echo "skip: $model or $py missing" >&2; skipped+=("$name"); continue
    fi
    rc=0
    # shellcheck disable=SC2086
    "$py" "bench/$runner" "$model" $rest "${ARGS[@]}" --outputs "$RESULTS/$name.out" >"$out.tmp" || rc=$?
    if ((rc == 0)); then
      mv "$out.tmp" "$out"; ran+=("$name"); tail -n 1 "$out" | cut -c1-400 >&2
    elif ((rc == 3)); then
      rm -f "$out.tmp"; skipped+=("$name")
    else
      rm -f "$out.tmp"; failed+=("$name"); echo "FAILED: $name (exit $rc)" >&2
    fi
  done <<<"$JOBS"
done
echo "ran: ${ran[*]:-none}; skipped: ${skipped[*]:-none}; failed: ${failed[*]:-none}" >&2
python3 bench/translate_table.py "$RESULTS" || true
((${#failed[@]} == 0))
