"""The data formats the library shares with the offline tools (llavaction-prep): LLaVAction's prompts, the MQA record
(tf.train.Example) and TFRecord files, the EK100 annotations and label space, video reading and writing, and the
EK100 sample CSVs (assets/). No JAX, no TensorFlow: the offline tools build on these without loading either."""
