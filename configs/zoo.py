"""Any registered model on the offline Fashion-MNIST, for a quick comparison.

    python main.py --config=configs/zoo.py:resnet20 --workdir=runs/resnet20
    python main.py --config=configs/zoo.py:plain20 --workdir=runs/plain20 \
        --config.num_epochs=1
    python main.py --config=configs/zoo.py:resnet20,runlocal \
        --workdir=/tmp/runlocal/resnet20

The argument after ':' is a registry name (`python -m cnn.summary --list`),
resnet20 when none is given; `,runlocal` shrinks the run to seconds
(`default.shrink`). `config.model` holds every option of that model's
backbone, so `--config.model.<option>=...` works and a wrong option lists
the valid ones. Images are resized up when the model needs more than 28x28
pixels.
"""

import ml_collections

from cnn.common import errors
from cnn.models import registry
from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  model_name, runlocal = default.parse_arg(arg, __file__, 'a model name')
  model_name = model_name or 'resnet20'
  try:
    spec = registry.get_spec(model_name)
  except errors.UserError as e:  # one error line from main.py, not a trace.
    raise default.ConfigArgError(
        f"{e} (configs/zoo.py:ARG: a model name, 'runlocal' or both, "
        'comma-separated.)') from None
  config = default.get_config()
  config.model_name = model_name
  config.model = ml_collections.ConfigDict(
      registry.backbone_options(model_name))
  # Fashion-MNIST is 28x28; models with a larger minimum get resized input.
  config.input.image_size = 0 if spec.min_input_size <= 28 else max(
      32, spec.min_input_size)
  config.num_epochs = 10.0
  config.optimizer.learning_rate = 2e-3
  return default.shrink(config) if runlocal else config
