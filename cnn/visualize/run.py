"""Every figure of a trained run: `python main.py ... --mode=inspect`.

    python main.py --config=configs/default.py --workdir=runs/default \
        --mode=inspect
    python -m cnn.visualize.run --workdir=runs/a --compare=runs/b \
        --out=results/inspect/a_vs_b

`write_all(config, workdir)` writes PNG figures and their JSON numbers to
`<workdir>/figures/` and returns the PNG paths; `compare(workdir_a,
workdir_b, out_dir)` draws two runs (a ResNet and its plain twin) side by
side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

from cnn import plotting
from cnn.common import errors
from cnn.kernels import forms
from cnn.visualize import (
  activations,
  backprop,
  common,
  confusion,
  filters,
  kernels,
  receptive_field,
  saliency,
  shift,
  top_patches,
  workdir,
)


def _summary_plot(run: workdir.Run, path: str) -> str:
  # pylint: disable=g-import-not-at-top
  from cnn import summary
  from cnn.summary import plot
  s = summary.summarize(run.config.model_name, run.input_shape,
                        run.info.num_classes, run.config.dtype,
                        **run.config.model.to_dict())
  return plot.plot_summary(s, path)


def write_all(config, workdir_path: str, out_dir: str | None = None, *,
              image_index: int = 0, stage: str | None = None,
              num_test: int = 1000,
              erf_images: int = receptive_field.ERF_IMAGES,
              shift_images: int = 64, max_shift: int = 8,
              saliency_images: int = 4, patch_units: int = 6,
              patch_images: int = 6) -> list[str]:
  """Writes every figure of the run in `workdir_path`.

  Args:
    config: the config given on the command line (the workdir's
      config.json takes precedence: it has the run's overrides).
    workdir_path: a trained workdir.
    out_dir: where the figures go; default `<workdir>/figures`.
    image_index: test image of the activation-map figure.
    stage: Grad-CAM stage; default the last spatial stage.
    num_test: test images for the confusion matrix, consistency and the
      top patches' search.
    erf_images: images averaged in the effective receptive fields (256:
      Luo et al.'s maps are averages; one image's is noise).
    shift_images: images of the equivariance errors.
    max_shift: largest shift in pixels.
    saliency_images: images of the saliency figure.
    patch_units: units (channels) per stage in `top_patches.png`.
    patch_images: top images per unit there.

  Returns:
    The PNG paths (each with a .json of its numbers beside it).

  Raises:
    errors.UserError: no checkpoint, unknown stage, image index out of range.
  """
  with plotting.files_only():
    return _write_all(config, workdir_path, out_dir, image_index, stage,
                      num_test, erf_images, shift_images, max_shift,
                      saliency_images, patch_units, patch_images)


def _write_all(config, workdir_path, out_dir, image_index, stage, num_test,
               erf_images, shift_images, max_shift, saliency_images,
               patch_units, patch_images) -> list[str]:
  start = time.perf_counter()
  run = workdir.load_run(workdir_path, config, num_test)
  loaded = time.perf_counter() - start
  common.check_index(image_index, len(run.images))
  stages = common.stage_names(run.model, run.variables, run.input_shape)
  stage = stage or stages[-1]
  common.check_stage(stage, stages)
  out_dir = out_dir or os.path.join(workdir_path, 'figures')
  path = lambda name: os.path.join(out_dir, f'{name}.png')
  paths, timings = [], {'load': round(loaded, 2)}

  def timed(name, fn, *args, **kwargs):
    t = time.perf_counter()
    paths.append(fn(*args, **kwargs))
    timings[name] = round(time.perf_counter() - t, 2)

  with forms.use_conv_impl(run.config.get('conv_impl', 'auto')):
    timed('kernels', kernels.plot_kernels, run.display[:4], path('kernels'))
    layer, trained = filters.first_conv_kernel(run.model, run.variables,
                                               run.input_shape)
    _, initial = filters.first_conv_kernel(run.model, run.init_variables,
                                           run.input_shape)
    timed('filters', filters.plot_filters, trained, initial, path('filters'),
          layer)
    timed('activations', activations.plot_activations, run.model,
          run.variables, run.images[image_index], path('activations'),
          display_image=run.display[image_index])
    timed('receptive_field', receptive_field.plot_receptive_fields,
          run.model, {'init': run.init_variables, 'trained': run.variables},
          run.images[:erf_images], path('receptive_field'))
    timed('shift', lambda: shift.plot_shift(
        shift.measure(run.model, run.variables, run.images[:shift_images],
                      run.images, max_shift),
        path('shift'), f'translation ({run.config.model_name})'))
    timed('saliency', saliency.plot_saliency, run.model, run.variables,
          run.images[:saliency_images], path('saliency'), stage,
          run.display[:saliency_images], run.info.class_names,
          run.labels[:saliency_images])
    timed('confusion', lambda: confusion.plot_confusion(
        confusion.predict_probs(run.model, run.variables, run.images),
        run.labels, run.display, path('confusion'), run.info.class_names))
    # Field starts from the random initial weights (no dead units).
    timed('top_patches', lambda: top_patches.plot_top_patches(
        run.model, run.variables, run.images, path('top_patches'),
        run.display, patch_units, patch_images,
        receptive_field.field_geometry(run.model, run.init_variables,
                                       run.input_shape)))
  timed('backprop', backprop.plot_backprop, path('backprop'))
  timed('cost', _summary_plot, run, path('cost'))
  with open(os.path.join(out_dir, 'index.json'), 'w') as f:
    json.dump({'workdir': workdir_path, 'step': run.step,
               'model': run.config.model_name,
               'figures': [os.path.basename(p) for p in paths],
               'seconds': timings,
               'total_seconds': round(time.perf_counter() - start, 2)},
              f, indent=1)
  for p in paths:
    print(p)
  return paths


def compare(workdir_a: str, workdir_b: str, out_dir: str,
            labels: Sequence[str] | None = None, *,
            erf_images: int = receptive_field.ERF_IMAGES,
            shift_images: int = 64, num_test: int = 1000,
            max_shift: int = 8) -> list[str]:
  """Two trained runs side by side (e.g. a ResNet and its plain twin):
  trained ERFs per stage, and their translation curves.

  Returns:
    The PNG paths: `receptive_field_compare.png`, `shift_compare.png`.
  """
  with plotting.files_only():
    return _compare(workdir_a, workdir_b, out_dir, labels, erf_images,
                    shift_images, num_test, max_shift)


def _compare(workdir_a, workdir_b, out_dir, labels, erf_images,
             shift_images, num_test, max_shift) -> list[str]:
  runs = [workdir.load_run(w, None, num_test) for w in (workdir_a, workdir_b)]
  labels = list(labels or [r.config.model_name for r in runs])
  if labels[0] == labels[1]:
    labels = [f'{labels[0]}_a', f'{labels[1]}_b']
  images = runs[0].images
  if any(r.images.shape != images.shape for r in runs):
    raise errors.UserError('The two runs see different input shapes; '
                           'compare runs on the same data set and size.')
  paths = [receptive_field.plot_comparison(
      {lab: (r.model, r.variables) for lab, r in zip(labels, runs,
                                                     strict=True)},
      images[:erf_images], os.path.join(out_dir,
                                        'receptive_field_compare.png'))]
  data = {lab: shift.measure(r.model, r.variables, images[:shift_images],
                             images, max_shift)
          for lab, r in zip(labels, runs, strict=True)}
  paths.append(shift.plot_shift_comparison(
      data, os.path.join(out_dir, 'shift_compare.png')))
  for p in paths:
    print(p)
  return paths


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m cnn.visualize.run',
      description='Figures of a trained workdir (or two, with --compare).')
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--compare', default=None,
                      help='a second workdir: draw the two side by side')
  parser.add_argument('--out', default=None, help='output directory')
  args = parser.parse_args(argv)
  try:
    if args.compare:
      compare(args.workdir, args.compare,
              args.out or os.path.join(args.workdir, 'figures'))
    else:
      write_all(None, args.workdir, args.out)
  except errors.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  from cnn.training import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.keep_freed_memory()
  sys.exit(main())
