"""Original LLaVA-NeXT / LLaVAction `llava_qwen` safetensors directories (format "llava_qwen"): read and written.

Key names follow LLaVA-NeXT (`model.vision_tower.vision_tower.vision_model...`, `model.mm_projector.{0,2}`,
`model.layers.N...`, `lm_head.weight`) plus the LLaVAction extras (`model.action_supervision`,
`verb_head.weight`, `noun_head.weight`, `action_head.weight`). LLaVA-NeXT's SigLIP wrapper deletes the
last encoder layer and uses the output of the remaining ones before post_layernorm, so a checkpoint may
hold one more vision layer than the model uses: that layer is an expected, reported, unused key.
"""
import logging
import os
import re
import sys
from typing import Callable, Dict, List, Tuple

import numpy as np

from llavaction_jax.convert import common, safetensors_format as sf, towers
from llavaction_jax.convert.mapping import Rule
from llavaction_jax.convert.safetensors_io import CheckpointReader
from llavaction_jax.convert.errors import ConvertError

log = logging.getLogger(__name__)
NAME = "llava_qwen"
DESCRIPTION = "original LLaVA-NeXT / LLaVAction safetensors dir (config.json with mm_vision_tower)"
VIDEO_TOKEN_ID = -200          # LLaVA-NeXT IMAGE_TOKEN_INDEX sentinel spliced by tokenizer_image_token
VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
CONFIG_FILE = sf.CONFIG
_VISION_LAYER_RE = re.compile(re.escape(VISION_PREFIX) + r"encoder\.layers\.(\d+)\.")
# Non-parameter buffers that older transformers versions saved; harmless to skip.
_BUFFER_RE = re.compile(r"rotary_emb\.inv_freq$")

# SigLIP so400m/14-384 as LLaVA-NeXT builds it (the original config.json does not store the vision config;
# the sizes are inferred from the tensors, these are the remaining SigLIP constants).
SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
              image_size=384, patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")


# Public SigLIP towers: hidden size -> (attention heads, encoder layers of the full tower). Heads are not
# recoverable from tensor shapes (q/k/v are hidden x hidden), so they come from here.
SIGLIP_TOWERS = {768: (12, 12), 1024: (16, 24), 1152: (16, 27), 1536: (16, 40)}


def _in_tensors(key: str) -> str:
    return "the checkpoint's safetensors"


def infer_vision_config(shapes: Dict[str, Tuple[int, ...]], cj: dict, config_file: str = CONFIG_FILE,
                        file_of: Callable[[str], str] = _in_tensors):
    """(vision config dict, layers the model uses, one-line note) from the SigLIP tensors of a checkpoint.
    Errors name the file: `config_file` (config.json's path) for a key, `file_of(tensor key)` for a tensor."""
    keys = [VISION_PREFIX + name for name in ("embeddings.patch_embedding.weight",
                                              "embeddings.position_embedding.weight",
                                              "encoder.layers.0.mlp.fc1.weight")]
    pe_key, pos_key, _ = keys
    pe, pos, fc1 = (shapes.get(k) for k in keys)
    layers = {int(m.group(1)) for m in map(_VISION_LAYER_RE.match, shapes) if m}
    if pe is None or pos is None or fc1 is None or not layers:
        missing = [k for k in keys if k not in shapes] or [VISION_PREFIX + "encoder.layers.N.*"]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConvertError(f"no SigLIP tower tensor {missing[0]!r}{more}",
                           os.path.join(os.path.dirname(config_file), "*.safetensors"),
                           f"the vision tower's tensors under {VISION_PREFIX!r} (config.json has no vision sizes; "
                           "they are read off these)")
    hidden, patch = int(pe[0]), int(pe[-1])
    side = int(round(pos[0] ** 0.5))
    if side * side != pos[0]:
        raise ConvertError(f"tensor {pos_key!r} has {pos[0]} rows", file_of(pos_key),
                           "a square patch grid (side x side rows)")
    mm_hidden = cj.get("mm_hidden_size")
    if mm_hidden is not None and int(mm_hidden) != hidden:
        raise ConvertError(f"mm_hidden_size={mm_hidden} but tensor {pe_key!r} has {hidden} channels",
                           f"{config_file} / {file_of(pe_key)}", "mm_hidden_size equal to the vision tower's width")
    n = max(layers) + 1
    known = SIGLIP_TOWERS.get(hidden)
    if known is not None:
        heads, full = known
        # A checkpoint holds the full tower (LLaVA-NeXT drops its last layer at load time) or the used layers.
        used = n - 1 if n == full else n if n == full - 1 else n - 1
        heads_src = f"{heads} heads (the SigLIP tower of width {hidden})"
    else:
        heads = hidden // 64 if hidden % 64 == 0 else 1
        used = n - 1
        heads_src = f"{heads} heads ASSUMED (head_dim 64; set --override vision.num_heads=N if wrong)"
    # image_size // patch == side; SigLIP's published input sizes disambiguate (384 // 14 == 27, not 378).
    image = next((s for s in (224, 256, 384, 512) if s // patch == side), side * patch)
    vc = dict(SO400M, hidden_size=hidden, intermediate_size=int(fc1[0]), num_hidden_layers=n,
              num_attention_heads=heads, image_size=image, patch_size=patch)
    note = (f"vision tower inferred from the checkpoint tensors (config.json has no vision sizes): hidden {hidden}, "
            f"mlp {vc['intermediate_size']}, {n} layers in the checkpoint -> {used} used, {heads_src}, "
            f"patch {patch}, image {vc['image_size']}")
    return vc, used, note


def is_format(config_json: dict) -> bool:
    return "mm_vision_tower" in config_json or config_json.get("model_type") in ("llava_qwen", "llava")


def canonical_key(key: str) -> str:
    return key


# The protocol's detect / read_config / load, driven by this module's mapping table (convert/safetensors_format.py).
detect, read_config, load = sf.reader_functions(sys.modules[__name__])


NOT_IN_FORMAT = {}     # every parameter of the tree has a llava_qwen key


def rules(model_cfg) -> List[Rule]:
    out = (towers.vision_rules(VISION_PREFIX)
           + towers.projector_rules("model.mm_projector.0", "model.mm_projector.2", "model.image_newline")
           + towers.text_rules("model.", "lm_head.weight", model_cfg.text.tie_word_embeddings))
    if model_cfg.action_token:
        out += [Rule("action/token", "model.action_supervision"),
                Rule("action/verb_head/kernel", "verb_head.weight", "linear"),
                Rule("action/noun_head/kernel", "noun_head.weight", "linear"),
                Rule("action/action_head/kernel", "action_head.weight", "linear")]
    return out


def expected_unused(model_cfg):
    """Predicate for checkpoint keys that are known and deliberately not loaded."""
    used = model_cfg.vision.num_layers

    def pred(key: str) -> bool:
        m = _VISION_LAYER_RE.match(key)
        if m:
            return int(m.group(1)) == used       # the layer LLaVA-NeXT deletes (hidden_states[-2] of 27)
        return bool(_BUFFER_RE.search(key))
    return pred


def parse_config(cj: dict, shapes: Dict[str, Tuple[int, ...]], model_cfg, config_file: str = CONFIG_FILE,
                 file_of: Callable[[str], str] = _in_tensors) -> List[str]:
    """Fills `model_cfg` (defaults from model/config.py) from config.json + tensor shapes; returns notes. Errors
    name `config_file` (config.json's path) and the key, or `file_of(tensor key)` for a tensor."""
    src = config_file
    notes = []
    tower = str(cj.get("mm_vision_tower", ""))
    if tower and "siglip" not in tower.lower():
        raise ConvertError(f"{src}: mm_vision_tower={tower!r}: only SigLIP vision towers are supported")
    if cj.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise ConvertError(f"{src}: mm_projector_type={cj.get('mm_projector_type')!r}, expected 'mlp2x_gelu'")
    merge = cj.get("mm_patch_merge_type", "flat")
    if "unpad" not in merge:
        raise ConvertError(f"{src}: mm_patch_merge_type={merge!r}: the model always has image_newline, which "
                         "LLaVA-NeXT only creates for '*unpad' merge types (e.g. 'spatial_unpad')")
    if cj.get("rope_scaling"):
        raise ConvertError(f"{src}: rope_scaling={cj['rope_scaling']!r} is not supported (expected null)")

    t = model_cfg.text
    for dst, key in [("hidden_size", "hidden_size"), ("intermediate_size", "intermediate_size"),
                     ("num_layers", "num_hidden_layers"), ("num_heads", "num_attention_heads"),
                     ("rms_norm_eps", "rms_norm_eps"), ("max_position_embeddings", "max_position_embeddings")]:
        if key not in cj:
            raise ConvertError(f"{src}: missing required key {key!r}")
        try:
            t[dst] = type(t[dst])(cj[key])
        except (TypeError, ValueError):
            raise ConvertError(f"{src}: {key}={cj[key]!r} is not a number") from None
    t.num_kv_heads = int(cj.get("num_key_value_heads", t.num_heads))
    t.head_dim = int(cj.get("head_dim") or t.hidden_size // t.num_heads)
    theta = cj.get("rope_theta", (cj.get("rope_parameters") or {}).get("rope_theta"))
    t.rope_theta = float(theta if theta is not None else 10000.0)
    # The tensors win over config.json for the vocab: LLaVAction forces vocab_size=152064 for LLaVA-Video-7B
    # whose config.json disagrees with its embedding matrix.
    embed = shapes.get("model.embed_tokens.weight")
    vocab = int(cj.get("vocab_size", 151936))
    if embed is not None and embed[0] != vocab:
        notes.append(f"vocab_size: config.json says {vocab}, embed_tokens has {embed[0]} rows -> using {embed[0]}")
        vocab = embed[0]
    t.vocab_size = vocab
    tied = bool(cj.get("tie_word_embeddings", False))
    if tied and "lm_head.weight" in shapes:
        notes.append("tie_word_embeddings: config.json says true but lm_head.weight is present -> untied "
                     "(LLaVAction unties LLaVA-Video)")
        tied = False
    t.tie_word_embeddings = tied

    if cj.get("vision_config"):
        vc = dict(SO400M)
        vc.update(cj["vision_config"])
        used_layers = int(vc["num_hidden_layers"]) - 1     # LLaVA-NeXT deletes the last SigLIP layer
    else:
        # The original config.json carries no vision sizes: read them off the tower's tensors.
        vc, used_layers, note = infer_vision_config(shapes, cj, config_file, file_of)
        notes.append(note)
    towers.set_vision_sizes(model_cfg.vision, vc)
    model_cfg.vision.num_layers = used_layers

    model_cfg.projector_type = "mlp2x_gelu"
    model_cfg.pool_mode = str(cj.get("mm_spatial_pool_mode", "bilinear"))
    if int(cj.get("mm_spatial_pool_stride", 2)) != 2:
        notes.append(f"mm_spatial_pool_stride={cj['mm_spatial_pool_stride']} ignored: LLaVA-NeXT's video path "
                     "pools with its hard-coded default stride 2")
    model_cfg.pool_stride = 2
    model_cfg.newline_position = str(cj.get("mm_newline_position", "one_token"))   # LLaVA-NeXT's getattr default
    sup = cj.get("vision_supervision")
    if sup not in (None, "one_token"):
        raise ConvertError(f"{src}: vision_supervision={sup!r}: only 'one_token' (or none) is supported")
    model_cfg.action_token = sup == "one_token"
    if cj.get("action_types"):
        model_cfg.action_types = tuple(int(x) for x in str(cj["action_types"]).split(","))
    model_cfg.video_token_id = VIDEO_TOKEN_ID
    return notes


def export_config(model_cfg, source_config: dict, dtype_name: str) -> dict:
    """config.json for a llava_qwen checkpoint; non-architecture keys come from the imported config.json."""
    t, v = model_cfg.text, model_cfg.vision
    # Only a llava_qwen source config is a template (an HF one's text_config etc. mean nothing here).
    cj = dict(source_config) if source_config and is_format(source_config) else {}
    cj.setdefault("architectures", ["LlavaQwenForCausalLM"])
    cj.setdefault("model_type", "llava_qwen")
    cj.setdefault("mm_vision_tower", "google/siglip-so400m-patch14-384")
    cj.setdefault("mm_patch_merge_type", "spatial_unpad")
    cj.setdefault("mm_vision_select_layer", -2)
    cj.setdefault("hidden_act", "silu")
    cj.update(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
        rope_theta=t.rope_theta, rms_norm_eps=t.rms_norm_eps, tie_word_embeddings=bool(t.tie_word_embeddings),
        max_position_embeddings=t.max_position_embeddings, mm_projector_type=model_cfg.projector_type,
        mm_hidden_size=v.hidden_size, mm_spatial_pool_mode=model_cfg.pool_mode,
        mm_spatial_pool_stride=model_cfg.pool_stride, mm_newline_position=model_cfg.newline_position,
        torch_dtype=dtype_name,
    )
    if t.head_dim != t.hidden_size // t.num_heads:
        cj["head_dim"] = t.head_dim
    if model_cfg.action_token:
        cj["vision_supervision"] = "one_token"
        cj["action_types"] = ",".join(str(int(x)) for x in model_cfg.action_types)
    else:
        cj.pop("vision_supervision", None)
    vision = dict(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                  num_hidden_layers=v.num_layers + 1, num_attention_heads=v.num_heads, image_size=v.image_size,
                  patch_size=v.patch_size, layer_norm_eps=v.layer_norm_eps, hidden_act=v.hidden_act)
    # The original format has no vision config (always so400m); store one only for other towers.
    if vision != SO400M or "vision_config" in cj:
        cj["vision_config"] = vision
    return cj


def _dropped_layer(loaded: common.Loaded, extra_tensors, model_cfg):
    """(keys, lazy (key, array) pairs) of the expected-unused tensors (the dropped SigLIP layer) to write back:
    from `extra_tensors` (a safetensors file or checkpoint dir) when given, else the ones `loaded` kept."""
    pred = expected_unused(model_cfg)
    if extra_tensors:
        src = CheckpointReader(extra_tensors)
        keys = [k for k in src.keys() if pred(k)]

        def read():
            with src:
                for k in keys:
                    yield k, src.read(k)
        return keys, read()
    keys = [k for k in loaded.unused_keys if pred(k)]
    return keys, ((k, a) for k, a in loaded.unused() if pred(k))


def write(loaded: common.Loaded, dst: str, options: common.WriteOptions = common.WriteOptions()) -> dict:
    """`loaded` as a llava_qwen checkpoint dir (shards + config.json + the source's tokenizer files); returns the
    export report. With the dropped SigLIP layer (kept by `convert import`, or options.extra_tensors) the
    directory is the original checkpoint again."""
    model_cfg = loaded.model_cfg
    tensors, dropped, _ = sf.tensors_to_write(loaded.model, rules(model_cfg), NAME)
    if dropped:
        raise ConvertError(f"parameters with no {NAME} mapping rule: {dropped}")
    cfg_json = export_config(model_cfg, loaded.source_config, np.dtype(model_cfg.param_dtype).name)
    extra_keys, extra = _dropped_layer(loaded, options.extra_tensors, model_cfg)
    notes = []
    if not extra_keys:
        notes.append(f"no dropped SigLIP layer provided (the source's unused_tensors.safetensors / "
                     f"--extra_tensors): wrote only the {model_cfg.vision.num_layers} vision layers the model uses")

    def all_tensors():
        yield from tensors
        yield from extra

    def extras():
        if loaded.files_dir:
            common.copy_tokenizer_files(loaded.files_dir, dst)

    weight_map = sf.write_dir(dst, all_tensors(), cfg_json, options.max_shard_bytes, extras)
    for n in notes:
        log.info("%s", n)
    return dict(format=NAME, keys=sorted(weight_map), dropped_params=[], extra_keys=extra_keys, notes=notes)
