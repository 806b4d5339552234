"""The CPU speed room: how the models' layers are computed fast.

`forms`: faster formulations of `nn.Conv` and `nn.BatchNorm` with the same
parameters, `materialize`, and the process-wide switches `use_conv_impl` and
`reference_convolutions`. `onednn`: oneDNN convolutions that XLA calls
through its FFI (CPU only, optional; built by `build`).
"""
