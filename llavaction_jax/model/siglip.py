"""SigLIP vision tower (LLaVA-NeXT variant): features are the last USED layer's output, before post_layernorm."""
import jax
import jax.numpy as jnp
from flax import nnx

from llavaction_jax.model.attention import attention
from llavaction_jax.model import remat
from llavaction_jax.model.layers import Build, Dense, Embed, LayerNorm, constrain, normal, run_layers, zeros
from llavaction_jax.model.spec import ModelSpec


class PatchEmbedding(nnx.Module):
    """Conv2d(kernel=stride=P) as a matmul over flattened P×P×3 patches; kernel stored (P, P, 3, Dv) (HWIO)."""

    def __init__(self, b: Build, patch, channels, dim, dtype):
        self.patch = patch
        self.dtype = dtype
        self.kernel = b.param(normal(0.02), (patch, patch, channels, dim), ("conv", "conv", "conv", "vision_embed"))
        self.bias = b.param(zeros, (dim,), ("norm",))

    def __call__(self, pixels):
        p = self.patch
        n, h, w, c = pixels.shape
        h, w = h - h % p, w - w % p                  # Conv2d(stride=P) ignores the remainder (384 = 27*14 + 6)
        pixels = pixels[:, :h, :w]
        # [N, gh, P, gw, P, C] -> [N, gh, gw, P, P, C]: patch index = row * gw + col (torch flatten(2) order).
        x = pixels.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(n, (h // p) * (w // p), p * p * c).astype(self.dtype)
        kernel = self.kernel[...].reshape(p * p * c, -1).astype(self.dtype)
        return jnp.einsum("npk,kd->npd", x, kernel) + self.bias[...].astype(self.dtype)


class VisionEmbeddings(nnx.Module):
    def __init__(self, b: Build, spec: ModelSpec, dtype):
        v = spec.vision
        self.patch_embedding = PatchEmbedding(b, v.patch_size, 3, v.hidden_size, dtype)
        self.position_embedding = Embed(b, v.num_patches, v.hidden_size, ("patches", "vision_embed"), dtype=dtype)

    def __call__(self, pixels):
        x = self.patch_embedding(pixels)
        return x + self.position_embedding.embedding[...].astype(x.dtype)[None]


class VisionAttention(nnx.Module):
    def __init__(self, b: Build, spec: ModelSpec, dtype):
        v = spec.vision
        d, n = v.hidden_size, v.num_layers
        self.num_heads = v.num_heads
        self.impl = spec.attention_impl
        self.rules = b.rules
        self.q_proj = Dense(b, d, d, ("vision_embed", "vision_heads"), stack=n, dtype=dtype)
        self.k_proj = Dense(b, d, d, ("vision_embed", "vision_heads"), stack=n, dtype=dtype)
        self.v_proj = Dense(b, d, d, ("vision_embed", "vision_heads"), stack=n, dtype=dtype)
        self.out_proj = Dense(b, d, d, ("vision_heads", "vision_embed"), stack=n, dtype=dtype)

    def __call__(self, x):
        bsz, t, d = x.shape
        axes = ("batch", "patches", "act_heads", "head_dim")
        heads = lambda y, tag: remat.name(constrain(y.reshape(bsz, t, self.num_heads, d // self.num_heads), axes,
                                                    self.rules), tag)
        out = attention(heads(self.q_proj(x), "query_proj"), heads(self.k_proj(x), "key_proj"),
                        heads(self.v_proj(x), "value_proj"), impl=self.impl, causal=False, rules=self.rules)
        out = remat.name(constrain(out, axes, self.rules), "attention_out")
        out = self.out_proj(out.reshape(bsz, t, d))
        return remat.name(constrain(out, ("batch", "patches", "act_embed"), self.rules), "out_proj")


class VisionMLP(nnx.Module):
    def __init__(self, b: Build, spec: ModelSpec, dtype):
        v = spec.vision
        self.fc1 = Dense(b, v.hidden_size, v.intermediate_size, ("vision_embed", "vision_mlp"),
                         stack=v.num_layers, dtype=dtype)
        self.fc2 = Dense(b, v.intermediate_size, v.hidden_size, ("vision_mlp", "vision_embed"),
                         stack=v.num_layers, dtype=dtype)
        self.rules = b.rules

    def __call__(self, x):
        h = remat.name(constrain(self.fc1(x), ("batch", "patches", "act_mlp"), self.rules), "mlp_up")
        out = self.fc2(jax.nn.gelu(h, approximate=True))   # gelu_pytorch_tanh
        return remat.name(constrain(out, ("batch", "patches", "act_embed"), self.rules), "mlp_out")


class VisionEncoderLayers(nnx.Module):
    """All encoder layers, params stacked on a leading layer axis (pre-LN residual blocks)."""

    def __init__(self, b: Build, spec: ModelSpec, dtype):
        v = spec.vision
        self.layer_norm1 = LayerNorm(b, v.hidden_size, v.layer_norm_eps, stack=v.num_layers, dtype=dtype)
        self.self_attn = VisionAttention(b, spec, dtype)
        self.layer_norm2 = LayerNorm(b, v.hidden_size, v.layer_norm_eps, stack=v.num_layers, dtype=dtype)
        self.mlp = VisionMLP(b, spec, dtype)

    def __call__(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nnx.Module):
    def __init__(self, b: Build, spec: ModelSpec, dtype):
        self.layers = VisionEncoderLayers(b, spec, dtype)
        self.scan = spec.scan_layers
        self.remat = spec.vision_remat_policy
        self.rules = b.rules

    def __call__(self, x):
        body = lambda layer, h, _: (constrain(layer(h), ("batch", "patches", "act_embed"), self.rules), None)
        x, _ = run_layers(self.layers, x, None, body, scan=self.scan, remat_policy=self.remat)
        return x


class SiglipVisionTower(nnx.Module):
    """pixels [N, S, S, 3] (NHWC, SigLIP-normalised) -> features [N, Np, Dv] before post_layernorm."""

    def __init__(self, b: Build, spec: ModelSpec, dtype):
        v = spec.vision
        self.embeddings = VisionEmbeddings(b, spec, dtype)
        self.encoder = VisionEncoder(b, spec, dtype)
        # Kept so checkpoints round-trip; LLaVA-NeXT takes features before it, so it is never applied.
        self.post_layernorm = LayerNorm(b, v.hidden_size, v.layer_norm_eps, dtype=dtype)
        self.image_size = v.image_size

    def __call__(self, pixels):
        if pixels.ndim != 4 or pixels.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"vision tower expects pixels [N, {self.image_size}, {self.image_size}, 3], "
                             f"got {pixels.shape}")
        return self.encoder(self.embeddings(pixels))
