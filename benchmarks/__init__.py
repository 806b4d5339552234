"""Speed benchmarks (run from the repository root as `python -m benchmarks.X`).

  train_throughput   JAX train step vs its PyTorch twin, images/s, interleaved
  profile_step       per-HLO-operation time of a compiled train step
  conv_ops           per-convolution timings, XLA vs oneDNN
  scan_vs_step       the step inside lax.scan / fori_loop vs per-step calls
  input_throughput   input pipelines (device, tf.data) vs training speed
  time_to_accuracy   process start -> target test accuracy, split into parts
  accelerator        GPU/TPU images/s, MFU and scaling (--smoke on a CPU)

`torch_models` holds the PyTorch twins, `cpu_speedups.plain` the naive
network (the models without their adopted CPU forms) for before/after
ablations; FINDINGS.md has the results.
"""
