"""The jitted train step: forward + loss + grads (optionally accumulated over micro-batches) + optimizer.

A pure function of (state, batch) → (state, metrics) with explicit shardings and the state donated, so
the same function runs on CPU, a GPU/TPU pod, and AOT-compiles for a TPU topology (llavaction_jax.aot).
"""
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from llavaction_jax import sharding as shd
from llavaction_jax.input import schema as schema_lib
from llavaction_jax.model.llava import ModelOutput
from llavaction_jax.train import losses
from llavaction_jax.train.optimizer import DEFAULT, FROZEN
from llavaction_jax.train.state import TrainSetup

def batch_specs(config):
    """Key -> rank of the train batch for `config` (input/schema.py; packed when config.data.packing)."""
    return schema_lib.batch_schema(config).ranks()


def batch_shardings(mesh, config):
    return {k: shd.batch_sharding(mesh) for k in batch_specs(config)}


def _split_trainable(params, labels):
    """(trainable, frozen) trees with None where the other side holds the leaf."""
    train = jax.tree.map(lambda p, l: None if l == FROZEN else p, params, labels)
    frozen = jax.tree.map(lambda p, l: p if l == FROZEN else None, params, labels)
    return train, frozen


def _join(a, b):
    return jax.tree.map(lambda x, y: y if x is None else x, a, b, is_leaf=lambda x: x is None)


def _to_micro_batches(batch, accum: int, mesh):
    """[B, ...] → [accum, B/accum, ...] taking every accum-th sample, so each micro-batch stays spread over
    all batch shards (a contiguous split would put a micro-batch on a subset of devices)."""
    spec = PartitionSpec(None, shd.BATCH_AXES)

    def split(x):
        b = x.shape[0]
        x = x.reshape((b // accum, accum) + x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return jax.tree.map(split, batch)


def make_loss_and_grads(setup: TrainSetup, config) -> Callable:
    """fn(params, batch) -> (loss, aux sums, grads of the trainable params, n_tok, n_valid)."""
    accum = int(config.train.grad_accum_steps)
    use_action = bool(config.model.action_token)
    action_weight = float(config.train.action_loss_weight)
    parts = tuple(float(p) for p in config.train.action_loss_parts)
    all_layers = use_action and config.train.action_loss_layers == "all_layers"
    labels = setup.labels
    lm_kwargs = dict(mode=str(config.train.lm_loss), chunk_size=int(config.train.lm_loss_chunk_size),
                     max_supervised=int(config.train.lm_loss_max_supervised))

    def grads_and_loss(params, batch):
        """(loss, aux, grads of the trainable params, n_tok, n_valid) for one GLOBAL batch."""
        n_tok = jnp.maximum(jnp.sum(batch["labels"][:, 1:] != losses.IGNORE_INDEX).astype(jnp.float32), 1.0)
        n_valid = jnp.sum(losses.action_valid(batch["actions"])).astype(jnp.float32)

        def loss_fn(train_params, frozen_params, mb):
            model = setup.merge(_join(train_params, frozen_params))
            # uint8 frames become float32 here, one micro-batch at a time: the step's batch argument stays 4x
            # smaller than normalised frames.
            pixels = schema_lib.normalize_pixels(mb["pixel_values"])
            # LM loss from the hidden states (never [B, L, V] logits unless lm_loss="full"); the action
            # heads read the same hidden states at the action token(s).
            states = model.hidden_states(mb["input_ids"], pixels, mb["attention_mask"], mb.get("segment_ids"),
                                         mb.get("positions"), action_layers=all_layers)
            hidden, slots = states[:2]
            lm_sum, _ = losses.lm_loss_sums_from_hidden(model.lm_logits, hidden, mb["labels"], **lm_kwargs)
            out = (ModelOutput(None, *model.video_action_logits(hidden, slots, pixels))
                   if use_action else None)
            aux = {"lm_sum": lm_sum}
            # Dividing by the global counts makes micro-batch losses (and grads) add up to the full batch's.
            loss = lm_sum / n_tok
            if use_action:
                sums, correct, _ = losses.action_loss_sums(out, mb["actions"])
                per_layer = [losses.combine_action_parts(sums, n_valid, parts)]
                if all_layers:
                    # Also the heads on the action token after the embeddings and after every layer but the last
                    # (whose state is `out`'s input), the losses averaged; the logged CEs stay the last layer's.
                    per_layer += [losses.combine_action_parts(losses.action_loss_sums(
                        ModelOutput(None, *logits), mb["actions"])[0], n_valid, parts)
                        for logits in model.layer_action_logits(states[2][:-1], pixels)]
                loss = loss + action_weight * sum(per_layer) / len(per_layer)
                for name in losses.ACTION_PARTS:
                    aux[f"ce_{name}_sum"] = sums[name]
                    aux[f"correct_{name}"] = correct[name]
            return loss, aux

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        train_p, frozen_p = _split_trainable(params, labels)
        frozen_p = jax.lax.stop_gradient(frozen_p)
        if accum == 1:
            (loss, aux), grads = grad_fn(train_p, frozen_p, batch)
        else:
            micro = _to_micro_batches(batch, accum, setup.mesh)

            def body(carry, mb):
                (l, a), g = grad_fn(train_p, frozen_p, mb)
                acc_l, acc_a, acc_g = carry
                return (acc_l + l, jax.tree.map(jnp.add, acc_a, a), jax.tree.map(jnp.add, acc_g, g)), None

            zeros_g = jax.tree.map(jnp.zeros_like, train_p)
            first = jax.tree.map(lambda x: x[0], micro)
            aux_shapes = jax.eval_shape(lambda: grad_fn(train_p, frozen_p, first)[0][1])
            zeros_a = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shapes)
            (loss, aux, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros_a, zeros_g), micro)
        return loss, aux, grads, n_tok, n_valid

    return grads_and_loss


def make_train_step(setup: TrainSetup, config) -> Callable:
    """The un-jitted step function (see jit_train_step for the sharded, donated version)."""
    use_action = bool(config.model.action_token)
    parts = tuple(float(p) for p in config.train.action_loss_parts)
    labels = setup.labels
    grads_and_loss = make_loss_and_grads(setup, config)
    # The LR reported is the default group's (or the only group's when 'default' is unused).
    lr_fn = setup.schedules.get(DEFAULT) or next(iter(setup.schedules.values()))

    def step(state, batch):
        params = state["params"]
        loss, aux, grads, n_tok, n_valid = grads_and_loss(params, batch)
        frozen_p = _split_trainable(params, labels)[1]
        grad_norm = optax.global_norm(grads)
        grads = _join(grads, jax.tree.map(jnp.zeros_like, frozen_p))
        updates, opt_state = setup.tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1,
                     "rng": jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state["rng"]))[0])}
        metrics = {"loss": loss, "lm_loss": aux["lm_sum"] / n_tok, "grad_norm": grad_norm,
                   "update_norm": optax.global_norm(updates), "param_norm": optax.global_norm(new_params),
                   "lr": lr_fn(state["step"]),
                   "supervised_tokens": n_tok, "tokens": jnp.sum(batch["attention_mask"]).astype(jnp.float32)}
        if use_action:
            denom = jnp.maximum(n_valid, 1.0)
            metrics["action_loss"] = losses.combine_action_parts(
                {k: aux[f"ce_{k}_sum"] for k in losses.ACTION_PARTS}, n_valid, parts)
            for name in losses.ACTION_PARTS:
                metrics[f"ce_{name}"] = aux[f"ce_{name}_sum"] / denom
                metrics[f"acc_{name}"] = aux[f"correct_{name}"] / denom
            metrics["action_samples"] = n_valid
        return new_state, metrics

    return step


def jit_train_step(setup: TrainSetup, config):
    """The sharded, state-donating step, compiled once per (setup, config) and owned by the setup."""
    def make():
        replicated = NamedSharding(setup.mesh, PartitionSpec())
        # One sharding for every batch leaf (a pytree prefix): packed and unpacked batches (e.g. synthetic
        # data under a packing config) run through the same function.
        return jax.jit(make_train_step(setup, config),
                       in_shardings=(setup.shardings, shd.batch_sharding(setup.mesh)),
                       out_shardings=(setup.shardings, replicated), donate_argnums=(0,))
    return setup.compiled("train_step", config, make)
