"""Transfer learning: trained weights in, regimes, and the converter.

  from_torch_state_dict(model_name, state_dict) -> {'params', 'batch_stats'}
  load_state_dict_file(path)                    -> {torch name: np.ndarray}
  pretrained.load_pretrained(config, fresh)     -> variables (config.init_from)
  regimes.regime_rules / param_labels / optimizer   (config.transfer)

Imported lazily: the converter needs torch only for `.pth` files.
"""

import importlib

_LAZY = {'from_torch_state_dict': 'torch_convert',
         'load_state_dict_file': 'torch_convert',
         'SUPPORTED': 'torch_convert'}

__all__ = sorted(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(f'cnn.transfer.{_LAZY[name]}'),
                   name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
