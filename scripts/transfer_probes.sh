#!/bin/bash
# The transfer protocol's probe runs of one source network (README,
# "Transfer learning"): the linear regime (multinomial logistic regression
# by L-BFGS on the frozen pre_logits, L2 chosen on validation) on each
# target, and ridge probes of every layer on the source task and both
# targets, each with 5 seeds that draw their own examples.
#
#   scripts/transfer_probes.sh lenet5     # from runs/transfer_source_lenet5
#   scripts/transfer_probes.sh resnet20   # from runs/transfer_source_resnet20
#
# Writes runs/transfer_linear/NET-{fmnist59,digits}/ and
# runs/transfer_probes/NET-{fmnist04,fmnist59,digits}/ (probe.csv, probe.png);
# PYTHON (default: python) runs main.py.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  lenet5) config=configs/transfer_source.py ;;
  resnet20) config=configs/transfer_source_resnet.py ;;
  *) echo "error: usage: $0 lenet5|resnet20" >&2; exit 2 ;;
esac
net=$1
probe() {
  "${PYTHON:-python}" main.py --mode=probe --config="$config" \
    --workdir="runs/transfer_source_$net" --probe_seeds=0,1,2,3,4 "$@"
}
fmnist59=(--config.input.classes='(5,6,7,8,9)'
          --config.input.validation_per_class=100)
digits=(--config.input.dataset=digits --config.input.classes='()'
        --config.input.image_size=28 --config.input.validation_per_class=0
        --config.input.validation_fraction=0.2)
linear=(--probe_layers=pre_logits --probe_method=logistic)
probe "${linear[@]}" "${fmnist59[@]}" --probe_shots=10,100,1000 \
  --probe_out="runs/transfer_linear/$net-fmnist59"
probe "${linear[@]}" "${digits[@]}" --probe_shots=10,100,0 \
  --probe_out="runs/transfer_linear/$net-digits"
probe --probe_method=ridge "${fmnist59[@]}" --probe_shots=10,100,1000 \
  --probe_out="runs/transfer_probes/$net-fmnist59"
probe --probe_method=ridge "${digits[@]}" --probe_shots=10,100,0 \
  --probe_out="runs/transfer_probes/$net-digits"
probe --probe_method=ridge --config.input.validation_per_class=100 \
  --probe_shots=10,100,1000 --probe_out="runs/transfer_probes/$net-fmnist04"
