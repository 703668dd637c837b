"""Input pipeline, one module per stage: tokenizer (tokenizer.py), ChatML prompts and loss masks (chat.py), TFRecord
random access (recordio.py), sources and host shares (sources.py), deterministic mixtures and epoch orders
(mixture.py), the JPEG / record decode (decode.py), the tf.data stream that names or skips bad records
(decoded_stream.py), tokens + truncation (text_stage.py), padding and global arrays (batching.py) or packed rows
(packing.py), the background host thread (prefetch.py), the training iterator with exact resume
(train_iterator.py) and the one-pass eval iterator (eval_iterator.py); synthetic record shards for tests and
benchmarks (synthetic.py)."""
