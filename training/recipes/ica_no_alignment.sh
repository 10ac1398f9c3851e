#!/usr/bin/env bash
# Stage 2 (ICA with ANI) from the pushed face-loss adapter, with the contrast-alignment term off: the last step of the
# embedded default's recipe (docs/results/experiments/ica_no_alignment/; row 2e of training/results.py). Resumes
# from the latest checkpoint when run again. Needs the synthetic collection (`make world`, or
# synthetic/scripts/build_collection.py --out data/collection).
#   training/recipes/ica_no_alignment.sh runs/ica_no_alignment [--fixed_max_timestep 300 ...extra train_ica.py flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: $0 OUTPUT_DIR [extra train_ica.py flags]}
shift
A=synthetic/src/emojidiff_synthetic/assets
LOAD=emojidiff_synthetic.load
PY=${PYTHON:-.venv/bin/python}
WORDS=$("$PY" -c "from emojidiff_synthetic.collection import EXPRESSION_WORDS; print(','.join(EXPRESSION_WORDS))")
# The stage-1 adapter ICA starts from: the embedded default before ICA shipped (the pushed face-loss row, row 2d of
# training/results.py), taken from the last commit that has it as the asset, or INIT=<adapter folder>.
INIT_COMMIT=a473329
if [ -z "${INIT:-}" ]; then
  INIT=$OUT.init_adapter
  if [ ! -f "$INIT/config.json" ]; then
    rm -rf "$INIT.tmp" && mkdir -p "$INIT.tmp"
    for f in config.json diffusion_pytorch_model.safetensors; do
      git show "$INIT_COMMIT:$A/emojidiff/emoji_adapter/$f" > "$INIT.tmp/$f"
    done
    mv "$INIT.tmp" "$INIT"
  fi
fi
RESUME=()
if ls -d "$OUT"/checkpoint-* > /dev/null 2>&1; then RESUME=(--resume_from_checkpoint latest); fi
exec "$PY" training/train_ica.py \
  --pretrained_model $A/base --adapter "$INIT" --output_dir "$OUT" \
  --same_identity_from data/collection/train.jsonl --recognizer $A/instruments/identity_train.onnx \
  --expression_streams code --expression_encoder $LOAD:train_expression_encoder \
  --strip_prompt_words "$WORDS" \
  --resolution 64 --max_steps 1500 --batch_size 32 --learning_rate 3e-4 --lr_warmup_steps 100 --seed 0 \
  --checkpointing_steps 250 --num_validation 256 --validation_steps 250 --early_stopping_patience 6 \
  --face_loss_weight 6 --expression_loss_model $LOAD:train_expression_loss_model --expression_loss_weight 6 \
  --identity_loss_model $LOAD:train_identity_loss_model --identity_loss_weight 1 --alignment_loss_weight 0 \
  "${RESUME[@]}" "$@"
