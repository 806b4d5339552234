"""The figure standard: one style, one `save`, for every committed picture.

Every figure of the project (`cnn.experiments.analysis`, `cnn.visualize`,
the probes, the scripts) is made with `figure(...)` and written with
`save(fig, path, data)`:

  style     font sizes readable at 100 % zoom (10-12 pt at 150 dpi), the
            Okabe-Ito colour-blind-safe palette, a light grid, and
            `constrained` layout so titles never sit on each other;
  save      the PNG at `DPI` (150: a 8-inch figure is 1,200 px wide), a
            vector copy beside it (`.pdf`) for papers, and a `.json` of the
            numbers drawn; the figure is closed and returned (a notebook
            shows it as a cell's value, nothing is kept open);
  checks    `overlapping_text(fig)` lists pairs of text boxes that overlap
            after a draw, `text_outside(fig)` texts cut off by the figure's
            edge (the tests call both on every figure function).

Importing this module chooses no matplotlib backend: notebooks draw inline,
and entry points that only write files choose one (`files_only()`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import os
import tempfile
from typing import Any, Iterator, Sequence

import matplotlib
import numpy as np
from matplotlib import figure as mpl_figure

DPI = 150
# Widths in inches: one panel, and the multi-panel figures (>= 1,200 px).
SINGLE_WIDTH, WIDE_WIDTH = 6.4, 8.0
# Okabe & Ito (2008): distinguishable with every common colour-vision
# deficiency, and in grey.
PALETTE = ('#0072B2', '#D55E00', '#009E73', '#CC79A7', '#E69F00',
           '#56B4E9', '#F0E442', '#000000')
STYLE = {
    'font.size': 10,
    'axes.titlesize': 11,
    'axes.labelsize': 10,
    'xtick.labelsize': 9,
    'ytick.labelsize': 9,
    'legend.fontsize': 9,
    'figure.titlesize': 12,
    'axes.grid': True,
    'grid.alpha': 0.3,
    'grid.linewidth': 0.6,
    'axes.spines.top': False,
    'axes.spines.right': False,
    'axes.prop_cycle': matplotlib.cycler(color=PALETTE),
    'image.cmap': 'viridis',
    'savefig.dpi': DPI,
    'figure.dpi': DPI,
    'lines.linewidth': 1.6,
}
# Vector formats written beside each PNG.
# Vector formats written beside each PNG; the environment variable
# CNN_FIGURE_VECTOR_FORMATS (comma list, '' for none) overrides: the test
# suite draws hundreds of figures and checks the PDF in one test.
VECTOR_FORMATS = tuple(f for f in os.environ.get(
    'CNN_FIGURE_VECTOR_FORMATS', 'pdf').split(',') if f)


class Figure(mpl_figure.Figure):
  """A bare matplotlib Figure that shows itself as a PNG in Jupyter or
  IPython whatever the backend (none is needed: a notebook that never
  imported pyplot still shows it as a cell's value or via `display`)."""

  def draw(self, renderer):
    # Ticks and grid lines are made at the first draw: in the style too.
    with matplotlib.rc_context(STYLE):
      super().draw(renderer)

  def _repr_png_(self) -> bytes:
    buf = io.BytesIO()
    with matplotlib.rc_context(STYLE):
      self.savefig(buf, format='png', dpi=DPI)
    return buf.getvalue()


def figure(nrows: int = 1, ncols: int = 1, *, width: float | None = None,
           height: float | None = None, **subplot_kw):
  """(fig, axes) in the project style with constrained layout.

  Args:
    nrows, ncols: the panel grid (`axes` is squeezed as `plt.subplots`
      squeezes it).
    width: inches; default `SINGLE_WIDTH` for one panel, `WIDE_WIDTH` (or
      more, 3.2 in a column) for several.
    height: inches; default 3.6 a row (4.2 for a single panel).
    **subplot_kw: passed to `Figure.subplots` (sharex, sharey, ...).
  """
  if width is None:
    width = (SINGLE_WIDTH if nrows * ncols == 1
             else max(WIDE_WIDTH, 3.2 * ncols))
  if height is None:
    height = 4.2 if nrows * ncols == 1 else 3.6 * nrows
  with matplotlib.rc_context(STYLE):
    fig = Figure(figsize=(width, height), layout='constrained')
    axes = fig.subplots(nrows, ncols, **subplot_kw)
  return fig, axes


@contextlib.contextmanager
def style() -> Iterator[None]:
  """The project's rcParams for code that draws with pyplot."""
  with matplotlib.rc_context(STYLE):
    yield


def styled(func):
  """Decorator for figure functions: `func` runs inside `style()`, so the
  titles, labels and legends it makes take the project's sizes (matplotlib
  reads them from rcParams when each text is made)."""
  @functools.wraps(func)
  def wrapper(*args, **kwargs):
    with style():
      return func(*args, **kwargs)
  return wrapper


def jsonable(value: Any, digits: int | None = None) -> Any:
  """`value` as JSON data: arrays (numpy or jax) as lists, non-finite
  floats as null, floats rounded to `digits` decimals when given."""
  if isinstance(value, dict):
    return {str(k): jsonable(v, digits) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v, digits) for v in value]
  if isinstance(value, np.ndarray) or hasattr(value, '__jax_array__') or (
      type(value).__module__.startswith('jax')):
    return jsonable(np.asarray(value).tolist(), digits)
  if isinstance(value, (np.floating, float)):
    v = float(value)
    if not np.isfinite(v):
      return None
    return v if digits is None else round(v, digits)
  if isinstance(value, (np.integer, np.bool_)):
    return value.item()
  return value


def _write_atomically(path: str, write) -> None:
  """`write(file)` into a temporary file beside `path`, then renames it: a
  reader sees the old file or the whole new one, never half of one."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.',
                             prefix='.tmp-', suffix=os.path.splitext(path)[1])
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
    os.chmod(tmp, 0o644)  # mkstemp's 0o600 would hide it from others.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def save(fig, path: str | None, data: dict[str, Any] | None = None, *,
         vector: bool = True, digits: int | None = None):
  """Writes `fig` as PNG (`DPI`), vector copies and the drawn numbers.

  Args:
    fig: a Figure (from `figure` or pyplot).
    path: 'dir/name.png'; None writes nothing (a notebook only shows it).
    data: the numbers the figure draws, written as 'dir/name.json'.
    vector: also write 'dir/name.pdf' (`VECTOR_FORMATS`).
    digits: round the JSON's floats to this many decimals (None: as is).

  Every file is written atomically (a temporary file renamed), so a reader
  never sees half a figure.

  Returns:
    `fig`, closed if it came from pyplot (no open-figure growth).
  """
  if path is not None:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    stem = os.path.splitext(path)[0]
    with matplotlib.rc_context(STYLE):
      _write_atomically(path, lambda f: fig.savefig(f, format='png', dpi=DPI))
      for fmt in VECTOR_FORMATS if vector else ():
        # No creation date: a redrawn, unchanged figure is the same file.
        _write_atomically(f'{stem}.{fmt}', lambda f, fmt=fmt: fig.savefig(
            f, format=fmt,
            metadata={'CreationDate': None} if fmt == 'pdf' else None))
    if data is not None:
      text = json.dumps(jsonable(data, digits), indent=1).encode()
      _write_atomically(f'{stem}.json', lambda f: f.write(text))
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if plt.fignum_exists(getattr(fig, 'number', -1)):
    plt.close(fig)
  return fig


@contextlib.contextmanager
def files_only() -> Iterator[None]:
  """For entry points that only write files: the Agg backend inside."""
  previous = matplotlib.get_backend()
  matplotlib.use('Agg')
  try:
    yield
  finally:
    matplotlib.use(previous)


def text_boxes(fig) -> list[tuple[Any, Any]]:
  """(Text artist, its window extent) of every visible, non-empty text of
  `fig` after a draw: titles, labels, tick labels, legends, annotations."""
  if not hasattr(fig.canvas, 'get_renderer'):  # a bare Figure: Agg canvas.
    from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
    backend_agg.FigureCanvasAgg(fig)
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  # An axis keeps tick objects for locations outside the view, labelled and
  # "visible" but not drawn: only the ticks it draws count.
  undrawn = set()
  for ax in fig.axes:
    for axis in (getattr(ax, a) for a in ('xaxis', 'yaxis', 'zaxis')
                 if hasattr(ax, a)):
      drawn = set(axis._update_ticks())  # pylint: disable=protected-access
      for tick in [*axis.majorTicks, *axis.minorTicks]:
        if tick not in drawn:
          undrawn |= {id(tick.label1), id(tick.label2)}
  boxes = []
  for artist in fig.findobj(matplotlib.text.Text):
    if (not artist.get_visible() or not artist.get_text().strip()
        or id(artist) in undrawn):
      continue
    if artist.axes is not None and not artist.axes.get_visible():
      continue
    boxes.append((artist, artist.get_window_extent(renderer)))
  return boxes


def overlapping_text(fig, tolerance: float = 1.0) -> list[tuple[str, str]]:
  """Pairs of texts of `fig` whose boxes overlap by more than `tolerance`
  pixels in both directions (the figure standard allows none)."""
  out = []
  for (a, box_a), (b, box_b) in itertools.combinations(text_boxes(fig), 2):
    dx = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
    dy = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
    if dx > tolerance and dy > tolerance:
      out.append((a.get_text(), b.get_text()))
  return out


def text_outside(fig, tolerance: float = 1.0) -> list[str]:
  """Texts of `fig` that stick out of the figure by more than `tolerance`
  pixels (cut off in the saved image)."""
  width, height = fig.bbox.width, fig.bbox.height
  return [a.get_text() for a, box in text_boxes(fig)
          if box.x0 < -tolerance or box.y0 < -tolerance
          or box.x1 > width + tolerance or box.y1 > height + tolerance]


def band(ax, x: Sequence[float], mean: Sequence[float],
         std: Sequence[float], **line_kw):
  """A mean line with a ± std band under it (seed spread of a curve)."""
  x, mean, std = (np.asarray(v, float) for v in (x, mean, std))
  (line,) = ax.plot(x, mean, **line_kw)
  ax.fill_between(x, mean - std, mean + std, color=line.get_color(),
                  alpha=0.2, linewidth=0)
  return line


def interval95(values: Sequence[float]) -> tuple[float, float]:
  """(mean, half-width of the 95 % t-interval) over seeds; half-width NaN
  for fewer than 2 values."""
  values = np.asarray([v for v in values if np.isfinite(v)], float)
  if values.size == 0:
    return float('nan'), float('nan')
  if values.size < 2:
    return float(values.mean()), float('nan')
  from scipy import stats  # pylint: disable=g-import-not-at-top
  half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(
      values.size)
  return float(values.mean()), float(half)
