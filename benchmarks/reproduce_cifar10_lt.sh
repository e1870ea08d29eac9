#!/usr/bin/env bash
# The CIFAR-10-LT IF 100 runs of the results tables, seed by seed, through benchmarks/reproduce.py: what the
# store already holds is skipped, an unfinished run resumes. Start it once per core or GPU; the runners share
# the queue (each trains runs the others are not training).
#
#   bash benchmarks/reproduce_cifar10_lt.sh [reproduce.py options, e.g. --runs DIR --results DIR]
#   PYTHON=.venv/bin/python BUDGET=30 bash benchmarks/reproduce_cifar10_lt.sh
#
# Order: every method's seed 0, so a table of n = 1 appears early (the student of the SAM teacher after the
# controls); the controlled experiments (seeds 0-2, see controls; the pairs the results compare are
# benchmarks/results/comparisons.yaml); RIDE-3 at the official code's own 20-epoch settings beside LDAM-DRW and CE
# at the same settings (seeds 0-2); seeds 1 and 2 of every method; MDCS and SHIKE at their whole schedules. A
# DeiT-LT student comes after the teacher of its seed (a student whose teacher another runner is still training is
# reported at the end and trained by the next call).
# The tables afterwards: python benchmarks/reproduce.py --tables-only
set -u
PYTHON=${PYTHON:-python}
BUDGET=${BUDGET:-30}
REPRODUCE="$(dirname "$0")/reproduce.py"
status=0

reproduce() {
    "$PYTHON" "$REPRODUCE" --dataset cifar10-lt-if100 --no-readme "$@" || status=1
}

# The two baselines every method is compared with, the papers' methods, then the other baselines.
BUDGET_RECIPES=(
    cifar10-lt-if100-ce cifar10-lt-if100-ldam-drw
    ride-cifar10-lt-if100 mdcs-cifar10-lt-if100 shike-cifar10-lt-if100 apa-cifar10-lt-if100
    deit-lt-teacher-cifar10-lt-if100-budget metafg-cifar10-lt-if100-budget
    deit-lt-cifar10-lt-if100-budget-label-teacher deit-lt-cifar10-lt-if100-budget-no-teacher
    cifar10-lt-if100-balanced-softmax cifar10-lt-if100-crt
)
TEACHER='method.args.teacher={runs}/deit-lt-teacher-cifar10-lt-if100-budget/seed{seed}'
# The teacher without SAM (then LDAM-DRW itself): at 30 epochs SAM's rho 0.8 leaves the teacher far below LDAM-DRW
# (the comparison "SAM (rho 0.8) on LDAM-DRW" of the results), so the student is also distilled from this one.
NO_SAM=optim.sam_rho=0.0
TEACHER_NO_SAM="method.args.teacher={runs}/deit-lt-teacher-cifar10-lt-if100-budget+$NO_SAM/seed{seed}"
APA_BATCH_128=(data.batch_size=128 optim.lr=0.05)
OFFICIAL_20=(schedule.epochs=20 schedule.warmup_epochs=0 'schedule.milestones=[16,18]')
# LDAM-DRW with everything of RIDE's but its experts (optimiser, augmentation), so the difference is RIDE's own.
RIDE_BUT_EXPERTS=(optim.weight_decay=5.0e-4 optim.nesterov=true
                  'data.augment={crop: true, padding: 4, flip: true, rotation: 15}')

budget_runs() {  # SEED: every budget recipe, the teacher without SAM and the DeiT-LT student distilled from it
    reproduce --budget "$BUDGET" --seeds "$1" "${options[@]}" -- "${BUDGET_RECIPES[@]}"
    reproduce --budget "$BUDGET" --seeds "$1" --set "$NO_SAM" "${options[@]}" -- deit-lt-teacher-cifar10-lt-if100-budget
    reproduce --budget "$BUDGET" --seeds "$1" --set "$TEACHER_NO_SAM" "${options[@]}" -- deit-lt-cifar10-lt-if100-budget
}

sam_teacher_student() {  # SEED: the DeiT-LT student distilled from the SAM teacher
    reproduce --budget "$BUDGET" --seeds "$1" --set "$TEACHER" "${options[@]}" -- deit-lt-cifar10-lt-if100-budget
}

controls() {  # SEED, at the budget: LDAM-DRW with RIDE's optimiser and augmentation (RIDE's experts are then
    # the only difference); SHIKE with the standard crop + flip in place of AutoAugment + Cutout, and with a
    # 10-epoch stage 2 (the budget leaves its fresh heads 3); APA at batch 128 (4x the optimiser steps of its
    # batch 512, lr scaled linearly), and at batch 128 with crop + flip and no Mixup; ResNet-32 CE with AGLU
    # (against cifar10-lt-if100-ce, the same with ReLU)
    reproduce --budget "$BUDGET" --seeds "$1" --set "${RIDE_BUT_EXPERTS[@]}" "${options[@]}" -- cifar10-lt-if100-ldam-drw
    reproduce --budget "$BUDGET" --seeds "$1" --set data.augment=standard "${options[@]}" -- shike-cifar10-lt-if100
    reproduce --budget "$BUDGET" --seeds "$1" --set stages.0.min_epochs=10 "${options[@]}" -- shike-cifar10-lt-if100
    reproduce --budget "$BUDGET" --seeds "$1" --set "${APA_BATCH_128[@]}" "${options[@]}" -- apa-cifar10-lt-if100
    reproduce --budget "$BUDGET" --seeds "$1" --set "${APA_BATCH_128[@]}" data.augment=standard method.args.mixup_alpha=0.0 \
        "${options[@]}" -- apa-cifar10-lt-if100
    reproduce --budget "$BUDGET" --seeds "$1" "${options[@]}" -- cifar10-lt-if100-resnet32-aglu-budget
}

official_20_runs() {  # SEED: RIDE-3, LDAM-DRW and CE at the official RIDE code's 20-epoch settings
    reproduce --seeds "$1" --set "${OFFICIAL_20[@]}" loss.args.drw_epoch=16 "${options[@]}" -- ride-cifar10-lt-if100
    reproduce --seeds "$1" --set "${OFFICIAL_20[@]}" loss.args.drw_epoch=16 "${RIDE_BUT_EXPERTS[@]}" "${options[@]}" \
        -- cifar10-lt-if100-ldam-drw
    reproduce --seeds "$1" --set "${OFFICIAL_20[@]}" "${options[@]}" -- cifar10-lt-if100-ce
}

options=("$@")
budget_runs 0
for seed in 0 1 2; do controls "$seed"; done
# The student of the SAM teacher, the weaker of the two teachers at this budget, after the controls (110 minutes a
# student on one CPU thread, the costliest run of the budget).
sam_teacher_student 0
for seed in 0 1 2; do official_20_runs "$seed"; done
for seed in 1 2; do
    budget_runs "$seed"
    sam_teacher_student "$seed"
done
reproduce --seeds 0 "${options[@]}" -- mdcs-cifar10-lt-if100 shike-cifar10-lt-if100
exit $status
