"""LLaVA-Video / LLaVAction: SigLIP -> mlp2x_gelu projector -> per-frame 2D pool -> newline layout
(+ action token) spliced into the Qwen2 input sequence at the video placeholder slots."""
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llavaction_jax.model.layers import Build, Dense, as_dtype, constrain, normal
from llavaction_jax.model.layout import arrange_video_tokens, splice_video_tokens
from llavaction_jax.model.pooling import pool2d
from llavaction_jax.model.qwen2 import Qwen2Decoder
from llavaction_jax.model.siglip import SiglipVisionTower
from llavaction_jax.model.spec import ModelSpec, num_video_tokens


@flax.struct.dataclass
class ModelOutput:
    logits: jax.Array                      # float32 [B, L, V]
    verb_logits: jax.Array | None = None   # float32 [B, C_verb]; packed rows [B, P, C_verb] (None w/o action token)
    noun_logits: jax.Array | None = None
    action_logits: jax.Array | None = None


class Projector(nnx.Module):
    """mlp2x_gelu: Linear(Dv -> H), exact (erf) GELU, Linear(H -> H)."""

    def __init__(self, b: Build, spec: ModelSpec, dtype):
        dv, h = spec.vision.hidden_size, spec.text.hidden_size
        self.linear_1 = Dense(b, dv, h, ("vision_embed", "mlp"), dtype=dtype)
        self.linear_2 = Dense(b, h, h, ("mlp", "embed"), dtype=dtype)

    def __call__(self, x):
        return self.linear_2(jax.nn.gelu(self.linear_1(x), approximate=False))


class ActionHeads(nnx.Module):
    """LLaVAction action token (1, H) and the verb / noun / action linear heads (no bias)."""

    def __init__(self, b: Build, spec: ModelSpec, dtype):
        h = spec.text.hidden_size
        verbs, nouns, actions = spec.action_types
        self.token = b.param(normal(0.02), (1, h), ("action_slots", "norm"))
        self.verb_head = Dense(b, h, verbs, ("embed", "action_classes"), use_bias=False, dtype=dtype)
        self.noun_head = Dense(b, h, nouns, ("embed", "action_classes"), use_bias=False, dtype=dtype)
        self.action_head = Dense(b, h, actions, ("embed", "action_classes"), use_bias=False, dtype=dtype)

    def __call__(self, h):
        f32 = jnp.float32
        return (self.verb_head(h, out_dtype=f32), self.noun_head(h, out_dtype=f32),
                self.action_head(h, out_dtype=f32))


class LlavaActionModel(nnx.Module):
    """Construct under `jax.set_mesh(mesh)` for sharded params; see hidden_states / __call__ for the inputs."""

    def __init__(self, model_cfg, *, rngs: nnx.Rngs, sharding_rules=None):
        spec = ModelSpec.from_config(model_cfg)
        self.spec = spec
        dtype = as_dtype(spec.dtype)
        b = Build(rngs, as_dtype(spec.param_dtype), sharding_rules)
        self.rules = b.rules
        h = spec.text.hidden_size
        self.vision = SiglipVisionTower(b, spec, dtype)
        self.projector = Projector(b, spec, dtype)
        # LLaVA-NeXT initialises image_newline with std 1/sqrt(H).
        self.image_newline = b.param(normal(1.0 / math.sqrt(h)), (h,), ("norm",))
        self.llm = Qwen2Decoder(b, spec, dtype)
        if not spec.text.tie_word_embeddings:
            self.lm_head = Dense(b, h, spec.text.vocab_size, ("embed", "vocab"), use_bias=False, dtype=dtype)
        if spec.action_token:
            self.action = ActionHeads(b, spec, dtype)

    # ---- video ----------------------------------------------------------------------------------
    def video_tokens(self, pixel_values):
        """pixel_values [B, F, S, S, 3] -> the full video token sequence [B, num_video_tokens, H].

        Packed rows: [B, P, F, S, S, 3] (P videos per row) -> [B, P * num_video_tokens, H], video after video,
        so the k-th video slot of the row gets the k-th token.
        """
        if pixel_values.ndim == 6:
            bsz, per_row = pixel_values.shape[:2]
            tokens = self.video_tokens(pixel_values.reshape((bsz * per_row,) + pixel_values.shape[2:]))
            return tokens.reshape((bsz, per_row * tokens.shape[1], tokens.shape[2]))
        if pixel_values.ndim != 5:
            raise ValueError(f"pixel_values must be [B, F, S, S, 3] or packed [B, P, F, S, S, 3], "
                             f"got shape {pixel_values.shape}")
        bsz, frames = pixel_values.shape[:2]
        side = self.spec.vision.grid_side
        feats = self.vision(pixel_values.reshape((bsz * frames,) + pixel_values.shape[2:]))
        feats = self.projector(feats)                                    # projector BEFORE pooling
        feats = pool2d(feats.reshape(bsz * frames, side, side, -1), self.spec.pool_mode, self.spec.pool_stride)
        feats = feats.reshape((bsz, frames) + feats.shape[1:])
        action = self.action.token[...] if self.spec.action_token else None
        return arrange_video_tokens(feats, self.image_newline[...], self.spec.newline_position, action)

    # ---- text + splice --------------------------------------------------------------------------
    def _check_slots(self, input_ids, pixel_values):
        """Eager-mode input validation (skipped under jit, where values are unknown)."""
        if isinstance(input_ids, jax.core.Tracer):
            return
        ids = np.asarray(input_ids)
        counts = (ids == self.spec.video_token_id).sum(axis=1)
        packed = pixel_values is not None and pixel_values.ndim == 6
        frames = pixel_values.shape[-4] if pixel_values is not None else 0
        expected = num_video_tokens(self.spec, frames) if pixel_values is not None else 0
        per_row = pixel_values.shape[1] if packed else 1
        for row, count in enumerate(counts):
            ok = count in (0, expected) or (packed and count % expected == 0 and count <= per_row * expected)
            if not ok:
                what = f"a multiple <= {per_row} x {expected}" if packed else f"{expected}"
                raise ValueError(f"input_ids row {row}: {count} video slots (id {self.spec.video_token_id}); "
                                 f"expected {what} (num_video_tokens for the given pixel_values) or 0")
        bad = (ids != self.spec.video_token_id) & ((ids < 0) | (ids >= self.spec.text.vocab_size))
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"input_ids[{row}, {col}] = {ids[row, col]} is outside the vocabulary "
                             f"[0, {self.spec.text.vocab_size})")

    def embed_inputs(self, input_ids, pixel_values=None):
        """Token embeddings with the video tokens scattered into the placeholder slots, and the slot mask."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {input_ids.shape}")
        if pixel_values is not None and pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"pixel_values batch {pixel_values.shape[0]} != input_ids batch {input_ids.shape[0]}")
        if pixel_values is not None and pixel_values.shape[-4] == 0:
            # Zero frames (a text-only run, config.data.num_frames = 0): no video tokens, and no vision tower pass.
            pixel_values = None
        self._check_slots(input_ids, pixel_values)
        slots = input_ids == self.spec.video_token_id
        # The placeholder id may be negative (-200 for llava_qwen): look up id 0 there instead.
        embeds = self.llm.embed_tokens(jnp.where(slots | (input_ids < 0), 0, input_ids))
        if pixel_values is not None:
            embeds = splice_video_tokens(embeds, slots, self.video_tokens(pixel_values))
        return constrain(embeds, ("batch", "seq", "act_embed"), self.rules), slots

    # ---- heads ----------------------------------------------------------------------------------
    def lm_logits(self, hidden):
        """float32 logits from final-norm hidden states (any leading shape)."""
        if self.spec.text.tie_word_embeddings:
            return self.llm.embed_tokens.attend(hidden, out_dtype=jnp.float32)
        return self.lm_head(hidden, out_dtype=jnp.float32)

    @staticmethod
    def action_positions(slots, video_tokens_per_video=None, videos_per_row=None):
        """Sequence index of each sample's action token, the LAST video slot: int32 [B, 1].

        Packed rows (videos_per_row=P): video p's action token is the row's ((p+1)*N)-th slot (N video tokens
        per video) -> [B, P]; a video slot the row does not use reads position 0 (its label is -1).
        """
        if videos_per_row is not None:
            rank = jnp.cumsum(slots.astype(jnp.int32), axis=1) - 1
            target = (jnp.arange(videos_per_row, dtype=jnp.int32) + 1) * video_tokens_per_video - 1
            at = slots[:, None, :] & (rank[:, None, :] == target[None, :, None])     # [B, P, L]
            return jnp.argmax(at, axis=-1).astype(jnp.int32)
        length = slots.shape[1]
        return (length - 1 - jnp.argmax(slots[:, ::-1], axis=1))[:, None].astype(jnp.int32)

    def _video_layout(self, pixel_values):
        """(video tokens per video, videos per row) of a packed batch, else (None, None)."""
        if pixel_values is not None and pixel_values.ndim == 6:
            return num_video_tokens(self.spec, pixel_values.shape[2]), pixel_values.shape[1]
        return None, None

    def action_logits(self, hidden, slots, video_tokens_per_video=None, videos_per_row=None):
        """Verb/noun/action logits from the hidden state at each sample's action token: [B, C], packed
        rows (videos_per_row=P) [B, P, C]."""
        pos = self.action_positions(slots, video_tokens_per_video, videos_per_row)
        h = jnp.take_along_axis(hidden, pos[..., None], axis=1)                       # [B, P, H]
        return self._heads(h, packed=videos_per_row is not None)

    def _heads(self, h, packed: bool):
        """The heads on action-token states [B, P, H]: [B, P, C] for packed rows, else [B, C] (P = 1)."""
        return self.action(h if packed else h[:, 0])

    def video_action_logits(self, hidden, slots, pixel_values):
        """action_logits for the batch layout of `pixel_values`: [B, F, ...] one video per row -> [B, C];
        packed [B, P, F, ...] -> [B, P, C]."""
        return self.action_logits(hidden, slots, *self._video_layout(pixel_values))

    def layer_action_logits(self, layer_states, pixel_values):
        """The heads on every entry of hidden_states(..., action_layers=True)'s per-layer states: a tuple of
        (verb, noun, action) logits per entry, each shaped as video_action_logits'."""
        packed = self._video_layout(pixel_values)[1] is not None
        return tuple(self._heads(s, packed) for s in layer_states)

    @staticmethod
    def check_right_padded(attention_mask):
        """Eager-mode check that each mask row is 1...1 0...0 (attention uses per-sample key lengths)."""
        if attention_mask is None or isinstance(attention_mask, jax.core.Tracer):
            return
        mask = np.asarray(attention_mask).astype(bool)
        bad = (mask[:, 1:] & ~mask[:, :-1]).any(axis=1)
        if bad.any():
            raise ValueError(f"attention_mask row {int(np.argmax(bad))} is not right-padded (a 1 follows a 0); "
                             "the model expects real tokens first, padding last")

    def hidden_states(self, input_ids, pixel_values=None, attention_mask=None, segment_ids=None, positions=None,
                      action_layers: bool = False):
        """Final-norm hidden states [B, L, H] and the video slot mask (for chunked losses).

        Packed rows pass segment_ids [B, L] (1, 2, ... per sample, 0 = padding) and positions [B, L] that
        restart at 0 in every segment (RoPE per sample); attention then stays inside each segment.
        With action_layers, a third value: the hidden states at the action token(s) after the embeddings and
        after every decoder layer (HF's output_hidden_states there), [layers + 1, B, P, H].
        """
        self.check_right_padded(attention_mask)
        embeds, slots = self.embed_inputs(input_ids, pixel_values)
        bsz, length = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (bsz, length))
        kv_lengths = None if attention_mask is None else attention_mask.astype(jnp.int32).sum(-1)
        if not action_layers:
            return self.llm(embeds, positions, kv_lengths, segment_ids), slots
        tap = self.action_positions(slots, *self._video_layout(pixel_values))
        hidden, taps = self.llm(embeds, positions, kv_lengths, segment_ids, tap=tap)
        return hidden, slots, taps

    def __call__(self, input_ids, pixel_values=None, attention_mask=None, segment_ids=None,
                 positions=None) -> ModelOutput:
        hidden, slots = self.hidden_states(input_ids, pixel_values, attention_mask, segment_ids, positions)
        logits = self.lm_logits(hidden)
        if not self.spec.action_token:
            return ModelOutput(logits=logits)
        verb, noun, action = self.video_action_logits(hidden, slots, pixel_values)
        return ModelOutput(logits=logits, verb_logits=verb, noun_logits=noun, action_logits=action)
