"""EK100-MQA / video multiple-choice evaluation.

Modules: scoring (option-letter logits), items (EvalItem, answer parsing), samples (JSONL / TFRecord / generic MC
sources), evaluator (batched sharded letter scoring + generation, multi-host gathering), metrics (accuracy, per
source, recognition top-1), report (PNG + HTML), checkpoint (load a model for eval), run (the CLI's pipeline).
"""
