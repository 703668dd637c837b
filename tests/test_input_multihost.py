"""Two JAX processes (jax.distributed on localhost CPU, 2 devices each) read disjoint, complete shares.

The test writes the data, then runs this file as a worker in 2 subprocesses; each worker writes what it saw.
"""
import json
import os
import random
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F, S = 4, 32


def _config(files):
    from configs import tiny
    cfg = tiny.get_config()
    cfg.data.train_files = files
    cfg.data.length_buckets = (192, 256)
    cfg.data.global_batch_size = 8
    return cfg


def worker(pid, port, workdir):
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, REPO_ROOT)
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh

    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                               initialization_timeout=60)
    from llavaction_jax.input import eval_iterator, train_iterator
    from llavaction_jax.input.tokenizer import Tokenizer

    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 1), ("data", "fsdp", "tensor"))
    tok = Tokenizer.load(os.path.join(workdir, "tok"), video_token_id=3)
    out = {}
    # 4 files: sharded by file (2 each); 3 files: sharded by record (every other record).
    for name in ("by_file", "by_record"):
        it = train_iterator.make_train_iterator(_config(os.path.join(workdir, name, "train-*")), mesh, tok, seed=0)
        batches = []
        for _ in range(3):
            batch = next(it)
            actions = multihost_utils.process_allgather(batch["actions"], tiled=True)
            batches.append({"ids": list(it.last_ids), "shape": list(batch["input_ids"].shape),
                            "actions": np.asarray(actions).tolist()})
        out[name] = {"batches": batches, "state": it.get_state(), "local_batch": it.local_batch_size}
    evals = eval_iterator.EvalIterator(_config(""), mesh, tok, os.path.join(workdir, "eval", "eval-*"), batch_size=8)
    out["eval"] = [{"ids": ids, "valid": np.asarray(multihost_utils.process_allgather(b["valid"], tiled=True)).tolist()}
                   for b, ids in evals]
    with open(os.path.join(workdir, f"host{pid}.json"), "w") as f:
        json.dump(out, f)
    jax.distributed.shutdown()


def test_two_hosts_read_every_sample_exactly_once(tmp_path):
    from llavaction_jax.input import synthetic_records
    from llavaction_jax.input.tokenizer import train_tiny_tokenizer
    from tests.test_input_tokenizer import ek100_texts

    samples = {}
    # Odd samples are long: with 4 files, host 1 (files 1, 3) needs a longer bucket than host 0.
    for name, shards in (("by_file", 4), ("by_record", 3)):
        _, written = synthetic_records.write_shards(str(tmp_path / name), 24, shards, F, S,
                                            extra_words_fn=lambda i: 30 if i % 2 else 0)
        samples[name] = {s["id"]: s for s in written}
    _, eval_samples = synthetic_records.write_shards(str(tmp_path / "eval"), 19, 3, F, S, prefix="eval", id_prefix="e")
    texts = ek100_texts(300) + [c["value"] for s in samples["by_file"].values() for c in s["conversations"]]
    train_tiny_tokenizer(texts, str(tmp_path / "tok"), vocab_size=512)

    port = random.randint(20000, 40000)
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), str(pid), str(port), str(tmp_path)],
                              cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for pid in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0].decode(errors="replace"))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    hosts = [json.load(open(tmp_path / f"host{pid}.json")) for pid in range(2)]

    from llavaction_jax.input import batching, text_stage
    from llavaction_jax.input.tokenizer import Tokenizer
    cfg = _config("")
    text = text_stage.TextStage(cfg, Tokenizer.load(str(tmp_path / "tok"), video_token_id=3))

    def bucket(sample_ids, table):
        longest = max(len(text(json.dumps(table[sid]), True)[1]) for sid in sample_ids)
        return batching.pad_length(longest, cfg.data.length_buckets, cfg.data.max_length)

    differing = 0
    for name in ("by_file", "by_record"):
        seen = [[sid for b in h[name]["batches"] for sid in b["ids"]] for h in hosts]
        assert hosts[0][name]["local_batch"] == 4
        assert len(seen[0]) == len(seen[1]) == 12
        assert not set(seen[0]) & set(seen[1])                        # disjoint
        assert sorted(seen[0] + seen[1]) == sorted(samples[name])      # complete: one epoch = 3 global batches
        assert hosts[0][name]["state"] == hosts[1][name]["state"]      # the resume state is host-independent
        for b0, b1 in zip(hosts[0][name]["batches"], hosts[1][name]["batches"]):
            assert b0["shape"] == b1["shape"]                          # hosts agreed on the padded length
            own = bucket(b0["ids"], samples[name]), bucket(b1["ids"], samples[name])
            assert b0["shape"][1] == max(own)
            differing += own[0] != own[1]
            # Global rows 0-3 come from host 0, rows 4-7 from host 1.
            want = [[samples[name][sid][k] for k in ("verb_class", "noun_class", "action_id")]
                    for sid in b0["ids"] + b1["ids"]]
            assert b0["actions"] == b1["actions"] == want

    assert differing > 0          # the agreement was really needed in some batch

    evals = [[sid for b in h["eval"] for sid in b["ids"] if sid is not None] for h in hosts]
    assert len(hosts[0]["eval"]) == len(hosts[1]["eval"]) == 3
    assert not set(evals[0]) & set(evals[1]) and sorted(evals[0] + evals[1]) == sorted(s["id"] for s in eval_samples)
    assert sum(sum(b["valid"]) for b in hosts[0]["eval"]) == 19


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
