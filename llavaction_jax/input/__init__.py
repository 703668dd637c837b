"""Input pipeline: tokenizer (tokenizer.py), ChatML prompts and loss masks (chat.py), TFRecord random access
(recordio.py), deterministic mixtures and epoch orders (mixture.py), tf.data -> global jax.Array batches with
exact resume (pipeline.py), synthetic record shards for tests and benchmarks (synthetic.py)."""
