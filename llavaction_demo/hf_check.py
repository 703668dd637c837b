"""The demo's HF check: export the trained model to HF LlavaOnevision, reload it with transformers, compare logits."""
import os
import shutil

import jax.numpy as jnp
import numpy as np

from llavaction_jax.convert.api import export_model, load_pretrained
from llavaction_jax.eval import samples
from llavaction_jax.eval.items import normalize_frames
from llavaction_jax.input.chat import tokenize_prompt
from llavaction_jax.model import num_video_tokens


def hf_roundtrip(config, model, tok, mesh, data: dict, workdir: str) -> dict:
    """Export to HF LlavaOnevision, reload with transformers and compare logits with JAX.

    Two comparisons: (1) text-only prompt, the trained model itself vs HF: checks every language-model weight;
    (2) one video question, the exported checkpoint re-imported into JAX (HF layout: one newline after all frames,
    no action token) vs HF on the same frames: checks the vision tower, projector, pooling and newline too. The
    trained model's own video layout (grid newlines + action token) has no HF counterpart, so it cannot be
    compared directly.
    """
    try:      # why here: torch/transformers are optional (the hf extra); triton is already hidden (torch_env.py)
        import torch
        from transformers import LlavaOnevisionForConditionalGeneration
    except ImportError as e:
        return {"skipped": f"HF reload check skipped: torch/transformers not importable ({e}); "
                           "pip install 'llavaction_jax[hf]' to run it"}
    out_dir = os.path.join(workdir, "hf_export")
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    info = export_model(model, config.model, out_dir, "hf", allow_layout_change=True,
                                       tokenizer_path=tok.source, train_config=config.to_dict())
    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(out_dir, dtype=torch.float32).eval()
    item = next(samples.tfrecord_source(data["eval"]["records"], int(config.data.num_frames),
                                     int(config.model.vision.image_size)).iterate())
    question = item.sample["conversations"][0]["value"]
    result = {"export_dir": out_dir, "dropped_params": info["dropped_params"]}

    # (1) text only: the question without its video.
    text_ids = tokenize_prompt(tok, question.replace("<image>\n", ""), 0, config.data.system_prompt)
    ids = np.asarray([text_ids], np.int32)
    jax_logits = np.asarray(model(jnp.asarray(ids), None, jnp.ones_like(jnp.asarray(ids))).logits[0])
    with torch.no_grad():
        # The export may append rows for tokens it added (<image>); compare the model's own vocabulary.
        hf_logits = hf(input_ids=torch.from_numpy(ids.astype(np.int64))).logits[0, :, :jax_logits.shape[-1]].numpy()
    result["text_only"] = {"tokens": int(ids.shape[1]), "max_abs_diff": float(np.abs(jax_logits - hf_logits).max()),
                           "same_argmax": bool((jax_logits.argmax(-1) == hf_logits.argmax(-1)).all())}

    # (2) video question in the HF layout.
    hf_layout, hf_cfg = load_pretrained(out_dir, mesh=mesh)
    n_video = num_video_tokens(hf_cfg.model, int(config.data.num_frames))
    vid_ids = np.asarray([tokenize_prompt(tok, question, n_video, config.data.system_prompt)], np.int32)
    frames = normalize_frames(item.load_frames())[None]                              # [1, F, S, S, 3]
    jax_v = np.asarray(hf_layout(jnp.asarray(vid_ids), jnp.asarray(frames), jnp.ones_like(jnp.asarray(vid_ids))
                                 ).logits[0])
    with torch.no_grad():
        hf_v = hf(input_ids=torch.from_numpy(vid_ids.astype(np.int64)),
                  pixel_values_videos=torch.from_numpy(frames.transpose(0, 1, 4, 2, 3).copy())).logits[0].numpy()
    result["video_hf_layout"] = {"tokens": int(vid_ids.shape[1]), "video_tokens": int(n_video),
                                 "max_abs_diff": float(np.abs(jax_v - hf_v).max()),
                                 "same_argmax": bool((jax_v.argmax(-1) == hf_v.argmax(-1)).all())}
    return result
