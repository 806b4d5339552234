"""See inside a trained network: figures (PNG) and the numbers behind them.

One module per job; each `plot_*` function draws with `cnn.plotting` (the
figure standard), writes `<name>.png`, `<name>.pdf` and `<name>.json` (the
numbers the figure shows) and returns the PNG path:

  kernels.py          classic kernels of `cnn.fundamentals` on real images
  filters.py          first-layer filters, trained beside initialisation
  activations.py      activation maps of one image at every stage
  receptive_field.py  theoretical vs measured (effective) receptive fields:
                      maps averaged over 256 images, Gaussian sigma, profile
  top_patches.py      per stage, the image patches that excite units most
  shift.py            translation equivariance / invariance, consistency
  saliency.py         vanilla gradients and Grad-CAM at a stage
  confusion.py        confusion matrix, most confident mistakes
  backprop.py         which output units one input pixel's gradient sums
  workdir.py          loading a trained workdir (model, variables, images)
  run.py              `write_all(config, workdir)`: every figure of a run

`python main.py --config=... --workdir=... --mode=inspect` calls
`run.write_all`. Everything works on any registered model through the common
interface (`Classifier.features` / `classify`, the `out` dict).
"""
