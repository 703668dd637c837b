"""Rematerialisation: the names given to activations inside a layer, and the policies that use them.

Every layer names its matmul outputs with `checkpoint_name` (MaxText style). A policy says which named values
the backward pass keeps (or offloads to host memory) instead of recomputing; the layer input (the scan carry)
is always kept. The vision tower and the decoder choose their policies separately
(config.model.vision_remat_policy, config.model.remat_policy).
"""
import jax
from jax.ad_checkpoint import checkpoint_name

QKV = ("query_proj", "key_proj", "value_proj")
# The splash kernel's own residuals (its output and logsumexp, named inside the kernel's custom VJP): a policy
# that keeps the attention output must keep these too, or the backward pass reruns the forward kernel.
KERNEL_RESIDUALS = "attention_residuals"
ATTENTION = QKV + ("attention_out", KERNEL_RESIDUALS, "out_proj")
MLP_IN = ("mlp_gate", "mlp_up")          # decoder gate/up, vision fc1: the widest activations of a layer
MLP_OUT = ("mlp_out",)
NAMES = ATTENTION + MLP_IN + MLP_OUT

_cp = jax.checkpoint_policies
# name -> policy (None: no jax.checkpoint at all, every activation stored).
POLICIES = {
    "none": None,
    "full": _cp.nothing_saveable,                                   # recompute the whole layer
    "save_qkv_proj": _cp.save_only_these_names(*QKV),
    # Recompute the MLP's gate/up matmuls only (down_proj's output is never needed by the backward pass).
    "save_dot_except_mlp": _cp.save_only_these_names(*ATTENTION),
    "save_all_named": _cp.save_only_these_names(*NAMES),            # recompute norms and activations only
    "offload_dot_except_mlp": _cp.save_and_offload_only_these_names(
        names_which_can_be_saved=(), names_which_can_be_offloaded=ATTENTION,
        offload_src="device", offload_dst="pinned_host"),
    "dots_saveable": _cp.dots_saveable,
    "dots_with_no_batch_dims_saveable": _cp.dots_with_no_batch_dims_saveable,
}


def name(x, tag: str):
    """Tag an activation for the remat policies (identity in value)."""
    if tag not in NAMES:
        raise ValueError(f"unknown checkpoint name {tag!r}; known: {NAMES}")
    return checkpoint_name(x, tag)
