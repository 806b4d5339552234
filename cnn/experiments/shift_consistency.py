"""Shift consistency of a sweep's trained members (the pooling study).

How much does translating the input change a trained network's pooled maps
and its predicted class? The definition is the inspection mode's
(`cnn.visualize.shift`), here over a member's whole test subset: the test
image shifted by k pixels circularly (the columns or rows that leave one
edge come back at the other; Fashion-MNIST's border is background, so the
object moves on a uniform background), k = 0..8, in two directions: right
(the inspection mode's) and down. A member's numbers are the mean of the two
directions; both are kept.

  measure(member_dir)                   the numbers of one trained run
  measure_sweep(workdir)                writes <member>/shift_consistency.json
                                        for every completed member
  load_results(study_dir)               those files, by member
  shift_consistency_figure(study_dir)   consistency vs k, one curve per
                                        pooling kind, without | with
                                        translation augmentation

`RESULT_FILE` of a member holds:
  consistency.same_as_unshifted[k]: the fraction of the test images whose
    predicted class under a k-pixel shift equals their unshifted class
    (Zhang 2019's classification consistency); same_for_all_up_to[k]: the
    fraction whose class stays the same for every shift 0..k.
  stages[stage]: over the first `map_images` test images, relative L2
    changes ||f(shifted x) - f(x)|| / ||f(x)|| of the stage's map, position
    by position ('unaligned': its lack of invariance; 0.55 at 1 pixel for
    the committed inspection's S2), after moving it back by k / J units of
    its stride J ('aligned': the equivariance error, 0 when J divides k), and
    after global average pooling ('pooled').
  subsampled_stages: the stages whose stride exceeds the previous stage's,
    i.e. the outputs of the pooling layers (or of what replaces them).
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import lines as mlines
from matplotlib import patches as mpatches

import input_pipeline
from cnn import plotting
from cnn.common import errors
from cnn.experiments import analysis, sweep
from cnn.visualize import common, receptive_field, shift, workdir

RESULT_FILE = 'shift_consistency.json'
MAX_SHIFT = 8
# Test images whose maps are compared: the maps of all 10,000 would hold
# ~0.5 GB in float64, and a relative L2 change over 500 images (~2 million
# units of LeNet-5's C1) hardly moves with more; the consistency uses all.
MAP_IMAGES = 500
# 'right' shifts the image's columns (the inspection mode's direction),
# 'down' its rows: the same measurement on the transposed image.
DIRECTIONS = ('right', 'down')
CURVES = ('same_as_unshifted', 'same_for_all_up_to')
ERRORS = ('aligned', 'unaligned', 'pooled')

# Legend names of LeNet-5's `pool` options, in drawing order.
POOL_LABELS = {
    'max': 'max pooling',
    'avg': 'average pooling',
    'strided': 'strided 2×2 convolution',
    'blur': 'blur pooling (max + [1, 2, 1] blur)',
}


def _transpose(x):
  """[N, H, W, C] <-> [N, W, H, C]: a shift down is a shift right of the
  transposed image."""
  return jnp.swapaxes(x, 1, 2)


def _one_direction(model, variables, images: np.ndarray, map_images: int,
                   max_shift: int, stages: Sequence[str], fields, geometry,
                   direction: str) -> dict[str, Any]:
  """`shift.shift_errors` and `shift.consistency` (what `shift.measure`
  composes) for one direction; 'down' is 'right' seen through a transpose
  of the images and of the maps, with the fields' row entries."""
  down = direction == 'down'
  view = _transpose if down else (lambda x: x)
  axis = 0 if down else 1  # the (rows, columns) entry of a field used.
  # Variables as arguments: not constants folded into the programs.
  maps = jax.jit(lambda v, x: {
      s: view(common.forward(model, v, view(x))[1][s]) for s in stages})
  predict = jax.jit(lambda v, x: jnp.argmax(
      common.forward(model, v, view(x))[0], -1))
  viewed = np.asarray(view(images))
  # `shift_errors` reads the column entries of (rf, jump) pairs.
  along = {s: ((rf[1 - axis], rf[axis]), (jump[1 - axis], jump[axis]))
           for s, (rf, jump) in fields.items() if s in stages}
  data = shift.shift_errors(lambda x: maps(variables, x),
                            viewed[:map_images], along, max_shift,
                            {s: geometry[s].start[axis] for s in stages})
  data['consistency'] = shift.consistency(lambda x: predict(variables, x),
                                          viewed, max_shift)
  return data


def subsampled_stages(fields: dict[str, Any], stages: Sequence[str]
                      ) -> list[str]:
  """The stages whose jump (cumulative stride, the larger of rows and
  columns) exceeds that of the stage before them: the pooled outputs."""
  jumps = [max(fields[s][1]) for s in stages]
  return [s for i, s in enumerate(stages) if i and jumps[i] > jumps[i - 1]]


def measure(member_dir: str, *, max_shift: int = MAX_SHIFT,
            map_images: int = MAP_IMAGES) -> dict[str, Any]:
  """Shift consistency and stage changes of a trained run (see the module
  docstring), on the whole test subset its config names.

  Args:
    member_dir: a training workdir (its config.json and newest checkpoint
      are read, as `--mode=inspect` reads them: `workdir.load_run`).
    max_shift: shifts k = 0..max_shift pixels.
    map_images: the first this many test images give the stage changes.

  Returns:
    JSON-ready data: the run's facts (model, pool, augmentation, step), the
    mean over `DIRECTIONS` and each direction's `shift.measure`-shaped data.

  Raises:
    errors.UserError: no checkpoint or config in `member_dir`.
  """
  config = workdir.load_config(member_dir)
  info = input_pipeline.get_input_info(config.input)
  num_test = int(config.input.test_subset) or int(info.num_test)
  run = workdir.load_run(member_dir, num_test=num_test)
  images = run.images
  stages = common.stage_names(run.model, run.variables, run.input_shape)
  fields = receptive_field.theoretical_fields(run.model, run.input_shape)
  geometry = receptive_field.field_geometry(run.model, run.variables,
                                            run.input_shape, stages)
  per_direction = {
      d: _one_direction(run.model, run.variables, images, map_images,
                        max_shift, stages, fields, geometry, d)
      for d in DIRECTIONS}
  mean = lambda get: np.mean([np.asarray(get(per_direction[d]), float)
                              for d in DIRECTIONS], axis=0)
  predict = jax.jit(lambda v, x: jnp.argmax(
      common.forward(run.model, v, x)[0], -1))
  predicted = common.batched(lambda x: predict(run.variables, x), images)
  return dict(
      member=os.path.basename(os.path.normpath(member_dir)),
      model_name=config.model_name,
      pool=config.model.get('pool', ''),
      augment=config.input.augment.to_dict(),
      crop_padding=int(config.input.augment.crop_padding),
      seed=int(config.seed), step=run.step,
      num_images=len(images), map_images=min(map_images, len(images)),
      test_accuracy=float(np.mean(predicted == run.labels)),
      shifts=list(range(max_shift + 1)),
      definition=('circular shifts of k pixels, the mean over '
                  + ' and '.join(DIRECTIONS)
                  + '; stage changes relative L2 over the first '
                  f'{min(map_images, len(images))} test images'),
      consistency={c: mean(lambda d, c=c: d['consistency'][c])
                   for c in CURVES},
      stages={s: dict(jump=list(fields[s][1]), rf=list(fields[s][0]),
                      **{e: mean(lambda d, s=s, e=e: d[s][e])
                         for e in ERRORS})
              for s in stages},
      subsampled_stages=subsampled_stages(fields, stages),
      directions=per_direction)


def _completed(workdir_path: str) -> list[str]:
  """The completed members of a sweep workdir, in plan order."""
  with open(os.path.join(workdir_path, sweep.PLAN_FILE)) as f:
    names = [m['name'] for m in json.load(f)['members']]
  return [n for n in names if (sweep.read_result(
      os.path.join(workdir_path, n)) or {}).get('status') == 'completed']


def measure_sweep(workdir_path: str, *, max_shift: int = MAX_SHIFT,
                  map_images: int = MAP_IMAGES, overwrite: bool = False
                  ) -> list[str]:
  """Writes `RESULT_FILE` into every completed member of a sweep workdir.

  A member whose file is newer than its result.json is left as it is
  (unless `overwrite`): rerunning after more members finished measures only
  those.

  Returns:
    The paths written.

  Raises:
    errors.UserError: `workdir_path` holds no sweep (no sweep.json).
  """
  if not os.path.isfile(os.path.join(workdir_path, sweep.PLAN_FILE)):
    raise errors.UserError(
        f'{workdir_path} has no {sweep.PLAN_FILE}: pass the --workdir of a '
        'sweep (python main.py --config=configs/pooling_fmnist.py '
        '--workdir=runs/pooling_fmnist).')
  written = []
  for name in _completed(workdir_path):
    member_dir = os.path.join(workdir_path, name)
    path = os.path.join(member_dir, RESULT_FILE)
    result = os.path.join(member_dir, sweep.RESULT_FILE)
    if (not overwrite and os.path.exists(path)
        and os.path.getmtime(path) >= os.path.getmtime(result)):
      continue
    data = measure(member_dir, max_shift=max_shift, map_images=map_images)
    sweep.write_json_atomically(path, plotting.jsonable(data, 6))
    written.append(path)
  return written


def load_results(study_dir: str) -> dict[str, dict[str, Any]]:
  """{member: its `RESULT_FILE` data} of the members of `study_dir` (a
  sweep workdir or its export under results/) that have one."""
  out = {}
  for name in sorted(os.listdir(study_dir)):
    path = os.path.join(study_dir, name, RESULT_FILE)
    if os.path.isfile(path):
      with open(path) as f:
        out[name] = json.load(f)
  return out


def _augmentation_text(padding: int) -> str:
  return (f'with random translation (±{padding} px)' if padding
          else 'without translation augmentation')


@plotting.styled
def shift_consistency_figure(study_dir: str, path: str | None = None):
  """Classification consistency vs shift k, one curve per pooling kind
  (mean ± 1 std over seeds as a band), without (left) and with (right)
  translation augmentation. Reads the members' `RESULT_FILE`s."""
  results = load_results(study_dir)
  curves: dict[tuple[int, str], list[np.ndarray]] = {}
  shifts: list[int] = []
  for data in results.values():
    key = (int(data['crop_padding']), data['pool'])
    curves.setdefault(key, []).append(
        100 * np.asarray(data['consistency']['same_as_unshifted'], float))
    shifts = data['shifts']
  paddings = sorted({p for p, _ in curves}) or [0]
  known = list(POOL_LABELS)
  pools = sorted({q for _, q in curves},
                 key=lambda q: (known.index(q) if q in known else len(known),
                                q))
  colour = {q: plotting.PALETTE[i % len(plotting.PALETTE)]
            for i, q in enumerate(pools)}
  fig, axes = plotting.figure(1, len(paddings), height=4.4, sharey=True,
                              squeeze=False)
  axes = axes[0]
  data_out: dict[str, Any] = {
      'band': '± 1 std (ddof=1) over seeds', 'unit': '% of test images',
      'curve': 'predicted class unchanged by a circular shift of k pixels, '
               'mean over right and down', 'panels': {}}
  ns = []
  for ax, padding in zip(axes, paddings, strict=True):
    title = _augmentation_text(padding)
    for q in pools:
      runs = curves.get((padding, q))
      if not runs:
        continue
      values = np.stack(runs)
      std = values.std(0, ddof=1) if len(runs) > 1 else np.zeros(
          values.shape[1])
      plotting.band(ax, shifts, values.mean(0), std, color=colour[q],
                    marker='o', ms=3.5)
      ns.append(len(runs))
      data_out['panels'].setdefault(title, {})[POOL_LABELS.get(q, q)] = dict(
          shifts=shifts, n=len(runs), mean=values.mean(0), std=std)
    ax.set(title=title, xlabel='shift k (pixels)')
    ax.set_xticks(shifts or [0])
    if not results:
      ax.text(0.5, 0.5, f'no {RESULT_FILE}',
              transform=ax.transAxes, ha='center', color='0.5')
  axes[0].set_ylabel('same class as unshifted (% of test images)')
  axes[0].set_ylim(top=101)
  handles = [mlines.Line2D([], [], color=colour[q], marker='o', ms=3.5,
                           label=POOL_LABELS.get(q, q)) for q in pools]
  handles.append(mpatches.Patch(
      color='0.2', alpha=0.2,
      label=f'band: ± 1 std over {analysis.seeds_text(ns)}'))
  fig.legend(handles=handles, loc='outside lower center',
             ncols=min(3, len(handles)))
  model = sorted({analysis.model_label(d['model_name'])
                  for d in results.values()}) or ['LeNet-5']
  fig.suptitle(f'{", ".join(model)}: is the predicted class shift-invariant?'
               ' (circular shifts, mean over right and down)')
  return plotting.save(fig, path, data_out)


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m cnn.experiments.shift_consistency WORKDIR [FIGURE.png]`:
  measures every completed member, then draws the figure."""
  import sys  # pylint: disable=g-import-not-at-top
  argv = list(sys.argv[1:] if argv is None else argv)
  if not 1 <= len(argv) <= 2:
    print('usage: python -m cnn.experiments.shift_consistency WORKDIR '
          '[FIGURE.png]', file=sys.stderr)
    return 2
  # main.py's persistent compilation cache: members of one pooling kind
  # then compile their programs once.
  jax.config.update('jax_compilation_cache_dir', os.path.join(
      os.path.expanduser('~'), '.cache', 'cnn-study', 'xla'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  try:
    for path in measure_sweep(argv[0]):
      print(path)
  except errors.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  if len(argv) == 2:
    with plotting.files_only():
      shift_consistency_figure(argv[0], argv[1])
    print(argv[1])
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
