"""Peak host memory of `convert import` on a synthetic multi-GB llava_qwen checkpoint.

Writes a bf16 llava_qwen-style checkpoint (original key names, sharded safetensors + index) of about
--size_gb in a temp dir (in a child process, so writing does not count), then converts it to Orbax in a
fresh child process and prints its peak RSS next to the checkpoint size and the largest tensor. On a CPU
backend the "device" arrays live in host RAM too, so the expected peak is roughly
import baseline + checkpoint size + one parameter (the largest stacked one), not 2x the checkpoint.

  python benchmarks/convert_memory.py [--size_gb 2.0] [--keep DIR]
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

from llavaction_jax.convert import api  # noqa: E402
from llavaction_jax.convert.safetensors_io import CheckpointReader, write_sharded  # noqa: E402

H, INTER, HEADS, KV, VOCAB = 2048, 5632, 16, 4, 32768
VH, VINTER, VLAYERS, VSIDE, VPATCH = 256, 1024, 4, 64, 16
ACTIONS = (97, 300, 3806)


def _layer_bytes():
    hd = H // HEADS
    attn = H * H * 2 + 2 * H * KV * hd + H + 2 * KV * hd
    return 2 * (attn + 3 * H * INTER + 2 * H)


def num_layers(size_gb):
    fixed = 2 * (2 * VOCAB * H + H * sum(ACTIONS))
    return max(1, round((size_gb * 1e9 - fixed) / _layer_bytes()))


def write_checkpoint(path, layers):
    """Child process: streams tensors into size-capped shards (write_sharded keeps one shard in memory)."""
    rng = np.random.default_rng(0)
    hd = H // HEADS

    def t(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)

    def tensors():
        vp = "model.vision_tower.vision_tower.vision_model."
        yield vp + "embeddings.patch_embedding.weight", t(VH, 3, VPATCH, VPATCH)
        yield vp + "embeddings.patch_embedding.bias", t(VH)
        yield vp + "embeddings.position_embedding.weight", t((VSIDE // VPATCH) ** 2, VH)
        for i in range(VLAYERS + 1):    # + the layer LLaVA-NeXT drops
            lp = vp + f"encoder.layers.{i}."
            for n in ("layer_norm1", "layer_norm2"):
                yield lp + n + ".weight", t(VH)
                yield lp + n + ".bias", t(VH)
            for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
                yield lp + f"self_attn.{n}.weight", t(VH, VH)
                yield lp + f"self_attn.{n}.bias", t(VH)
            yield lp + "mlp.fc1.weight", t(VINTER, VH)
            yield lp + "mlp.fc1.bias", t(VINTER)
            yield lp + "mlp.fc2.weight", t(VH, VINTER)
            yield lp + "mlp.fc2.bias", t(VH)
        yield vp + "post_layernorm.weight", t(VH)
        yield vp + "post_layernorm.bias", t(VH)
        yield "model.mm_projector.0.weight", t(H, VH)
        yield "model.mm_projector.0.bias", t(H)
        yield "model.mm_projector.2.weight", t(H, H)
        yield "model.mm_projector.2.bias", t(H)
        yield "model.image_newline", t(H)
        yield "model.action_supervision", t(1, H)
        yield "model.embed_tokens.weight", t(VOCAB, H)
        for i in range(layers):
            lp = f"model.layers.{i}."
            yield lp + "self_attn.q_proj.weight", t(HEADS * hd, H)
            yield lp + "self_attn.q_proj.bias", t(HEADS * hd)
            for n in ("k_proj", "v_proj"):
                yield lp + f"self_attn.{n}.weight", t(KV * hd, H)
                yield lp + f"self_attn.{n}.bias", t(KV * hd)
            yield lp + "self_attn.o_proj.weight", t(H, HEADS * hd)
            yield lp + "mlp.gate_proj.weight", t(INTER, H)
            yield lp + "mlp.up_proj.weight", t(INTER, H)
            yield lp + "mlp.down_proj.weight", t(H, INTER)
            yield lp + "input_layernorm.weight", t(H)
            yield lp + "post_attention_layernorm.weight", t(H)
        yield "model.norm.weight", t(H)
        yield "lm_head.weight", t(VOCAB, H)
        for n, c in zip(("verb_head", "noun_head", "action_head"), ACTIONS):
            yield f"{n}.weight", t(c, H)

    write_sharded(tensors(), path, max_shard_bytes=512 << 20)
    cfg = {
        "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava_qwen", "hidden_size": H,
        "intermediate_size": INTER, "num_hidden_layers": layers, "num_attention_heads": HEADS,
        "num_key_value_heads": KV, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
        "vocab_size": VOCAB, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "mm_vision_tower": "google/siglip-so400m-patch14-384", "mm_projector_type": "mlp2x_gelu",
        "mm_patch_merge_type": "spatial_unpad", "mm_spatial_pool_mode": "bilinear", "mm_newline_position": "grid",
        "vision_supervision": "one_token", "action_types": ",".join(map(str, ACTIONS)),
        "vision_config": {"hidden_size": VH, "intermediate_size": VINTER, "num_hidden_layers": VLAYERS + 1,
                          "num_attention_heads": 4, "image_size": VSIDE, "patch_size": VPATCH,
                          "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh"},
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)


def convert(src, dst):
    """Child process: import to Orbax; reports RSS after imports (baseline) and the peak."""
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.time()
    api.import_checkpoint(src, dst, "llava_qwen")
    seconds = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with CheckpointReader(src) as r:
        sizes = {k: int(r.dtype(k).itemsize) * int(np.prod(r.shape(k))) for k in r.keys()}
    stacked = {}
    for k, b in sizes.items():
        if k.startswith("model.layers."):
            name = ".".join(k.split(".")[3:])
            stacked[name] = stacked.get(name, 0) + b
    print(json.dumps(dict(baseline_rss=base, peak_rss=peak, seconds=seconds, total=sum(sizes.values()),
                          largest_tensor=max(sizes.values()), largest_stacked_param=max(stacked.values()))))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size_gb", type=float, default=2.0)
    parser.add_argument("--keep", default=None, help="write into this dir and keep it (default: temp, removed)")
    parser.add_argument("--_child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        if args._child[0] == "write":
            write_checkpoint(args._child[1], int(args._child[2]))
        else:
            convert(args._child[1], args._child[2])
        return
    root = args.keep or tempfile.mkdtemp(prefix="convert_memory_")
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    try:
        src, dst = os.path.join(root, "llava_qwen"), os.path.join(root, "orbax")
        layers = num_layers(args.size_gb)
        t0 = time.time()
        subprocess.run([sys.executable, __file__, "--_child", "write", src, str(layers)], check=True, env=env)
        print(f"wrote synthetic llava_qwen checkpoint ({layers} Qwen2 layers, H={H}) in {time.time() - t0:.0f}s")
        out = subprocess.run([sys.executable, __file__, "--_child", "convert", src, dst], check=True, env=env,
                             stdout=subprocess.PIPE, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        gib = lambda b: f"{b / 2**30:.2f} GiB"
        print(f"checkpoint total        {gib(r['total'])}")
        print(f"largest tensor          {gib(r['largest_tensor'])}")
        print(f"largest stacked param   {gib(r['largest_stacked_param'])}  (all layers of one weight)")
        print(f"RSS after imports       {gib(r['baseline_rss'])}")
        print(f"peak RSS (import)       {gib(r['peak_rss'])}   (+{gib(r['peak_rss'] - r['baseline_rss'])} over "
              f"baseline = {(r['peak_rss'] - r['baseline_rss']) / r['total']:.2f} x checkpoint)")
        print(f"import time             {r['seconds']:.1f}s")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
