"""Size accounting: how big is a model and where does its cost go?

    python -m cnn.summary --model=resnet20      # or --list, --json

`summarize(name_or_module, input_shape)` returns a `Summary` (one `LayerRow`
per layer call, with units, weights, connections, FLOPs, memory and receptive
field, plus totals) without running the model. The parts:

  accounting.py  rows, totals and their cross-checks; the conventions
  trace.py       the abstract trace: module calls and the jaxpr's data flow
  report.py      the text table and the model listing
  cli.py         the print functions and the command line (`__main__.py`)
  plot.py        `--plot`: per-layer memory / parameter / FLOP bars
  separable.py   MobileNetV2's blocks: depthwise-separable vs standard cost
"""

from cnn.summary import accounting, cli, report

# The public API, as `cnn.summary.<name>`.
LayerRow = accounting.LayerRow
Summary = accounting.Summary
summarize = accounting.summarize
xla_cost_analysis = accounting.xla_cost_analysis
xla_flops = accounting.xla_flops
output_receptive_fields = accounting.output_receptive_fields
train_step_memory = accounting.train_step_memory
print_summary = cli.print_summary
print_summary_for_config = cli.print_summary_for_config
main = cli.main
list_descriptions = report.list_descriptions
format_table = report.format_table
