"""The end-to-end demo, on top of the library and data_prep as a user would run them: data (data_stage), tokenizer,
training and evaluation (train_eval), the HF export check (hf_check); run.py is the command (llavaction-demo)."""
