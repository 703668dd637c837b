"""tf.io's parse spec of the MQA record (llavaction_jax.data.records.FEATURES), for decoding inside tf.data.

Lists parse as dense variable-length vectors (FixedLenSequenceFeature with allow_missing=True), so no sparse
tensors appear.
"""
import tensorflow as tf

from llavaction_jax.data.records import FEATURES

_DTYPES = {"bytes": tf.string, "float": tf.float32, "int": tf.int64}

FEATURE_SPEC = {
    name: (tf.io.FixedLenFeature([], _DTYPES[kind]) if shape == "scalar"
           else tf.io.FixedLenSequenceFeature([], _DTYPES[kind], allow_missing=True))
    for name, (kind, shape) in FEATURES.items()
}
