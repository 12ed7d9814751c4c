"""Image bytes to the 28x28 MNIST-style input every model sees, at training and at inference."""

from handwriting_ai.preprocessing.decode import ImageLimits, decode_image
from handwriting_ai.preprocessing.pipeline import (
    Preprocessed,
    PreprocessOptions,
    preprocess_gray,
    preprocess_hash,
)

__all__ = [
    "ImageLimits",
    "PreprocessOptions",
    "Preprocessed",
    "decode_image",
    "preprocess_gray",
    "preprocess_hash",
]
