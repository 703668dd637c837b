"""The non-weight files of an HF LlavaOnevision model directory: tokenizer, chat template, processor configs.

`plan_tokenizer` decides the image/video token ids: `<video>` / `<image>` are looked up in the tokenizer and added
as special tokens when missing (as transformers' own LLaVA-OneVision conversion does), never aliased to an id that
already means something else (the old export put `<image>` on id video-1, `<|im_end|>` in the tiny tokenizer).
New ids past the model's embedding rows grow the vocabulary: `pad_vocab` appends rows to the input embedding and
the LM head whose values are the mean of the existing rows, so a new token's logit is the mean of the others and
never the greedy argmax (the exported model generates exactly what ours does).

`write_processor_files` writes what `AutoTokenizer` / `AutoImageProcessor` / `AutoVideoProcessor` /
`AutoProcessor.from_pretrained(dir)` read, configured to match our preprocessing: squash-resize to the vision
tower's size with bicubic resampling (PIL's, as llavaction_jax.data.video.resize_frame), x/255, mean = std = 0.5 (SigLIP);
`num_image_tokens` = (image_size / patch_size)^2 and `vision_feature_select_strategy` = "full", so the processor
expands `<video>` to frames * ceil(side / 2)^2 + 1 tokens, our bilinear + one_token layout.

The video processor config also carries how the model was trained to see a clip (`sampling_config`): the frame
count (`num_frames`, with `do_sample_frames` so that the processor takes exactly that many) and, under
`llavaction`, the sampling rule (segment midpoints), pooling and newline layout. `read_sampling(dir)` reads them
back (llavaction_jax.eval takes its frame count from there). transformers' own sampler takes
`arange(N) * T // N` (segment starts); on a clip of exactly N frames -- what eval.export_lmms_eval writes -- it,
lmms-eval's `linspace(0, T - 1, N)` and our midpoints all pick every frame.
No transformers import: the files are plain JSON / Jinja.
"""
import dataclasses
import json
import os
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np
import tokenizers

from llavaction_jax.input import tokenizer as tok_lib
from llavaction_jax.convert.errors import ConvertError

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = tok_lib.VIDEO
EMBED_KEY = "language_model.model.embed_tokens.weight"
LM_HEAD_KEY = "language_model.lm_head.weight"
PROCESSOR_CLASS = "LlavaOnevisionProcessor"
VIDEO_CONFIG_FILE = "video_preprocessor_config.json"
SAMPLING_KEY = "llavaction"
# llavaction_jax.data.video.segment_frame_ids: the midpoint of each of N equal segments of the clip (LLaVAction's
# utils.get_frame_ids).
SAMPLING_RULE = "segment_midpoints"
# PIL's resample enum: BICUBIC = 3 (llavaction_jax.data.video.resize_frame's default).
PIL_BICUBIC = 3

# ChatML as Qwen2 / LLaVA-NeXT's `qwen_1_5` (llavaction_jax.input.chat): <|im_start|>{role}\n{content}<|im_end|>\n,
# the default system prompt when none is given, and the media placeholders first, then "\n" + the text -- the
# "<image>\n{question}" layout of the LLaVA prompts, with <video> for a clip. Content may be a string or a list of
# {"type": "text" | "image" | "video"} parts (the form `processor.apply_chat_template` passes).
CHAT_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n' + default_system_prompt + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- set ns = namespace(sep='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<image>' }}{%- set ns.sep = '\\n' -%}"
    "{%- elif part['type'] == 'video' -%}{{ '<video>' }}{%- set ns.sep = '\\n' -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ ns.sep + part['text'] }}{%- set ns.sep = '\\n' -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


class UnreadableTokenizer(ConvertError):
    """tokenizer.json exists but the tokenizers library cannot load it."""


@dataclasses.dataclass
class TokenizerPlan:
    """The exported tokenizer and the ids the HF config must name."""
    tokenizer: object                      # tokenizers.Tokenizer, with <image>/<video> present
    image_token_id: int
    video_token_id: int
    vocab_size: int                        # embedding rows of the exported model (>= the model's)
    added_tokens: List[str]
    notes: List[str]
    source: str


def find_tokenizer_file(*dirs: Optional[str]) -> Optional[str]:
    for d in dirs:
        if d and os.path.isfile(os.path.join(d, tok_lib.TOKENIZER_FILE)):
            return os.path.join(d, tok_lib.TOKENIZER_FILE)
        if d and d.endswith(".json") and os.path.isfile(d):
            return d
    return None


def plan_tokenizer(tokenizer_file: str, model_cfg) -> TokenizerPlan:
    """Loads `tokenizer_file`, adds `<video>`/`<image>` if missing and says which ids / vocab size to export."""
    try:
        tok = tokenizers.Tokenizer.from_file(tokenizer_file)
    except Exception as e:       # the Rust side raises a bare Exception for a malformed file
        raise UnreadableTokenizer(f"{tokenizer_file}: not a readable tokenizers file ({e})") from None
    for required in (tok_lib.IM_START, tok_lib.IM_END, tok_lib.ENDOFTEXT):
        if tok.token_to_id(required) is None:
            raise ConvertError(f"{tokenizer_file}: no {required!r} token; the HF export needs a ChatML (Qwen2) "
                             "tokenizer")
    vocab = int(model_cfg.text.vocab_size)
    notes, added = [], []
    model_video = int(model_cfg.video_token_id)
    if tok.token_to_id(VIDEO_TOKEN) is None and 0 <= model_video < tok.get_vocab_size(with_added_tokens=True):
        raise ConvertError(f"{tokenizer_file}: the model's video_token_id {model_video} is the token "
                         f"{tok.id_to_token(model_video)!r}, and the tokenizer has no {VIDEO_TOKEN!r}; the HF "
                         "processor would splice video features over that token")
    for token in (IMAGE_TOKEN, VIDEO_TOKEN):
        if tok.token_to_id(token) is None:
            tok.add_special_tokens([tokenizers.AddedToken(token, special=True, normalized=False)])
            added.append(token)
    image_id, video_id = tok.token_to_id(IMAGE_TOKEN), tok.token_to_id(VIDEO_TOKEN)
    if added:
        notes.append(f"added {added} to the tokenizer (ids {[tok.token_to_id(t) for t in added]})")
    if 0 <= model_video != video_id:
        notes.append(f"the model was trained with video slots id {model_video}; HF uses {VIDEO_TOKEN!r} = "
                     f"{video_id} (the slots are replaced by video features either way)")
    tok_size = tok.get_vocab_size(with_added_tokens=True)
    new_vocab = max(vocab, tok_size)
    if new_vocab > vocab:
        notes.append(f"vocab grown {vocab} -> {new_vocab} rows for the added tokens (mean-initialised: never "
                     "the greedy choice)")
    return TokenizerPlan(tok, int(image_id), int(video_id), new_vocab, added, notes, tokenizer_file)


def pad_vocab(tensors: Iterable[Tuple[str, np.ndarray]], new_vocab: int) -> Iterator[Tuple[str, np.ndarray]]:
    """Appends mean rows to the embedding / LM head up to `new_vocab` rows (other tensors pass through)."""
    for key, value in tensors:
        if key in (EMBED_KEY, LM_HEAD_KEY) and value.shape[0] < new_vocab:
            extra = new_vocab - value.shape[0]
            mean = value.astype(np.float32).mean(axis=0, keepdims=True).astype(value.dtype)
            value = np.concatenate([value, np.repeat(mean, extra, axis=0)], axis=0)
        yield key, value


def tokenizer_config(plan: TokenizerPlan, model_max_length: int) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": tok_lib.IM_END,
        "pad_token": tok_lib.ENDOFTEXT,
        "unk_token": None,
        "model_max_length": int(model_max_length),
        "padding_side": "left",          # batched HF generation needs left padding
        "clean_up_tokenization_spaces": False,
        "additional_special_tokens": [tok_lib.IM_START, tok_lib.IM_END],
        # Named, as llava-hf tokenizers do: the processor reads tokenizer.image_token / video_token (and their ids).
        "extra_special_tokens": {"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN},
    }


def chat_template(system_prompt: str) -> str:
    """The ChatML template with `system_prompt` as the default system message."""
    return "{%- set default_system_prompt = " + json.dumps(system_prompt) + " -%}" + CHAT_TEMPLATE


def _pixel_config(model_cfg) -> dict:
    s = int(model_cfg.vision.image_size)
    return {
        "do_resize": True, "size": {"height": s, "width": s}, "resample": PIL_BICUBIC, "default_to_square": False,
        "do_center_crop": False, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True,
    }


def sampling_config(model_cfg, num_frames: int, trained_cfg=None) -> dict:
    """The video processor keys that say how the model sees a clip (see the module docstring); `trained_cfg`:
    the config before an allowed layout change (default `model_cfg`)."""
    trained = trained_cfg if trained_cfg is not None else model_cfg
    if int(num_frames) <= 0:
        raise ConvertError(f"num_frames must be positive to export the video processor config, got {num_frames}")
    return {
        "do_sample_frames": True, "num_frames": int(num_frames),
        SAMPLING_KEY: {
            "num_frames": int(num_frames), "frame_sampling": SAMPLING_RULE,
            "pool_mode": "bilinear", "pool_stride": int(model_cfg.get("pool_stride", 2)),
            "newline_position": "one_token", "action_token": False,
            "trained_layout": {"pool_mode": str(trained.get("pool_mode", "bilinear")),
                               "newline_position": str(trained.get("newline_position", "one_token")),
                               "action_token": bool(trained.get("action_token", False))},
        },
    }


def read_sampling(model_dir: str) -> Optional[dict]:
    """The `llavaction` block of an export's video processor config, or None (not an export of ours / older)."""
    path = os.path.join(model_dir, VIDEO_CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            block = json.load(f).get(SAMPLING_KEY)
    except (OSError, ValueError, AttributeError) as e:
        raise ConvertError(f"{path}: not a readable video processor config ({e})") from None
    if block is None:
        return None
    n = block.get("num_frames") if isinstance(block, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ConvertError(f"{path}: {SAMPLING_KEY}.num_frames is {n!r}, expected a positive integer")
    return block


def processor_files(plan: TokenizerPlan, model_cfg, hf_config: dict, system_prompt: str, num_frames: int,
                    trained_cfg=None) -> dict:
    """{file name: JSON-able dict or str} of the processor side of the model directory."""
    side = int(model_cfg.vision.image_size) // int(model_cfg.vision.patch_size)
    image = dict(_pixel_config(model_cfg), image_processor_type="LlavaOnevisionImageProcessor",
                 processor_class=PROCESSOR_CLASS, do_pad=True,
                 image_grid_pinpoints=hf_config["image_grid_pinpoints"])
    video = dict(_pixel_config(model_cfg), video_processor_type="LlavaOnevisionVideoProcessor",
                 processor_class=PROCESSOR_CLASS, **sampling_config(model_cfg, num_frames, trained_cfg))
    processor = {
        "processor_class": PROCESSOR_CLASS, "num_image_tokens": side * side,
        "vision_feature_select_strategy": hf_config["vision_feature_select_strategy"],
        "vision_aspect_ratio": hf_config["vision_aspect_ratio"], "image_token": IMAGE_TOKEN,
        "video_token": VIDEO_TOKEN,
    }
    return {
        "tokenizer_config.json": tokenizer_config(plan, model_cfg.text.max_position_embeddings),
        "chat_template.jinja": chat_template(system_prompt),
        "preprocessor_config.json": image,
        VIDEO_CONFIG_FILE: video,
        "processor_config.json": processor,
    }


def write_processor_files(dst: str, plan: TokenizerPlan, model_cfg, hf_config: dict, system_prompt: str,
                          num_frames: int, trained_cfg=None) -> List[str]:
    """Writes tokenizer.json (with the added tokens) + `processor_files`; returns the names written."""
    plan.tokenizer.save(os.path.join(dst, tok_lib.TOKENIZER_FILE))
    written = [tok_lib.TOKENIZER_FILE]
    for name, content in processor_files(plan, model_cfg, hf_config, system_prompt, num_frames, trained_cfg).items():
        with open(os.path.join(dst, name), "w", encoding="utf-8") as f:
            if isinstance(content, str):
                f.write(content)
            else:
                json.dump(content, f, indent=2, sort_keys=True)
                f.write("\n")
        written.append(name)
    # Stale copies from an older export would shadow the new template / token list.
    for stale in ("chat_template.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt"):
        if os.path.exists(os.path.join(dst, stale)):
            os.remove(os.path.join(dst, stale))
    return written


def apply_to_config(cfg_json: dict, plan: TokenizerPlan) -> dict:
    """config.json with the planned token ids and vocab size (+ the ChatML special ids HF generation uses)."""
    out = dict(cfg_json)
    out["image_token_index"], out["video_token_index"] = plan.image_token_id, plan.video_token_id
    text = dict(out["text_config"])
    text["vocab_size"] = plan.vocab_size
    text["eos_token_id"] = plan.tokenizer.token_to_id(tok_lib.IM_END)
    text["pad_token_id"] = plan.tokenizer.token_to_id(tok_lib.ENDOFTEXT)
    text["bos_token_id"] = plan.tokenizer.token_to_id(tok_lib.ENDOFTEXT)
    out["text_config"] = text
    return out


def generation_config(plan: TokenizerPlan, base: dict) -> dict:
    """Greedy, stop at <|im_end|>, pad with <|endoftext|>: what our eval does (llavaction_jax.eval)."""
    g = dict(base or {})
    im_end, eot = plan.tokenizer.token_to_id(tok_lib.IM_END), plan.tokenizer.token_to_id(tok_lib.ENDOFTEXT)
    g.update(eos_token_id=im_end, pad_token_id=eot, bos_token_id=eot, do_sample=False)
    for k in ("temperature", "top_p", "top_k"):
        g.pop(k, None)
    return g


def make_readable(dst: str) -> None:
    """0644 files / 0755 dirs (safetensors and tempfile-based writers create 0600 files)."""
    for root, dirs, files in os.walk(dst):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    os.chmod(dst, 0o755)
