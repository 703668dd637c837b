"""Video token layout: pooled frame grids + image_newline tokens (+ the optional action token).

One description per newline position (`LAYOUTS`) gives both the token count (`count_video_tokens`, used by the
input pipeline to reserve slots) and the arrangement (`arrange_video_tokens`, used by the model), so the two
cannot disagree.
"""
import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class NewlineLayout:
    after_row: bool     # a newline after every pooled row of every frame
    after_frame: bool   # ... after every frame
    after_video: bool   # ... once, after all frames


LAYOUTS = {
    "grid": NewlineLayout(after_row=True, after_frame=False, after_video=False),        # LLaVA-Video / LLaVAction
    "frame": NewlineLayout(after_row=False, after_frame=True, after_video=False),
    "one_token": NewlineLayout(after_row=False, after_frame=False, after_video=True),  # LLaVA-OneVision / HF
    "no_token": NewlineLayout(after_row=False, after_frame=False, after_video=False),
}


def layout(position: str) -> NewlineLayout:
    try:
        return LAYOUTS[position]
    except KeyError:
        raise ValueError(f"newline_position={position!r}: expected one of {' | '.join(LAYOUTS)}") from None


def count_video_tokens(position: str, frames: int, rows: int, cols: int, action_token: bool) -> int:
    lay = layout(position)
    per_frame = rows * (cols + lay.after_row) + lay.after_frame
    return frames * per_frame + lay.after_video + int(action_token)


def arrange_video_tokens(features, newline, position: str, action_token=None):
    """features [B, F, R, C, H], newline [H], action_token [1, H] or None -> [B, n_video_tokens, H].

    Newlines go where LAYOUTS[position] says; the action token, when given, after all video tokens.
    """
    lay = layout(position)
    b, f, r, c, h = features.shape
    nl = newline.astype(features.dtype)
    tokens = features
    if lay.after_row:
        tokens = jnp.concatenate([tokens, jnp.broadcast_to(nl, (b, f, r, 1, h))], axis=3)
    tokens = tokens.reshape(b, f, -1, h)
    if lay.after_frame:
        tokens = jnp.concatenate([tokens, jnp.broadcast_to(nl, (b, f, 1, h))], axis=2)
    tokens = tokens.reshape(b, -1, h)
    if lay.after_video:
        tokens = jnp.concatenate([tokens, jnp.broadcast_to(nl, (b, 1, h))], axis=1)
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
