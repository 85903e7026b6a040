"""Data layer: datasets, file formats and device-resident buffers."""

from o2o.data.buffer import MixedSampler, ReplayBuffer
from o2o.data.dataset import Dataset, DatasetError, discounted_returns

__all__ = ["Dataset", "DatasetError", "MixedSampler", "ReplayBuffer", "discounted_returns"]
