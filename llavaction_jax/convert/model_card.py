"""README.md (HF model card) for an exported model directory: architecture, token layout, data, licence, results.

Everything in the card is read from the export itself (model config, config.json, tokenizer plan) and, when given,
the training config (data files, steps) and eval summaries (llavaction_jax.eval): no hand-written claims.

Two kinds of numbers, never mixed: "Evaluation of this export" is measured ON the exported directory
(the convert CLI's `card` command: llavaction_jax.eval loads it, transformers' layout and all, and the section is
rewritten in place), with the data, question count and frame count named; an eval of the JAX model it was exported from (the
training run's periodic eval, or --eval_summary at export) is shown under its own heading as that model's.
"""
import json
import math
import os
import re
from typing import Mapping, Optional, Sequence

from llavaction_jax.convert.errors import ConvertError, MissingFileError
from llavaction_jax.model import config as model_config_lib

# The video layout transformers' LLaVA-OneVision computes (one image_newline after all frames, bilinear pooling,
# no action token); a model trained with another gets a warning in its card. Unset keys take the model defaults.
HF_LAYOUT = {"newline_position": "one_token", "pool_mode": "bilinear", "action_token": False}
MODEL_DEFAULTS = model_config_lib.model_config()

EXPORT_EVAL_HEADING = "## Evaluation of this export"
SOURCE_EVAL_HEADING = "## The JAX model it was exported from (not this checkpoint)"

LICENSE_ID = "cc-by-nc-4.0"
EPIC_CITATION = ('Damen et al., "Rescaling Egocentric Vision: Collection, Pipeline and Challenges for '
                 'EPIC-KITCHENS-100", IJCV 2022')
LLAVACTION_CITATION = ('Ye, Qi, Mathis & Mathis, 2025, "LLaVAction: evaluating and training multi-modal large '
                       'language models for action recognition" (arXiv 2503.18712), '
                       'https://github.com/AdaptiveMotorControlLab/LLaVAction')
# The three protocols of llavaction_jax.eval.metrics, with the field names the summary uses.
PROTOCOLS = (
    ("generate", "generation + the original LLaVAction parser (the reference protocol: the answer TEXT must match)"),
    ("letters", "option-letter scoring (argmax of the next-token logits of A..E)"),
    ("strict", "strict generation (the generated letter and its text must both be right)"),
)


def _pct(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * float(x):.1f}%"


def _methods(summary: Mapping) -> list:
    """(key, one-line explanation) of each protocol block in an eval summary (any dict with an 'accuracy')."""
    known = dict(PROTOCOLS)
    order = [k for k, _ in PROTOCOLS] + sorted(k for k in summary if k not in known)
    out = []
    for key in order:
        block = summary.get(key)
        if isinstance(block, Mapping) and "accuracy" in block:
            out.append((key, str(block.get("explanation") or known.get(key) or key)))
    return out


def _results_table(summary: Mapping) -> list:
    methods = _methods(summary)
    lines = ["| protocol | accuracy |", "| --- | --- |"]
    lines += [f"| `{key}`: {text} | {_pct(summary[key]['accuracy'])} |" for key, text in methods]
    by_source = {}
    for key, _ in methods:
        for source, v in (summary[key].get("by_source") or {}).items():
            by_source.setdefault(source, {})[key] = v.get("accuracy")
    if by_source:
        keys = [k for k, _ in methods]
        lines += ["", "By distractor source:", "", "| source | " + " | ".join(keys) + " |",
                  "| --- |" + " --- |" * len(keys)]
        for source, accs in sorted(by_source.items()):
            lines.append(f"| {source} | " + " | ".join(_pct(accs.get(k)) for k in keys) + " |")
    return lines + [""]


def _source_eval_section(summary: Mapping, summary_path: str, model_cfg) -> list:
    """The JAX model's eval, labelled as such: it ran in that model's own layout, not through this export."""
    if not _methods(summary):
        return []
    layout = (f"pool {model_cfg.get('pool_mode')}, newline {model_cfg.get('newline_position')}, action token "
              f"{bool(model_cfg.get('action_token'))}")
    return [SOURCE_EVAL_HEADING, "",
            f"From `{summary_path}` ({summary.get('num_samples', '?')} questions, chance "
            f"{_pct(summary.get('chance'))}): llavaction_jax.eval on the JAX model before export ({layout}). "
            "This export is a different model wherever the layouts differ; its own numbers are above.", ""
            ] + _results_table(summary)


def export_eval_section(measured: Optional[Mapping] = None) -> list:
    """The card's section for the export's own accuracy: measured (the convert CLI's `card` command) or how to
    measure it.

    measured: {"summary": eval summary.json, "data": data file, "num_frames": frames per clip, "tool": what
    measured it, "date": ISO date}."""
    lines = [EXPORT_EVAL_HEADING, ""]
    if not measured:
        return lines + [
            "Not measured yet. `python -m llavaction_jax.convert card --src DIR --data MQA.jsonl --video_root "
            "VIDEOS` evaluates this directory with llavaction_jax.eval and writes the numbers here.", ""]
    summary = measured["summary"]
    lines += [
        f"Measured on this directory by {measured['tool']} on `{measured['data']}` "
        f"({summary.get('num_samples', '?')} questions, chance {_pct(summary.get('chance'))}), "
        f"{measured['num_frames']} frames per clip at the segment midpoints (this export's "
        f"`video_preprocessor_config.json`), {measured['date']}.", ""]
    lines += _results_table(summary)
    lines += ["lmms-eval gets the same numbers when its clips hold exactly these frames: "
              "`python -m llavaction_jax.eval.export_lmms_eval --mqa MQA.jsonl --video_root VIDEOS --hf_export DIR "
              "--out TASK` writes the task and prints the `lmms-eval --model llava_hf --force_simple ...` command.",
              ""]
    return lines


def replace_section(card: str, heading: str, section: Sequence[str]) -> str:
    """`card` with the `heading` section (up to the next '## ' heading) replaced by `section`."""
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if not pattern.search(card):
        raise ConvertError(f"the model card has no {heading!r} section (not written by llavaction_jax.convert?)")
    return pattern.sub(lambda m: "\n".join(section) + "\n", card, count=1)


def render(model_cfg, hf_config: Mapping, plan=None, train_config: Optional[Mapping] = None,
           eval_summary: Optional[Mapping] = None, eval_summary_path: str = "summary.json",
           num_frames: Optional[int] = None, dropped_params=(), num_params: Optional[int] = None) -> str:
    t, v = model_cfg.text, model_cfg.vision
    data = (train_config or {}).get("data") or {}
    frames = int(num_frames or data.get("num_frames") or 16)
    side = v.image_size // v.patch_size
    pooled = math.ceil(side / 2)
    n_video = frames * pooled * pooled + 1
    lines = [
        "---",
        f"license: {LICENSE_ID}",
        "library_name: transformers",
        "pipeline_tag: video-text-to-text",
        "tags: [llava-onevision, llavaction, epic-kitchens, action-recognition, video, multiple-choice]",
        "---",
        "",
        "# LLaVAction (llavaction_jax export)",
        "",
        "A video LLM for egocentric action recognition posed as multiple-choice QA (EK100-MQA), trained with "
        "llavaction_jax (a JAX/Flax reimplementation of LLaVAction) and exported as a "
        "transformers `LlavaOnevisionForConditionalGeneration` directory. It loads offline with "
        "`LlavaOnevisionForConditionalGeneration.from_pretrained(dir)` and `AutoProcessor.from_pretrained(dir)` "
        "(the video processor needs `torchvision`).",
        "",
        "## Architecture",
        "",
        f"- Vision: SigLIP, {v.num_layers} layers, hidden {v.hidden_size}, {v.num_heads} heads, MLP "
        f"{v.intermediate_size}, patch {v.patch_size}, image {v.image_size}x{v.image_size} -> {side}x{side} = "
        f"{side * side} patches, features of the last layer run without post-layernorm "
        f"(`vision_feature_layer` -1, `vision_feature_select_strategy` \"full\").",
        f"- Projector: Linear({v.hidden_size} -> {t.hidden_size}), GELU, Linear({t.hidden_size} -> "
        f"{t.hidden_size}).",
        f"- Language model: Qwen2, {t.num_layers} layers, hidden {t.hidden_size}, {t.num_heads} query / "
        f"{t.num_kv_heads} key-value heads of {t.head_dim}, MLP {t.intermediate_size}, vocab "
        f"{hf_config['text_config']['vocab_size']}, RoPE theta {t.rope_theta:g}, "
        f"{'tied' if t.tie_word_embeddings else 'untied'} embeddings.",
        (f"- {num_params / 1e6:.2f} M parameters; " if num_params else "- Weights ") +
        f"in `{hf_config.get('dtype', 'float32')}`.",
        "",
        "## Token layout",
        "",
        f"Each frame: SigLIP -> projector -> bilinear 2x pooling to {pooled}x{pooled}; one `image_newline` after "
        f"ALL frames (LLaVA-OneVision's layout). With {frames} frames a clip takes {frames} x {pooled * pooled} + 1 = "
        f"**{n_video}** `<video>` tokens (the processor expands one `<video>` placeholder to that many).",
        "",
        f"- `<video>` = id {hf_config['video_token_index']}, `<image>` = id {hf_config['image_token_index']}.",
        "- Prompt format (ChatML, `chat_template.jinja`): "
        "`<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n<video>\\n{question}<|im_end|>\\n"
        "<|im_start|>assistant\\n`; generation stops at `<|im_end|>`.",
        "- Pixels: squash-resize to the vision size (bicubic, no crop), x/255, mean = std = 0.5.",
    ]
    layout = {k: model_cfg.get(k, MODEL_DEFAULTS[k]) for k in HF_LAYOUT}     # unset keys: the model's defaults
    if layout != HF_LAYOUT:
        lines.append(f"- **Trained with another layout** (pool {layout['pool_mode']}, newline "
                     f"{layout['newline_position']}, action token {bool(layout['action_token'])}): transformers "
                     "computes the layout above, so its outputs differ from the JAX model's.")
    if dropped_params:
        lines.append(f"- Not in this format (dropped): {', '.join(dropped_params)}.")
    if plan is not None and plan.added_tokens:
        lines.append(f"- Added to the tokenizer at export: {', '.join(f'`{t}`' for t in plan.added_tokens)} (rows "
                     "of the embedding and LM head initialised to the mean row).")
    lines += ["", "## Usage", "", "```python",
              "from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration",
              "model = LlavaOnevisionForConditionalGeneration.from_pretrained(DIR)",
              "processor = AutoProcessor.from_pretrained(DIR)",
              "messages = [{\"role\": \"user\", \"content\": [{\"type\": \"video\"}, {\"type\": \"text\", "
              "\"text\": question}]}]",
              "prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)",
              f"inputs = processor(text=prompt, videos=[frames], return_tensors=\"pt\")   # frames: "
              f"[{frames}, H, W, 3] uint8",
              "out = model.generate(**inputs, max_new_tokens=32, do_sample=False)",
              "```", "",
              f"`frames` are the clip's {frames} segment midpoints: cut [start, stop] into {frames} equal segments "
              "and take the middle frame of each (LLaVAction's sampler; `video_preprocessor_config.json` names it: "
              f"`num_frames` {frames}, `llavaction.frame_sampling` \"segment_midpoints\"). The processor takes "
              f"{frames} frames of what it is given (`do_sample_frames`, `arange(N) * T // N`): given exactly "
              f"those {frames} frames it keeps them all; given a longer clip it would take segment starts, which "
              "the model did not see.",
              "",
              "A video path works the same way: `processor.apply_chat_template([{\"role\": \"user\", \"content\": "
              "[{\"type\": \"video\", \"path\": clip}, {\"type\": \"text\", \"text\": question}]}], "
              "add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors=\"pt\")`, where `clip` "
              f"holds exactly the {frames} frames (`python -m llavaction_jax.eval.export_lmms_eval --hf_export DIR` "
              "writes such clips, losslessly). transformers decodes paths with `torchcodec` only: without it this "
              "raises ImportError asking for `pip install torchcodec` (decode the frames yourself as above).",
              ""]
    lines += ["## Training data", ""]
    files = [str(data.get(k)) for k in ("train_files", "mixture") if data.get(k)]
    if files:
        lines.append(f"Trained by llavaction_jax on: {'; '.join(files)}"
                     + (f" ({train_config['train']['num_steps']} steps)." if (train_config or {}).get("train", {}
                                                                                ).get("num_steps") else "."))
    lines += [
        "Questions are EPIC-KITCHENS-100 multiple-choice action questions (EK100-MQA): the options are action "
        "narrations / labels of the EPIC-KITCHENS-100 annotations, the distractors come from action-recognition "
        "models' top-k predictions or at random.",
        "",
        f"**EPIC-KITCHENS-100** annotations: {EPIC_CITATION}. Licensed CC BY-NC 4.0 (non-commercial use only); "
        "keep this credit with any derived data or model.",
        "",
    ]
    lines += export_eval_section(None)
    if eval_summary:
        lines += _source_eval_section(eval_summary, eval_summary_path, model_cfg)
    lines += [
        "## Licence",
        "",
        "CC BY-NC 4.0 (`cc-by-nc-4.0`): the model is trained on EPIC-KITCHENS-100 annotations, which are CC BY-NC "
        "4.0, so it is for non-commercial use. The llavaction_jax code is Apache-2.0. Base weights, if any, keep "
        "their own licences.",
        "",
        "## Citation",
        "",
        f"- {LLAVACTION_CITATION}",
        f"- {EPIC_CITATION}",
        "",
    ]
    return "\n".join(lines)


def load_summary(path: Optional[str]):
    """The eval summary.json at `path` (None: none); a missing or broken file is a user error naming it."""
    if not path:
        return None
    if not os.path.isfile(path):
        raise MissingFileError("no eval summary here", path, "the summary.json llavaction_jax.eval wrote")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"invalid JSON ({e})", path, "the summary.json llavaction_jax.eval wrote") from None


def latest_eval_summary(workdir: str) -> Optional[str]:
    """The newest `<workdir>/eval/step_N/summary.json` the trainer's periodic eval wrote, if any."""
    root = os.path.join(workdir, "eval")
    if not os.path.isdir(root):
        return None
    steps = []
    for name in os.listdir(root):
        if name.startswith("step_") and name[5:].isdigit() and os.path.isfile(os.path.join(root, name,
                                                                                          "summary.json")):
            steps.append(int(name[5:]))
    return os.path.join(root, f"step_{max(steps)}", "summary.json") if steps else None
