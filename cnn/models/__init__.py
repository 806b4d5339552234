"""Model families; importing this package registers every model name.

Each family lives in one module of this package and calls
`registry.register(...)` at import time; every module here is imported, so a
new family needs no edit of this file.
"""

import importlib
import pkgutil

from cnn.models.registry import create_model, get_spec, list_models  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
  if _module.name not in ('base', 'registry'):
    importlib.import_module(f'{__name__}.{_module.name}')
