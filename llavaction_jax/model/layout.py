"""Video token layout: pooled frame grids + image_newline tokens (+ the optional action token)."""
import jax.numpy as jnp


def arrange_video_tokens(features, newline, position: str, action_token=None):
    """features [B, F, R, C, H], newline [H], action_token [1, H] or None -> [B, n_video_tokens, H].

    grid: newline after every row of every frame (LLaVA-Video / LLaVAction); frame: after each frame;
    one_token: one after all frames (LLaVA-OneVision / transformers); no_token: none.
    The action token, when given, is appended after all video tokens.
    """
    b, f, r, c, h = features.shape
    nl = newline.astype(features.dtype)
    if position == "grid":
        tokens = jnp.concatenate([features, jnp.broadcast_to(nl, (b, f, r, 1, h))], axis=3)
        tokens = tokens.reshape(b, f * r * (c + 1), h)
    elif position == "frame":
        tokens = features.reshape(b, f, r * c, h)
        tokens = jnp.concatenate([tokens, jnp.broadcast_to(nl, (b, f, 1, h))], axis=2)
        tokens = tokens.reshape(b, f * (r * c + 1), h)
    elif position == "one_token":
        tokens = jnp.concatenate([features.reshape(b, f * r * c, h), jnp.broadcast_to(nl, (b, 1, h))], axis=1)
    elif position == "no_token":
        tokens = features.reshape(b, f * r * c, h)
    else:
        raise ValueError(f"newline_position={position!r}: expected grid | one_token | frame | no_token")
    if action_token is not None:
        act = jnp.broadcast_to(action_token.astype(tokens.dtype)[None], (b,) + action_token.shape)
        tokens = jnp.concatenate([tokens, act], axis=1)
    return tokens


def splice_video_tokens(text_embeds, slot_mask, video_tokens):
    """Put the k-th video token of each sample into its k-th slot (slot_mask [B, L] True at slots)."""
    rank = jnp.cumsum(slot_mask.astype(jnp.int32), axis=1) - 1
    rank = jnp.clip(rank, 0, video_tokens.shape[1] - 1)
    gathered = jnp.take_along_axis(video_tokens, rank[..., None], axis=1)
    return jnp.where(slot_mask[..., None], gathered.astype(text_embeds.dtype), text_embeds)
