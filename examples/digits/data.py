"""The UCI handwritten digits data set (scikit-learn's ``load_digits``) as a fixed train/test split.

1,797 real 8x8 grey-scale images of the digits 0-9 (about 180 per class), pixel values 0..16.
``load_digits_split()`` scales them to [0, 1] float32, shapes them ``[N, 1, 8, 8]`` (NCHW) and
splits them with a seeded, stratified ``train_test_split`` (25 % test by default: 1,347 train /
450 test images). The data ship with scikit-learn, so no download is needed. The same arguments
always give the same split.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

__all__ = ["load_digits_split"]


def load_digits_split(test_size: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(x_train, y_train, x_test, y_test)``.

    ``x_*``: float32 ``[N, 1, 8, 8]`` in [0, 1] (raw pixel / 16); ``y_*``: int64 ``[N]`` in 0..9.
    Stratified by class, shuffled with ``random_state=seed``.
    """
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return (
        np.ascontiguousarray(x_train),
        np.ascontiguousarray(y_train),
        np.ascontiguousarray(x_test),
        np.ascontiguousarray(y_test),
    )
