"""EK100-MQA / video multiple-choice evaluation.

Modules: scoring (option-letter logits), items (EvalItem, answer parsing), samples (JSONL / TFRecord / generic MC
sources), evaluator (batched sharded letter scoring + generation, multi-host gathering), metrics (accuracy, per
source, recognition top-k), report (PNG + HTML), checkpoint (load a model for eval), run (evaluate a source and
write its files), benchmarks (the registry of named benchmarks that the trainer's config.evals and the CLI run).
"""
