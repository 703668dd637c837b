"""transformers `LlavaOnevisionForConditionalGeneration` safetensors directories (format "hf"): read and written.

Canonical keys are what transformers 5.24 `save_pretrained` writes (legacy hub layout):
`vision_tower.{embeddings,encoder,post_layernorm}...`, `multi_modal_projector.linear_{1,2}`, `image_newline`,
`language_model.model...`, `language_model.lm_head.weight`. On import the v5 in-memory names
(`model.language_model...`, `model.vision_tower...`, `lm_head.weight`) and the older hub names with a
`vision_tower.vision_model.` prefix are accepted too (see `canonical_key`).
The HF layout is LLaVA-OneVision's: bilinear 2x pooling, ONE image_newline after all frames, no action
token; LLaVAction's action token/heads have no HF counterpart.
A written directory is complete: weights, config.json, generation_config.json, README.md model card and, with
a tokenizer, the tokenizer, chat template and processor configs (see convert/hf_processor.py).
"""
import json
import logging
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

import ml_collections
import numpy as np

from llavaction_jax.convert import common, hf_processor, model_card, safetensors_format as sf, towers
from llavaction_jax.convert.mapping import Rule
from llavaction_jax.convert.errors import MissingFileError, ConvertError

log = logging.getLogger(__name__)

NAME = "hf"
DESCRIPTION = "transformers LlavaOnevision safetensors dir (config.json model_type llava_onevision)"
VISION_PREFIX = "vision_tower."
_VISION_LAYER_RE = re.compile(r"vision_tower\.encoder\.layers\.(\d+)\.")
_ALIASES = [  # applied in order: v5 in-memory names, then the older vision_model-prefixed hub names
    (re.compile(r"^model\.language_model\."), "language_model.model."),
    (re.compile(r"^model\.vision_tower\."), "vision_tower."),
    (re.compile(r"^model\.multi_modal_projector\."), "multi_modal_projector."),
    (re.compile(r"^model\.image_newline$"), "image_newline"),
    (re.compile(r"^lm_head\.weight$"), "language_model.lm_head.weight"),
    (re.compile(r"^vision_tower\.vision_model\."), "vision_tower."),
]
# transformers SiglipVisionConfig / Qwen2Config defaults, for config.json files that omit keys.
_SIGLIP_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        image_size=224, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")


def is_format(config_json: dict) -> bool:
    return config_json.get("model_type") == "llava_onevision"


def canonical_key(key: str) -> str:
    for rx, repl in _ALIASES:
        key = rx.sub(repl, key)
    return key


# The protocol's detect / read_config / load, driven by this module's mapping table (convert/safetensors_format.py).
detect, read_config, load = sf.reader_functions(sys.modules[__name__])


def rules(model_cfg) -> List[Rule]:
    return (towers.vision_rules(VISION_PREFIX)
            + towers.projector_rules("multi_modal_projector.linear_1", "multi_modal_projector.linear_2",
                                     "image_newline")
            + towers.text_rules("language_model.model.", "language_model.lm_head.weight",
                                model_cfg.text.tie_word_embeddings))


# Parameters of our tree that the HF format cannot hold (missing on import, dropped and listed on export).
_WHY = "LLaVAction action token/heads have no counterpart in HF LlavaOnevision checkpoints"
NOT_IN_FORMAT = {p: _WHY for p in ("action/token", "action/verb_head/kernel", "action/noun_head/kernel",
                                   "action/action_head/kernel")}


def expected_unused(model_cfg):
    used = model_cfg.vision.num_layers

    def pred(key: str) -> bool:
        m = _VISION_LAYER_RE.match(key)
        if m:   # layers after vision_feature_layer (e.g. -2) are never run
            return int(m.group(1)) >= used
        return key.startswith("vision_tower.head.")     # SigLIP pooling head: LLaVA-OV uses hidden states
    return pred


def parse_config(cj: dict, shapes: Dict[str, Tuple[int, ...]], model_cfg, config_file: str = "config.json",
                 file_of=None) -> List[str]:
    """Fills `model_cfg` from config.json (the tensors' shapes are not needed); errors name `config_file`."""
    src = config_file
    notes = []
    tc = cj.get("text_config")
    vc = cj.get("vision_config")
    if not isinstance(tc, dict) or not isinstance(vc, dict):
        raise ConvertError(f"{src}: model_type llava_onevision needs 'text_config' and 'vision_config' dicts")
    if tc.get("model_type", "qwen2") != "qwen2":
        raise ConvertError(f"{src}: text_config.model_type={tc.get('model_type')!r}, only 'qwen2' is supported")
    if vc.get("model_type", "siglip_vision_model") not in ("siglip_vision_model", "siglip"):
        raise ConvertError(f"{src}: vision_config.model_type={vc.get('model_type')!r}, only SigLIP is supported")
    strategy = cj.get("vision_feature_select_strategy", "default")
    if strategy != "full":
        raise ConvertError(f"{src}: vision_feature_select_strategy={strategy!r}: only 'full' is supported "
                         "('default' drops the first patch, which SigLIP towers do not want)")
    if cj.get("projector_hidden_act", "gelu") != "gelu" or not cj.get("multimodal_projector_bias", True):
        raise ConvertError(f"{src}: projector must be Linear+bias -> gelu -> Linear+bias")

    t = model_cfg.text
    t.vocab_size = int(tc.get("vocab_size", 151936))
    t.hidden_size = int(tc.get("hidden_size", 4096))
    t.intermediate_size = int(tc.get("intermediate_size", 22016))
    t.num_layers = int(tc.get("num_hidden_layers", 32))
    t.num_heads = int(tc.get("num_attention_heads", 32))
    t.num_kv_heads = int(tc.get("num_key_value_heads") or t.num_heads)
    t.head_dim = int(tc.get("head_dim") or t.hidden_size // t.num_heads)
    t.rms_norm_eps = float(tc.get("rms_norm_eps", 1e-6))
    t.max_position_embeddings = int(tc.get("max_position_embeddings", 32768))
    rope = tc.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or tc.get("rope_scaling"):
        raise ConvertError(f"{src}: text_config rope_type={rope.get('rope_type')!r} / rope_scaling="
                         f"{tc.get('rope_scaling')!r}: only default RoPE is supported")
    theta = rope.get("rope_theta", tc.get("rope_theta", 10000.0))
    t.rope_theta = float(theta)
    tied = cj.get("tie_word_embeddings", tc.get("tie_word_embeddings", False))
    t.tie_word_embeddings = bool(tied)

    full = dict(_SIGLIP_DEFAULTS)
    full.update(vc)
    v = model_cfg.vision
    towers.set_vision_sizes(v, full)
    n = int(full["num_hidden_layers"])
    layer = cj.get("vision_feature_layer", -1)
    if not isinstance(layer, int):
        raise ConvertError(f"{src}: vision_feature_layer={layer!r}: only a single layer index is supported")
    # hidden_states[k] is the output after k layers (index 0 = embeddings), so k or N+1+k layers are run.
    v.num_layers = layer if layer >= 0 else n + 1 + layer
    if not 1 <= v.num_layers <= n:
        raise ConvertError(f"{src}: vision_feature_layer={layer} selects no encoder layer of {n}")
    if v.num_layers < n:
        notes.append(f"vision_feature_layer={layer}: vision layers {v.num_layers}..{n - 1} are unused")

    model_cfg.projector_type = "mlp2x_gelu"
    model_cfg.pool_mode = "bilinear"
    model_cfg.pool_stride = 2
    model_cfg.newline_position = "one_token"
    model_cfg.action_token = False
    model_cfg.video_token_id = int(cj.get("video_token_index", cj.get("video_token_id", 151647)))
    return notes


def export_config(model_cfg, source_config: dict, dtype_name: str) -> dict:
    """config.json that `LlavaOnevisionForConditionalGeneration.from_pretrained` loads (no remote code)."""
    t, v = model_cfg.text, model_cfg.vision
    if model_cfg.pool_mode != "bilinear" or model_cfg.newline_position != "one_token":
        raise ConvertError(
            f"HF LlavaOnevision always uses bilinear pooling with one newline after all frames; this model uses "
            f"pool_mode={model_cfg.pool_mode!r}, newline_position={model_cfg.newline_position!r}. The weights "
            "would convert, but the HF model would compute a different token layout. Pass "
            "allow_layout_change=True (CLI --allow_layout_change) to export anyway.")
    video = int(model_cfg.video_token_id)
    if video < 0:
        # llava_qwen uses the -200 sentinel; HF needs a real row of the embedding (Qwen2 convention: 151647).
        video = 151647
        if video >= t.vocab_size:
            raise ConvertError(f"video_token_id is {model_cfg.video_token_id} (a sentinel) and the vocab "
                             f"({t.vocab_size}) has no row 151647: set a real token id "
                             "(config_overrides video_token_id=ID; CLI --override video_token_id=ID)")
    src = dict(source_config or {}) if (source_config or {}).get("model_type") == "llava_onevision" else {}
    image = int(src.get("image_token_index", video - 1))
    text_config = dict(src.get("text_config") or {})
    text_config.update(
        model_type="qwen2", vocab_size=t.vocab_size, hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size, num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads, head_dim=t.head_dim, hidden_act="silu",
        max_position_embeddings=t.max_position_embeddings, rms_norm_eps=t.rms_norm_eps,
        rope_parameters={"rope_theta": t.rope_theta, "rope_type": "default"},
        tie_word_embeddings=bool(t.tie_word_embeddings), use_sliding_window=False, sliding_window=None,
        layer_types=["full_attention"] * t.num_layers,
    )
    text_config.pop("rope_theta", None)
    text_config.pop("rope_scaling", None)
    vision_config = dict(src.get("vision_config") or {})
    vision_config.update(
        model_type="siglip_vision_model", hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads, image_size=v.image_size,
        patch_size=v.patch_size, layer_norm_eps=v.layer_norm_eps, hidden_act=v.hidden_act, num_channels=3,
        vision_use_head=False,
    )
    cj = dict(src)
    cj.update(
        architectures=["LlavaOnevisionForConditionalGeneration"], model_type="llava_onevision",
        text_config=text_config, vision_config=vision_config, video_token_index=video,
        image_token_index=image, vision_feature_layer=-1, vision_feature_select_strategy="full",
        projector_hidden_act="gelu", multimodal_projector_bias=True,
        tie_word_embeddings=bool(t.tie_word_embeddings), dtype=dtype_name,
    )
    cj.setdefault("vision_aspect_ratio", "anyres_max_9")
    s = v.image_size
    cj.setdefault("image_grid_pinpoints", [[s * a, s * b] for a in range(1, 4) for b in range(1, 4)])
    cj.pop("torch_dtype", None)
    return cj


def generation_config(source_generation: dict) -> dict:
    g = dict(source_generation or {})
    g.setdefault("_from_model_config", True)
    return g


# ------------------------------------------------------------------------------------ the full model directory

def prepare_export(model_cfg, cfg_json: dict, tokenizer_file: Optional[str]):
    """(config.json, tokenizer plan or None): token ids / vocab from the tokenizer that goes with the model."""
    if not tokenizer_file:
        return cfg_json, None
    plan = hf_processor.plan_tokenizer(tokenizer_file, model_cfg)
    return hf_processor.apply_to_config(cfg_json, plan), plan


def export_tensors(tensors, plan):
    return tensors if plan is None else hf_processor.pad_vocab(tensors, plan.vocab_size)


def export_num_frames(loaded: common.Loaded, default: Optional[int] = None) -> int:
    """Frames per clip of the export: the training config's, else the source export's, else `default` (the
    caller's; the convert CLI passes configs/base.py's data.num_frames)."""
    n = ((loaded.train_config or {}).get("data") or {}).get("num_frames")
    if n:
        return int(n)
    sampling = hf_processor.read_sampling(loaded.files_dir) if loaded.files_dir else None
    if sampling:
        return int(sampling["num_frames"])
    if default:
        return int(default)
    raise ConvertError("the export's frames per clip are unknown: the model has no training config and its source "
                       f"no {hf_processor.SAMPLING_KEY!r} block; pass num_frames (export_checkpoint / export_model)")


def write_extras(dst: str, model_cfg, cfg_json: dict, plan, source_generation: dict, *, system_prompt: str,
                 num_frames: int, train_config: Optional[dict] = None,
                 eval_summary_path: Optional[str] = None, dropped_params=(), num_params: Optional[int] = None,
                 trained_cfg=None) -> List[str]:
    """generation_config.json, tokenizer + processor files (when there is a tokenizer) and README.md.

    `trained_cfg`: the model config before an allowed layout change (what the card and sampling block report as
    the trained layout); default `model_cfg`."""
    gen = generation_config(source_generation)
    written = []
    if plan is not None:
        gen = hf_processor.generation_config(plan, gen)
        written += hf_processor.write_processor_files(dst, plan, model_cfg, cfg_json, system_prompt, num_frames,
                                                      trained_cfg=trained_cfg)
    with open(os.path.join(dst, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2, sort_keys=True)
    summary = model_card.load_summary(eval_summary_path)
    card = model_card.render(trained_cfg if trained_cfg is not None else model_cfg, cfg_json, plan, train_config,
                             summary, os.path.basename(eval_summary_path or "summary.json"), num_frames,
                             dropped_params, num_params)
    with open(os.path.join(dst, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)
    return written + ["generation_config.json", "README.md"]


def write(loaded: common.Loaded, dst: str, options: common.WriteOptions = common.WriteOptions()) -> dict:
    """`loaded` as a complete transformers model directory (see module docstring); returns the export report.

    The tokenizer: options.tokenizer_path, else the one the model was trained with, else the source's files.
    Our parameters HF cannot hold (the action token / heads) are dropped, logged and listed."""
    model_cfg = loaded.model_cfg
    if options.allow_layout_change:
        model_cfg = ml_collections.ConfigDict(model_cfg.to_dict())
        model_cfg.pool_mode, model_cfg.newline_position = "bilinear", "one_token"
    tensors, dropped, flat = sf.tensors_to_write(loaded.model, rules(model_cfg), NAME)
    if dropped:
        log.warning("not representable in the HF LlavaOnevision format, dropped: %s", dropped)
    cfg_json = export_config(model_cfg, loaded.source_config, np.dtype(model_cfg.param_dtype).name)
    tokenizer_path = options.tokenizer_path
    if tokenizer_path and hf_processor.find_tokenizer_file(tokenizer_path) is None:
        raise MissingFileError(f"tokenizer {tokenizer_path!r}: no tokenizer.json there (expected a dir "
                                "holding tokenizer.json, or the file itself)")
    tokenizer_path = tokenizer_path or loaded.tokenizer_path
    try:
        cfg_json, tok_plan = prepare_export(model_cfg, cfg_json,
                                            hf_processor.find_tokenizer_file(tokenizer_path, loaded.files_dir))
    except hf_processor.UnreadableTokenizer as e:
        if tokenizer_path:
            raise
        # A tokenizer found next to the source that we cannot use: its files are copied as they are.
        log.warning("%s; exporting without tokenizer / processor files", e)
        tok_plan = None
    if tok_plan is None:
        log.warning("no tokenizer.json given (tokenizer_path / source dir): %s gets weights and config only; "
                    "image/video token ids are unchecked and AutoProcessor will not load it", dst)
    notes = tok_plan.notes if tok_plan is not None else []
    eval_summary = options.eval_summary or loaded.eval_summary
    num_frames = export_num_frames(loaded, options.num_frames)      # refused before any tensor is written

    def extras():
        if loaded.files_dir and tok_plan is None:
            common.copy_tokenizer_files(loaded.files_dir, dst)
        data = (loaded.train_config or {}).get("data") or {}
        write_extras(dst, model_cfg, cfg_json, tok_plan, loaded.source_generation,
                     system_prompt=str(data.get("system_prompt") or "You are a helpful assistant."),
                     num_frames=num_frames, train_config=loaded.train_config,
                     eval_summary_path=eval_summary, dropped_params=dropped,
                     num_params=sum(int(np.prod(v.get_value().shape)) for p, v in flat.items() if p not in dropped),
                     trained_cfg=loaded.model_cfg)

    weight_map = sf.write_dir(dst, export_tensors(tensors, tok_plan), cfg_json, options.max_shard_bytes, extras)
    for n in notes:
        log.info("%s", n)
    return dict(format=NAME, keys=sorted(weight_map), dropped_params=dropped, extra_keys=[], notes=notes,
                image_token_index=cfg_json["image_token_index"], video_token_index=cfg_json["video_token_index"],
                tokenizer=tok_plan.source if tok_plan is not None else None)
