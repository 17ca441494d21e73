"""Data: upstream loaders → sessions → filters → splits → augmentation → one prepared dataset."""

from intentrec.data.batch import SessionBatch
from intentrec.data.dataset import ExampleSet, PreparedDataset

__all__ = ["ExampleSet", "PreparedDataset", "SessionBatch"]
