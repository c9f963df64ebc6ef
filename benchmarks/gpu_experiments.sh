#!/usr/bin/env bash
# The quality runs behind the notes, in one GPU call (< 10 min): train every model at once on the
# shared GPU for MINUTES, a Sketch-a-Net judge beside them, then sample, evaluate and draw.
#
#   OUT=results MINUTES=6 benchmarks/gpu_experiments.sh
#
# Data: SPG20 (default .gpu/spg20) = `sketchlab data import shared/data/spg20 --out ...`;
#       SHEEP (default .gpu/shared/sketchrnn) holds aaron_sheep.npz.
# DRY=1 runs the same pipeline with tiny models for a few seconds each (a CPU rehearsal).
# Everything lands in $OUT/results.tar.gz (PNGs, JSON, tables, logs) plus $OUT/summary.txt.
set -u
OUT=${OUT:-/tmp/sketchlab-exp}
MINUTES=${MINUTES:-5.5}
SPG20=${SPG20:-.gpu/spg20}
SHEEP=${SHEEP:-.gpu/shared/sketchrnn}
R=${RUNS:-/tmp/sketchlab-runs}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$R/res"
SL="python -m sketchlab.cli"
CATS20=airplane,alarm_clock,ambulance,ant,apple,backpack,basket,butterfly,cactus,calculator,campfire,candle,coffee_cup,crab,duck,face,ice_cream,pig,pineapple,suitcase
CATS5=airplane,apple,butterfly,cactus,pig
CLF_ARGS="--epochs 40"
# Small data (3,000 sketches): validate every 200 steps, not every 15-step epoch, so the seeds'
# patience of 5 is not spent on single-batch noise.
SHEEP_HP="" SRNN_HP=${SRNN_HP:-"--hparams eval_every=200"}
SP_HP=${SP_HP:-"--hparams eval_every=200"} GLOC_HP=${GLOC_HP:-"--hparams eval_every=200"} RPCL_HP=${RPCL_HP:-"--hparams eval_every=200"} KNIT_HP="batch_size=256,eval_every=500" EVAL_ARGS="" KQ_ARGS=""
if [ "${DRY:-0}" = 1 ]; then    # tiny everything: checks the plumbing, not the numbers
  MINUTES=${MINUTES_DRY:-0.1}
  CLF_ARGS="--epochs 1 --limit 20 --valid-limit 10 --max-steps 2"
  SHEEP_HP="--hparams enc_rnn_size=16,dec_rnn_size=32,z_size=8,batch_size=16 --limit-per-category 200"
  SRNN_HP="--hparams enc_rnn_size=16,dec_rnn_size=32,z_size=8,batch_size=16 --limit-per-category 40"
  SP_HP="--hparams graph_picture_size=32,cnn_channels=[4,4,4,4],dec_rnn_size=32,z_size=8,num_mixture=4,batch_size=8 --limit-per-category 20"
  GLOC_HP="--hparams enc_rnn_size=16,dec_rnn_size=32,z_size=8,batch_size=8 --limit-per-category 20"
  RPCL_HP="--hparams dec_model=lstm,dec_rnn_size=32,z_size=8,batch_size=16,cnn_channels=[4,8,8,8] --limit-per-category 40"
  KNIT_HP="channel_mult=[1,2],num_res_blocks=1,batch_size=8,eval_every=0 --limit-per-category 60"
  EVAL_ARGS="--per-category 6 --no-gs"
  KQ_ARGS="--n 8 --batch 8 --calib-sketches 16 --record-steps 5 --recognizer-epochs 1"
fi
JOBS=" ${JOBS:-clf sheep srnn5 rpcl rpclh sp5 gloc5 knitter} "     # a subset reruns only those models
has() { case "$JOBS" in *" $1 "*) return 0;; esac; return 1; }
log() { echo "[$(date +%T)] $*"; }
if ls .whl/*.whl >/dev/null 2>&1; then   # gudhi (Geometry Score) carried as a wheel
  python -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
[ "${DRY:-0}" = 1 ] || python -m pytest -q -m gpu tests > "$R/res/gpu_tests.log" 2>&1 &

log "start: $(python -c 'import torch;print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")')"
# 1. everything trains at once (the GPU is shared; each job's own time limit applies)
has clf && $SL classifier train --data-dir "$SPG20" --categories $CATS20 --out "$R/clf" $CLF_ARGS \
    --quiet > "$R/res/clf.log" 2>&1 &
has sheep && $SL train sketch-rnn --data-dir "$SHEEP" --categories aaron_sheep --out "$R/sheep" \
    --max-minutes "$MINUTES" --no-progress $SHEEP_HP > "$R/res/sheep_train.log" 2>&1 &
# sketch-rnn on the five SPG categories: the baseline row of the model table
has srnn5 && $SL train sketch-rnn --data-dir "$SPG20" --categories $CATS5 --out "$R/srnn5" \
    --max-minutes "$MINUTES" --no-progress $SRNN_HP > "$R/res/srnn5_train.log" 2>&1 &
# the two conditional (healing) models on the same five categories
has sp5 && $SL train sp-gra2seq --data-dir "$SPG20" --categories $CATS5 --out "$R/sp5" \
    --max-minutes "$MINUTES" --no-progress $SP_HP > "$R/res/sp5_train.log" 2>&1 &
has gloc5 && $SL train sketchgloc --data-dir "$SPG20" --categories $CATS5 --out "$R/gloc5" \
    --max-minutes "$MINUTES" --no-progress $GLOC_HP > "$R/res/gloc5_train.log" 2>&1 &
has rpcl && $SL train rpcl-pix2seq --data-dir "$SPG20" --categories $CATS5 --out "$R/rpcl" \
    --max-minutes "$MINUTES" --no-progress $RPCL_HP > "$R/res/rpcl_train.log" 2>&1 &
has rpclh && $SL train rpcl-pix2seqh --data-dir "$SPG20" --categories $CATS5 --out "$R/rpclh" \
    --max-minutes "$MINUTES" --no-progress $RPCL_HP > "$R/res/rpclh_train.log" 2>&1 &
has knitter && $SL train sketchknitter --data-dir "$SPG20" --categories apple --out "$R/knitter" \
    --max-minutes "$MINUTES" --no-progress --hparams $KNIT_HP > "$R/res/knitter_train.log" 2>&1 &
wait
log "training done"; tail -n 3 "$R"/res/*_train.log "$R/res/clf.log"

# 2. samples, maps, metrics (several at once again), each group within EVAL_SECONDS
EVAL_SECONDS=${EVAL_SECONDS:-170}
export SL R SPG20 CATS5 EVAL_ARGS KQ_ARGS RUNS_DONE
group() { local name=$1; shift; timeout -k 5 "$EVAL_SECONDS" bash -c "$*" > "$R/res/$name.log" 2>&1 & }
has sheep && group sheep_sample '$SL sample $R/sheep --out $R/res/sheep_samples.npz --n 48 --temperature 0.25;
  $SL sample $R/sheep --out $R/res/sheep_test_cond.npz --condition-on test --n 24 --temperature 0.2'
for m in rpcl rpclh; do
  has $m && group ${m}_sample "\$SL sample \$R/$m --out \$R/res/${m}_cond.npz --condition-on test --n 40;
    \$SL sample \$R/$m --out \$R/res/${m}_comp0.npz --component 0 --n 16;
    \$SL sample \$R/$m --out \$R/res/${m}_prior.npz --n 40"
  # the t-SNE map gets its own time box (chained after the samples it was cut short once)
  has $m && group ${m}_map "\$SL latent map \$R/$m --out \$R/res/${m}_map.png --split test"
done
for m in sp5 gloc5; do   # healing: references corrupted at 0.1 / 0.3, as in the papers
  has $m && group ${m}_sample "\$SL sample \$R/$m --out \$R/res/${m}_cond.npz --condition-on test --n 40;
    \$SL sample \$R/$m --out \$R/res/${m}_heal30.npz --condition-on test --n 40 --strength 0.3"
done
has clf && has sheep && group real_valid '$SL evaluate real:valid --classifier $R/clf --data-dir $SPG20 --out $R/res/real_valid.json $EVAL_ARGS'
has knitter && group knitter_quality 'OUT=$R/res python benchmarks/knitter_quality.py --run $R/knitter --classifier $R/clf $KQ_ARGS'
RUNS_DONE=""; for m in srnn5 rpcl rpclh sp5 gloc5; do has $m && RUNS_DONE="$RUNS_DONE $R/$m"; done
[ -n "$RUNS_DONE" ] && group compare '$SL compare $RUNS_DONE --classifier $R/clf --data-dir $SPG20 --categories $CATS5 --out $R/res/compare.json $EVAL_ARGS'
wait
log "evaluation done"

# 3. pack: every run's config/log/curve plus the results
for m in sheep srnn5 rpcl rpclh sp5 gloc5 knitter clf; do
  for f in config.json log.csv loss.png metrics.json; do
    [ -f "$R/$m/$f" ] && cp "$R/$m/$f" "$R/res/${m}_$f"
  done
done
rm -f "$R"/res/*.npz.tmp
tar -czf "$OUT/results.tar.gz" -C "$R" res
{ for f in "$R"/res/*.md "$R"/res/*.log; do echo "== $f"; tail -n 12 "$f"; done; } > "$OUT/summary.txt"
ls -la "$OUT"
log "end"
