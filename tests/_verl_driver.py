"""Drive verl 0.9.1's own reward loop over our reward function, in a fresh process (run by tests/test_verl.py).

What is verl's and what is ours:

* the configuration is verl's ``ppo_trainer.yaml`` composed by Hydra with the README's keys (``reward.*``);
* ``RewardLoopManager`` (verl.experimental.reward_loop) starts ``reward.num_workers`` ``RewardLoopWorker`` Ray actors;
  each loads our function with verl's own loader (``get_custom_reward_fn``: ``pkg://rewards.integrations.verl``), runs
  verl's default ``naive`` reward manager, and scores every sample of its chunk concurrently (``compute_score_batch``
  gathers one task per sample; a sync function runs on the actor's executor threads); the manager places each score
  at the last valid response token (``assemble_rm_scores``) and collects the extra-info keys of the FIRST sample;
* the batch is a ``DataProto`` laid out as verl's trainer lays it out: left-padded prompts, right-padded responses,
  an attention mask over both, ``data_source``, ``reward_model`` and ``extra_info`` (our prompt) per row.

Nothing here imports vLLM (verl's reward path does not need it). Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

T0 = time.monotonic()


def verl_config(name: str, policy_dir: str, workers: int):
    import verl.trainer.main_ppo as main_ppo
    from hydra import compose, initialize_config_dir

    overrides = [  # the README's keys, as on verl's command line
        "reward.custom_reward_function.path=pkg://rewards.integrations.verl",
        f"reward.custom_reward_function.name={name}",
        "+reward.custom_reward_function.reward_kwargs.reward=hybrid",
        f"reward.num_workers={workers}",
        f"actor_rollout_ref.model.path={policy_dir}",
    ]
    folder = os.path.join(os.path.dirname(main_ppo.__file__), "config")
    with initialize_config_dir(config_dir=folder, version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def trainer_batch(tokenizer, rows: list[tuple[list[dict], str]]):
    """A DataProto as verl's trainer builds it: prompts left-padded, responses right-padded (eos-terminated)."""
    from tensordict import TensorDict
    from verl import DataProto

    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m, _ in rows]
    prompts = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    responses = [tokenizer.encode(r, add_special_tokens=False) + [tokenizer.eos_token_id] for _, r in rows]
    plen, rlen = max(map(len, prompts)) + 1, max(map(len, responses)) + 3
    pad = tokenizer.pad_token_id
    prompt_ids = torch.tensor([[pad] * (plen - len(p)) + p for p in prompts])
    response_ids = torch.tensor([r + [pad] * (rlen - len(r)) for r in responses])
    mask = torch.tensor(
        [
            [0] * (plen - len(p)) + [1] * len(p) + [1] * len(r) + [0] * (rlen - len(r))
            for p, r in zip(prompts, responses, strict=True)
        ]
    )
    batch = TensorDict(
        {
            "prompts": prompt_ids,
            "responses": response_ids,
            "input_ids": torch.cat([prompt_ids, response_ids], dim=1),
            "attention_mask": mask,
        },
        batch_size=len(rows),
    )
    non_tensor = {
        "data_source": np.array(["wildjailbreak"] * len(rows), dtype=object),
        "reward_model": np.array([{"ground_truth": None, "style": "model"} for _ in rows], dtype=object),
        "extra_info": np.array([{"prompt": m, "index": i} for i, (m, _) in enumerate(rows)], dtype=object),
    }
    return DataProto(batch=batch, non_tensor_batch=non_tensor), [len(r) for r in responses]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", nargs="+", default=["compute_score_async", "compute_score"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", required=True, help="JSON file: [[messages, completion], ...]")
    args = parser.parse_args()

    import ray
    from transformers import AutoTokenizer

    from rewards.loading import resolve_model_name

    policy_dir = resolve_model_name("toy:policy")
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    rows = [(m, c) for m, c in json.load(open(args.rows))]
    data, response_lengths = trainer_batch(tokenizer, rows)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from verl.experimental.reward_loop import RewardLoopManager

    out: dict = {"response_lengths": response_lengths, "runs": {}}
    for name in args.names:
        started = time.monotonic()
        manager = RewardLoopManager(verl_config(name, policy_dir, args.workers))
        result = manager.compute_rm_score(data)
        scores = result.batch["rm_scores"]
        out["runs"][name] = {
            "nonzero_at": [row.nonzero().flatten().tolist() for row in scores],
            "scores": [float(row.sum()) for row in scores],
            "extra_keys": result.meta_info["reward_extra_keys"],
            "extra": {
                k: [float(v) for v in result.non_tensor_batch[k]] for k in result.meta_info["reward_extra_keys"]
            },
            "seconds": time.monotonic() - started,
        }
        for worker in manager.reward_loop_workers:  # the next manager names its workers alike
            ray.kill(worker)
        time.sleep(0.5)
    ray.shutdown()

    # The project's own judgement of the same (prompt, decoded response), in this process.
    from rewards.presets import reward_from_env

    decoded = [
        tokenizer.decode(data.batch["responses"][i][:n], skip_special_tokens=True)
        for i, n in enumerate(response_lengths)
    ]
    details = reward_from_env("hybrid").judge([m for m, _ in rows], decoded)
    out["decoded"] = decoded
    out["expected"] = [d.reward for d in details]
    out["expected_failures"] = [d.failure for d in details]
    out["seconds"] = time.monotonic() - T0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
