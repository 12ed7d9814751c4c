"""`percentiles_u8` is numpy's percentile, bit for bit, on every uint8 array.

The preprocessing reads percentiles from a histogram because it is several times faster than
numpy's partition; the models were trained on numpy's values and `preprocess_hash` promises the
output did not change, so equality here is exact, never approximate.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from handwriting_ai.preprocessing.arrays import U8, percentiles_u8

QS = (0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0)
U8_ARRAYS = arrays(np.uint8, st.integers(1, 3000), elements=st.integers(0, 255))
QUANTILES = st.lists(
    st.one_of(st.sampled_from(QS), st.floats(0.0, 100.0, allow_nan=False)), min_size=1, max_size=4
)


@settings(max_examples=400, deadline=None)
@given(values=U8_ARRAYS, qs=QUANTILES)
def test_equals_numpy_on_uint8(values: U8, qs: list[float]) -> None:
    expected = [float(np.percentile(values, q)) for q in qs]
    assert percentiles_u8(values, tuple(qs)) == expected


@settings(max_examples=400, deadline=None)
@given(values=U8_ARRAYS, qs=QUANTILES)
def test_equals_numpy_on_the_same_values_as_float32(values: U8, qs: list[float]) -> None:
    as_float = values.astype(np.float32)
    expected = [float(np.percentile(as_float, q)) for q in qs]
    assert percentiles_u8(values, tuple(qs), np.float32) == expected


def test_median_of_the_border_equals_numpy_median() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 4, 101, 1000):
        for _ in range(200):
            values = rng.integers(0, 256, n).astype(np.uint8)
            assert percentiles_u8(values, (50,)) == [float(np.median(values))]


def test_images_the_pipeline_sees() -> None:
    """Mostly paper with a little ink: the skewed histograms of real uploads."""
    rng = np.random.default_rng(4)
    for _ in range(50):
        image = np.full((112, 112), 245, np.uint8)
        image[rng.integers(0, 112, 300), rng.integers(0, 112, 300)] = rng.integers(0, 60, 300)
        for q in QS:
            assert percentiles_u8(image, (q,)) == [float(np.percentile(image, q))]


@settings(max_examples=100, deadline=None)
@given(
    values=arrays(np.uint8, st.tuples(st.integers(1, 300), st.integers(1, 300))),
    step=st.integers(1, 3),
    qs=QUANTILES,
)
def test_equals_numpy_on_images_and_their_strided_views(
    values: U8, step: int, qs: list[float]
) -> None:
    """Both counting paths (small arrays and OpenCV's histogram from 4096 values up), on
    whole images and on views that are not contiguous."""
    view = values[::step, 1::step]
    for arr in (values, view) if view.size else (values,):
        expected = [float(np.percentile(arr, q)) for q in qs]
        assert percentiles_u8(arr, tuple(qs)) == expected
