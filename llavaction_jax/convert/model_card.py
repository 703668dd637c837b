"""README.md (HF model card) for an exported model directory: architecture, token layout, data, licence, results.

Everything in the card is read from the export itself (model config, config.json, tokenizer plan) and, when given,
the training config (data files, steps) and an eval summary.json (llavaction_jax.eval): no hand-written claims.
"""
import json
import math
import os
from typing import Mapping, Optional

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


def _results_section(summary: Mapping, summary_path: str) -> list:
    methods = _methods(summary)
    if not methods:
        return []
    lines = ["## Evaluation", "", f"From `{summary_path}` ({summary.get('num_samples', '?')} questions, chance "
             f"{_pct(summary.get('chance'))}).", "", "| protocol | accuracy |", "| --- | --- |"]
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
    if model_cfg.get("newline_position", "one_token") != "one_token" or model_cfg.get("pool_mode") != "bilinear" \
            or model_cfg.get("action_token"):
        lines.append(f"- **Trained with another layout** (pool {model_cfg.pool_mode}, newline "
                     f"{model_cfg.newline_position}, action token {bool(model_cfg.action_token)}): transformers "
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
              "```", ""]
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
    if eval_summary:
        lines += _results_section(eval_summary, eval_summary_path)
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
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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
