"""Data loading: the ``.pt`` utterance dataset, its collate, the bucketed sampler and dummy data."""

from data.dataset import Collate, DataError, EcholancerDataset, load_sample_file, parse_sample
from data.dummy import create_dummy_data_files
from data.sampler import BucketBatchSampler, padding_fraction

__all__ = [
    "BucketBatchSampler",
    "Collate",
    "DataError",
    "EcholancerDataset",
    "create_dummy_data_files",
    "load_sample_file",
    "padding_fraction",
    "parse_sample",
]
