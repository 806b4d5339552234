"""Data for the CNN experiments: data sets, train pipelines, eval batches.

Lightweight on purpose: importing this package imports neither TensorFlow nor
tfds (the accelerator machines have neither); only the tf.data pipeline and
tfds data sets import them, when used.

  load_split(name, split, ...)          -> uint8 [N,H,W,C], int32 [N]
  get_dataset_info(name, ...)           -> DatasetInfo
  create_train_source(config.input, seed=..., global_batch_size=...)
                        -> DeviceSource | TfDataSource | StreamingSource
  get_input_info(config.input)          -> DatasetInfo (in memory or streamed)
  uses_streaming(config.input)          -> bool: streamed from disk?
  eval_batches(images, labels, batch_size, ...) -> padded, masked batches
  create_eval_batches(config.input, ...)   -> the same, from a config
  default_augment_config()              -> dict of augmentation options
  normalize(images, mean, std)          -> (x - mean) / std per channel
"""

from __future__ import annotations

from input_pipeline.augment.jax_ops import default_augment_config
from input_pipeline.create import (
                                             TrainSource,
                                             create_eval_batches,
                                             create_train_source,
                                             get_dataset_info,
                                             get_input_info,
                                             uses_streaming,
)
from input_pipeline.errors import DatasetError, InputConfigError
from input_pipeline.pipelines.eval_data import eval_batches, num_eval_batches
from input_pipeline.preprocess import normalize, to_unit_float
from input_pipeline.sources.datasets import DatasetInfo, load_split, local_names

__all__ = [
    'DatasetError',
    'InputConfigError',
    'DatasetInfo',
    'TrainSource',
    'create_eval_batches',
    'create_train_source',
    'default_augment_config',
    'eval_batches',
    'get_dataset_info',
    'get_input_info',
    'load_split',
    'local_names',
    'normalize',
    'num_eval_batches',
    'to_unit_float',
    'uses_streaming',
]
