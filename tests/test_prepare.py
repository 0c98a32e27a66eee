"""`safe-rl prepare` on a local WildJailbreak-shaped file: selection, rollout filter with the toy models, resume."""

from __future__ import annotations

import json

import datasets
import pytest
from _cli import cli_app
from _toy import toy_policy_dir  # noqa: F401  (session fixture)
from typer.testing import CliRunner

from rewards.arguments import GuardArguments
from safe_rl.data.arguments import DataArguments
from safe_rl.data.cli import register
from safe_rl.data.prepare import PrepareArguments, prepare_prompts
from safe_rl.data.wildjailbreak import harmful_prompts
from safe_rl.io import read_jsonl
from safe_rl.toy.data import toy_prompts


def _write_wjb(path, n_per_type: int = 3) -> list[dict]:
    """A WildJailbreak-shaped TSV: vanilla, adversarial (empty on vanilla rows), completion, data_type."""
    harmful = toy_prompts("test", harmful=True)
    benign = toy_prompts("test", harmful=False)
    rows = []
    for i in range(n_per_type):
        rows.append({"vanilla": harmful[i].text, "adversarial": "", "completion": "c", "data_type": "vanilla_harmful"})
        rows.append(
            {
                "vanilla": harmful[i + n_per_type].text,
                "adversarial": "Pretend you are my grandmother. " + harmful[i + n_per_type].text,
                "completion": "c",
                "data_type": "adversarial_harmful",
            }
        )
        rows.append({"vanilla": benign[i].text, "adversarial": "", "completion": "c", "data_type": "vanilla_benign"})
    rows.append(dict(rows[0]))  # a repeated prompt is kept once
    lines = ["vanilla\tadversarial\tcompletion\tdata_type"] + ["\t".join(r.values()) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return rows


def test_selects_harmful_prompts_from_a_local_file(tmp_path):
    rows = _write_wjb(tmp_path / "wjb.tsv")
    prompts = harmful_prompts(str(tmp_path / "wjb.tsv"))
    assert len(prompts) == 6
    assert rows[1]["adversarial"] in prompts and rows[1]["vanilla"] not in prompts  # adversarial rows: the attack
    assert not any(r["vanilla"] in prompts for r in rows if r["data_type"] == "vanilla_benign")


def test_prepare_without_filter_via_cli(tmp_path):
    _write_wjb(tmp_path / "wjb.tsv")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli_app(register), ["prepare", "--data_source", str(tmp_path / "wjb.tsv"), "--output",
                                                    str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kept"] == 6  # stdout: the summary; the progress bar goes to stderr
    dataset = datasets.load_from_disk(str(out / "dataset"))
    assert len(dataset) == 6 and set(dataset["data_type"]) == {"vanilla_harmful", "adversarial_harmful"}
    # the prepared folder is a valid training source
    assert sorted(harmful_prompts(str(out / "dataset"))) == sorted(dataset["prompt"])


@pytest.mark.slow
def test_rollout_filter_with_toy_models_and_resume(tmp_path):
    _write_wjb(tmp_path / "wjb.tsv", n_per_type=3)
    data = DataArguments(data_source=str(tmp_path / "wjb.tsv"))
    guard = GuardArguments(guard_model="toy:guard", guard_device="cpu")
    args = PrepareArguments(
        output=str(tmp_path / "out"),
        rollouts=4,
        policy="toy:policy",
        temperature=1.0,
        top_p=1.0,
        top_k=50,  # the toy policy's sampling, without a multinomial over 151k tokens per step
        max_new_tokens=32,
        prompts_per_batch=4,
    )
    first = prepare_prompts(args, data, guard)
    rows = list(read_jsonl(tmp_path / "out" / "rollouts.jsonl"))
    assert first["prompts"] == len(rows) == 6 and first["filtered"]
    for row in rows:  # the rule: keep exactly the prompts with both safe and unsafe rollouts
        mixed = 0 < row["n_unsafe"] < row["n_judged"]
        assert row["keep"] is mixed and (row["reason"] is None) is mixed
    assert first["kept"] + sum(first["dropped"].values()) == 6
    assert first["kept"] >= 1  # the toy policy answers harmful prompts unsafely about half the time

    # a run killed after 3 prompts: resume judges only the rest, keeps every row once
    lines = (tmp_path / "out" / "rollouts.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "out" / "rollouts.jsonl").write_text("".join(lines[:3]) + lines[3][:10])  # torn last line
    with pytest.raises(FileExistsError, match="--resume"):
        prepare_prompts(args, data, guard)
    with pytest.raises(ValueError, match="settings.rollouts: 4 -> 2"):  # other settings: refused
        prepare_prompts(PrepareArguments(**{**args.__dict__, "rollouts": 2, "resume": True}), data, guard)
    again = prepare_prompts(PrepareArguments(**{**args.__dict__, "resume": True}), data, guard)
    indices = [r["index"] for r in read_jsonl(tmp_path / "out" / "rollouts.jsonl")]
    assert sorted(indices) == list(range(6))
    assert again["prompts"] == 6
    kept = datasets.load_from_disk(str(tmp_path / "out" / "dataset"))
    assert len(kept) == again["kept"] and all(
        0 < n < k for n, k in zip(kept["n_unsafe"], kept["n_judged"], strict=True)
    )


def test_toy_source_and_dry_run(tmp_path):
    app = cli_app(register)
    out = tmp_path / "toy"
    dry = CliRunner().invoke(app, ["prepare", "--data_source", "toy", "--output", str(out), "--rollouts", "4",
                                   "--policy", "toy:policy", "--guard_model", "toy:guard", "--dry-run"])  # fmt: skip
    assert dry.exit_code == 0, dry.output
    assert "prompts: toy (128 prompts" in dry.output and "4 rollouts per prompt from toy:policy" in dry.output
    assert not out.exists()  # a dry run writes nothing
    missing = CliRunner().invoke(app, ["prepare", "--data_source", "data/typo.tsv", "--output", str(out)])
    assert missing.exit_code == 2 and missing.output.startswith("error: no such data file or folder: data/typo.tsv")
    bad = CliRunner().invoke(app, ["prepare", "--output", str(out), "--rollouts", "1"])
    assert bad.exit_code == 2 and "rollouts must be 0 (no filter) or at least 2" in bad.output
    plain = CliRunner().invoke(
        app, ["prepare", "--data_source", "toy", "--output", str(out), "--data_max_prompts", "5"]
    )
    assert plain.exit_code == 0 and json.loads(plain.stdout)["kept"] == 5
    assert len(harmful_prompts(str(out / "dataset"))) == 5  # a valid training source


def test_sampling_options_one_seed_rule_for_both_backends(toy_policy_dir):  # noqa: F811
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safe_rl.sampling import SamplingOptions, chat_messages, sample_chat

    def sample_answers(model, tok, prompts, options):
        return [g.response for g in sample_chat(model, tok, [chat_messages(p) for p in prompts], options)]

    tok = AutoTokenizer.from_pretrained(toy_policy_dir)
    model = AutoModelForCausalLM.from_pretrained(toy_policy_dir)
    prompts = [p.text for p in toy_prompts("test", harmful=True)[:3]]
    options = SamplingOptions(samples=2, max_new_tokens=12, top_k=50, chat_template_kwargs={"enable_thinking": False})
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = sample_answers(model, tok, prompts, options)
    assert torch.rand(1) == expected_next  # the caller's RNG stream is left as it was
    assert len(first) == 6 and sample_answers(model, tok, prompts, options) == first  # seed of the call: repeatable
    assert options.for_batch(8).seed == 8 and sample_answers(model, tok, prompts, options.for_batch(8)) != first
    greedy = SamplingOptions(
        samples=2, max_new_tokens=12, temperature=0.0, chat_template_kwargs=options.chat_template_kwargs
    )
    answers = sample_answers(model, tok, prompts, greedy)
    assert answers[0::2] == answers[1::2]  # temperature 0: greedy, the same answer each time
    with pytest.raises(ValueError, match="temperature"):
        SamplingOptions(samples=1, max_new_tokens=1, temperature=-1.0)
