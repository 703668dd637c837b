"""The demo's model stages: a tiny byte-level BPE tokenizer on the demo's text, llavaction_jax.train on the CPU (a
short-text letter-binding warm-up, then the video run from it), and the EK100-MQA evaluation of the result."""
import os

from llavaction_demo import data_stage
from llavaction_jax.eval import samples
from llavaction_jax.eval.run import evaluate_source
from llavaction_jax.input.tokenizer import train_tiny_tokenizer
from llavaction_jax.train.loop import train


def train_tokenizer(config, data: dict, workdir: str):
    out = os.path.join(workdir, "tokenizer")
    jsonls = [data["train"]["jsonl"], data["eval"]["jsonl"]] + [data[k]["jsonl"] for k in ("text_mcq", "binding")
                                                                if k in data]
    return train_tiny_tokenizer(data_stage.tokenizer_texts(jsonls), out,
                                vocab_size=int(config.model.text.vocab_size),
                                video_token_id=int(config.model.video_token_id)), out


def train_model(config, data: dict, tokenizer_dir: str, workdir: str, mesh):
    """llavaction_jax.train on the demo's TFRecords; returns (nnx model, train summary)."""
    binding = None
    if "binding" in data:
        binding = train_binding(config, data, tokenizer_dir, workdir, mesh)
        config.train.init_from = binding["workdir"]
    config.data.train_files = data["train"]["records"]
    if "text_mcq" in data:
        w = float(config.demo.text_mcq_weight)
        config.data.train_files += "," + data["text_mcq"]["records"]
        config.data.mixture_weights = (1.0 - w, w)
    config.data.tokenizer_path = tokenizer_dir
    summary = train(config, os.path.join(workdir, "train"), mesh=mesh)
    model = summary["setup"].merge(summary["state"]["params"])
    summary["binding"] = binding
    return model, summary


def train_binding(config, data: dict, tokenizer_dir: str, workdir: str, mesh) -> dict:
    """The letter-binding warm-up: config.demo.binding_steps on the short text-only MCQ questions alone.

    Why: trained on video questions (with or without the full-prompt text twins mixed in) the tiny model names the
    action right but its letter stays at chance: the LM loss on the letter sits at log(5) until an in-context
    lookup (find the option that matches, copy the letter before it) forms, and in the video run's budget it never
    does. On short text-only questions at a higher rate it forms in a few hundred steps; the video run then starts
    from these weights and only has to route what it reads from the video into that lookup. Returns the warm-up's
    workdir (the video run's init_from), its step count and its final loss.
    """
    d = config.demo
    warm = config.copy_and_resolve_references()
    warm.data.train_files = data["binding"]["records"]
    warm.data.mixture_weights = ()
    warm.data.max_length = int(d.binding_max_length)
    warm.data.length_buckets = (int(d.binding_max_length),)
    warm.data.global_batch_size = int(d.binding_batch_size)
    # Text only: no frames, so no vision tower and no pixel transfer (the same losses; 5.65 instead of 5.0 steps/s).
    warm.data.num_frames = 0
    warm.data.tokenizer_path = tokenizer_dir
    warm.optim.lr = float(d.binding_lr)
    warm.optim.b2 = float(d.binding_b2)
    warm.train.num_steps = int(d.binding_steps)
    warm.train.action_loss_weight = 0.0
    out = os.path.join(workdir, "train_binding")
    summary = train(warm, out, mesh=mesh)
    return {"workdir": out, "final_step": summary["final_step"], "final_loss": summary["losses"][-1]}


def evaluate(config, model, tok, mesh, data: dict, workdir: str, verb_names, noun_names=None, step=None,
             quiet: bool = False):
    source = samples.tfrecord_source(data["eval"]["records"], int(config.data.num_frames),
                                     int(config.model.vision.image_size))
    provenance = {"checkpoint": os.path.join(workdir, "train"), "step": step, "data": data["eval"]["records"],
                  "config": config.to_json_best_effort(sort_keys=True)}
    return evaluate_source(model, tok, config, mesh, source, out_dir=os.path.join(workdir, "eval"),
                           verb_names=verb_names, noun_names=noun_names, provenance=provenance,
                           progress=not quiet, title="Demo: EK100-MQA on held-out synthetic clips")
