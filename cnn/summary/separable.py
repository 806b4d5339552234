"""What depthwise-separable convolutions save, block by block, from a summary.

A MobileNetV2 (or EfficientNet MBConv) block filters its C expanded channels
with a depthwise K x K conv (`<block>/dw_conv`, groups = C) and projects them
to C' channels with a 1 x 1 conv (`<block>/project_conv`). One standard
K x K conv from C to C' channels at the same output size would cost
H' W' K^2 C C' multiply-adds; the pair costs H' W' (K^2 C + C C'), a ratio of
1/C' + 1/K^2 (`cnn.fundamentals.separable_cost`).

    from cnn.summary import separable
    costs = separable.block_costs('mobilenet_v2')   # one BlockCost a block
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from cnn import fundamentals
from cnn.summary import accounting


class BlockCost(NamedTuple):
  """Multiply-adds of one block's depthwise + pointwise pair, per image.

  Attributes:
    block: module path of the block, e.g. 'backbone/stage2_block1'.
    kernel_size: K of the depthwise conv.
    in_channels: C, the channels the depthwise conv filters.
    out_channels: C', the projection's output channels.
    positions: H' W', output positions of the pair.
    standard: H' W' K^2 C C', one standard K x K conv from C to C'.
    separable: the summary's macs of the depthwise conv + the projection.
    ratio: separable / standard, equal to 1/C' + 1/K^2.
  """

  block: str
  kernel_size: int
  in_channels: int
  out_channels: int
  positions: int
  standard: int
  separable: int
  ratio: float


def block_costs(model: str | accounting.Summary,
                input_shape: Sequence[int] | None = None) -> list[BlockCost]:
  """Standard vs separable cost of every block with `dw_conv` + `project_conv`.

  Args:
    model: a registry name (summarized at `input_shape`, default its natural
      input) or a `Summary`.
    input_shape: (H, W, C) for a registry name.

  Returns:
    One `BlockCost` per block, in the order of the model. Raises RuntimeError
    when the summary's macs disagree with K^2 C + C C' per position.
  """
  s = (model if isinstance(model, accounting.Summary)
       else accounting.summarize(model, input_shape))
  rows = {r.name: r for r in s.rows}
  out = []
  for dw in s.rows:
    if not dw.name.endswith('/dw_conv') or dw.type != 'Conv':
      continue
    block = dw.name[:-len('/dw_conv')]
    proj = rows.get(f'{block}/project_conv')
    if proj is None:
      continue
    k, c, c_out = dw.kernel[0], dw.output_shape[-1], proj.output_shape[-1]
    positions = proj.output_shape[0] * proj.output_shape[1]
    cost = fundamentals.separable_cost(k, c, c_out)
    actual = dw.macs + proj.macs
    if (dw.groups != c or dw.kernel[0] != dw.kernel[1]
        or dw.output_shape[:2] != proj.output_shape[:2]
        or actual != positions * cost.separable):
      raise RuntimeError(
          f'{block}: depthwise {dw.kernel} groups={dw.groups} to '
          f'{dw.output_shape}, projection to {proj.output_shape}: '
          f'{actual:,} macs, not {positions:,} x (K^2 C + C C\').')
    out.append(BlockCost(block, k, c, c_out, positions,
                         positions * cost.standard, actual,
                         actual / (positions * cost.standard)))
  return out
