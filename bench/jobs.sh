# The job loop of bench/run-all.sh, bench/run-gguf.sh and bench/run-asr.sh (sourced, not run).
# Before `run_jobs`, set:
#   JOBS     lines "name runner model [VAR=value,VAR2=value] [--runner-arg ...]" (runner: a
#            bench/*.py; fields from the first one starting with -- are runner arguments)
#   PY       the Python that runs the runners;  ARGS  the runners' arguments (array)
#   PRE_ARGS (optional array) arguments between the model and the rest (run-asr: the clips)
#   RESULTS  the results folder;  PASSES (1) and ONLY ("") from the environment;
#   BUILD_HINT (optional) what builds a missing model;  TABLE (bench/table.py) the table script
# run_jobs fills the arrays ran, skipped and failed; finish_jobs prints them and the
# table, and returns 1 when a job failed (skips are fine).

# PASSES > 1 runs the whole job list that many times, so that drift over time (minutes
# apart, ~10-15% here) hits every engine alike; table.py takes the median of the medians.
PRE_ARGS=("${PRE_ARGS[@]}")
run_jobs() {
  local pass name runner model rest out rc tok
  local -a envs extra
  PASSES=${PASSES:-1}
  ran=() skipped=() failed=()
  mkdir -p "$RESULTS"
  for ((pass = 1; pass <= PASSES; pass++)); do
  while read -r name runner model rest; do
    [[ -n $name ]] || continue
    [[ -z ${ONLY:-} || " $ONLY " == *" $name "* ]] || continue
    ((pass > 1)) || rm -f "$RESULTS/$name".json "$RESULTS/$name".pass*.json
    out=$RESULTS/$name.json
    ((PASSES == 1)) || out=$RESULTS/$name.pass$pass.json
    echo "== $name ($model), pass $pass/$PASSES, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    if [[ ! -e $model ]]; then
      echo "skip: $model not built (${BUILD_HINT:-bench/make-models.sh})" >&2; skipped+=("$name"); continue
    fi
    envs=() extra=()
    for tok in $rest; do
      if [[ $tok == --* || ${#extra[@]} -gt 0 ]]; then extra+=("$tok"); else envs+=(${tok//,/ }); fi
    done
    rc=0
    env "${envs[@]}" "$PY" "bench/$runner" "$model" "${PRE_ARGS[@]}" "${extra[@]}" "${ARGS[@]}" >"$out.tmp" || rc=$?
    if ((rc == 0)); then
      mv "$out.tmp" "$out"; ran+=("$name")
    elif ((rc == 3)); then
      rm -f "$out.tmp"; skipped+=("$name")
    else
      rm -f "$out.tmp"; failed+=("$name"); echo "FAILED: $name (exit $rc)" >&2
    fi
  done <<<"$JOBS"
  done
}

finish_jobs() {
  echo "ran: ${ran[*]:-none}; skipped: ${skipped[*]:-none}; failed: ${failed[*]:-none}" >&2
  python3 "${TABLE:-bench/table.py}" "$RESULTS" || true
  ((${#failed[@]} == 0))
}
