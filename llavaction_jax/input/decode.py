"""Record and frame decoding as TensorFlow ops: a tf.train.Example (llavaction_jax.input.features.FEATURE_SPEC) -> tensors,
a JPEG -> uint8 [S, S, 3], resized only if it is not S x S.
"""
import tensorflow as tf

from llavaction_jax.input.features import FEATURE_SPEC

# tf.data only needs the CPU; keep TensorFlow off any GPU so it does not reserve memory JAX needs.
try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:   # TF already initialised its devices elsewhere in this process
    pass


# The one JPEG decode of every path (training, periodic eval, the eval CLI, predict on TFRecords): TF's decoder
# with an explicit DCT (the default, INTEGER_FAST on most builds, differs from PIL / libjpeg's accurate DCT in most
# pixels by a level or two), so train and eval see bit-identical pixels.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"


def decode_frame_tf(jpeg, image_size):
    """One JPEG (scalar string tensor) -> uint8 [S, S, 3]; resized (bicubic, antialiased) only if not S x S."""
    img = tf.io.decode_jpeg(jpeg, channels=3, dct_method=JPEG_DCT_METHOD)
    shape = tf.shape(img)

    def resized():
        out = tf.image.resize(img, [image_size, image_size], method="bicubic", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

    same = tf.logical_and(tf.equal(shape[0], image_size), tf.equal(shape[1], image_size))
    img = tf.cond(same, lambda: img, resized)
    return tf.ensure_shape(img, [image_size, image_size, 3])


_DECODE_FRAMES_FNS = {}


def decode_jpeg_frames(jpegs, image_size):
    """list of JPEG bytes -> uint8 [N, S, S, 3] with exactly the training decode (eval sources use this)."""
    fn = _DECODE_FRAMES_FNS.get(int(image_size))
    if fn is None:
        fn = _DECODE_FRAMES_FNS[int(image_size)] = tf.function(
            lambda x: tf.map_fn(lambda j: decode_frame_tf(j, int(image_size)), x, fn_output_signature=tf.uint8),
            input_signature=[tf.TensorSpec([None], tf.string)])
    return fn(tf.constant(list(jpegs), tf.string)).numpy()


def make_decode_fn(num_frames, image_size):
    """raw tf.train.Example bytes -> dict of tensors; frames decoded to uint8 [F, S, S, 3] (zeros if text-only)."""
    def decode_frame(jpeg):
        return decode_frame_tf(jpeg, image_size)

    def decode(raw):
        ex = tf.io.parse_single_example(raw, FEATURE_SPEC)
        jpegs = ex["frames"]
        n = tf.shape(jpegs)[0]

        def video():
            check = tf.debugging.Assert(tf.equal(n, num_frames), [
                "sample", ex["id"], "has", n, f"frames; config.data.num_frames={num_frames}"])
            with tf.control_dependencies([check]):
                return tf.map_fn(decode_frame, jpegs, fn_output_signature=tf.uint8)

        def text_only():   # never looked at: a text-only row has no video slots
            return tf.zeros([num_frames, image_size, image_size, 3], tf.uint8)

        pixels = tf.cond(n > 0, video, text_only)
        return {
            "id": ex["id"],
            "sample_json": ex["sample_json"],
            "has_video": n > 0,
            "frames": tf.ensure_shape(pixels, [num_frames, image_size, image_size, 3]),
            "actions": tf.cast(tf.stack([ex["verb_class"], ex["noun_class"], ex["action_id"]]), tf.int32),
        }
    return decode
