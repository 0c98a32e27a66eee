"""`run_eval` end to end with judges whose outputs the test controls, through every policy and judge backend.

The same seven answers go through: a responses file + in-process WildGuard (a tiny model whose answer is scripted
by a logits processor, so generation, batching, decoding and strict parsing are real); a policy server + the LLM
judge (a loopback OpenAI-compatible server); WildGuard over a server's /completions; and Qwen3Guard-Gen through
the reward component (a tiny random guard: unreadable verdicts, the failure accounting). Every path must give the
hand-computed rates in `_eval.EXPECTED`.
"""

from __future__ import annotations

import json

import pytest
from _eval import (
    BENCHMARK_ROWS,
    EXPECTED,
    REFUSED,
    ScriptedAnswer,
    answer_for_response,
    responses_for,
    shared_tiny_lm,
    wildguard_rule,
    write_benchmark,
)
from _serve import LoopbackServer, build_tiny_guard, chat_completion

from rewards.conversation import split_thinking
from safe_rl.evaluation.judges.wildguard import WildGuardJudge, format_wildguard_input
from safe_rl.evaluation.report import load_run, runs_markdown
from safe_rl.evaluation.run import EvalConfig, run_eval
from safe_rl.io import read_jsonl


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, qwen_tokenizer_path):
    return shared_tiny_lm(tmp_path_factory, qwen_tokenizer_path)


@pytest.fixture()
def files(tmp_path):
    bench = write_benchmark(tmp_path / "bench.jsonl")
    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(json.dumps(r) + "\n" for r in responses_for()))
    return bench, responses


def assert_expected(metrics):
    for name, (k, n) in EXPECTED.items():
        assert (metrics["rates"][name]["k"], metrics["rates"][name]["n"]) == (k, n), name


def test_responses_file_with_in_process_wildguard(tmp_path, files, tiny_lm_dir, qwen_tokenizer):
    bench, responses = files
    judge_dir = tiny_lm_dir
    script = ScriptedAnswer(qwen_tokenizer, wildguard_rule)
    judge = WildGuardJudge(str(judge_dir), batch_size=3, logits_processor=script)
    config = EvalConfig(output=str(tmp_path / "run"), responses=str(responses), benchmark=str(bench),
                        judge_model=str(judge_dir), progress=False)  # fmt: skip
    metrics = run_eval(config, judge=judge)
    assert_expected(metrics)
    # The model read exactly WildGuard's format, one exchange per row, with the answer (thinking removed).
    answers = {r["id"]: split_thinking(r["response"]).answer for r in responses_for()}
    assert sorted(script.seen) == sorted(format_wildguard_input(p, answers[i]) for i, p, _, _ in BENCHMARK_ROWS)
    samples = {r["id"]: r for r in read_jsonl(tmp_path / "run" / "samples.jsonl")}
    assert samples["h4"]["parse_error"] and samples["h4"]["raw"] == "The assistant seems fine to me."
    assert samples["h3"]["answer"] == "" and samples["h3"]["refusal"] is None
    assert samples["h2"]["harmful_response"] is True and samples["b2"]["refusal"] is True
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "done" and run["policy"]["kind"] == "responses_file"
    assert run["judge"]["decoding"] == {"greedy": True, "max_new_tokens": 128}
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "Safety (WildGuard) ↑" in summary and "60.0 [" in summary  # safety 3/5


def policy_and_judge_server(body, n):
    """A loopback server acting as the policy (think mode: reasoning apart) and as the LLM judge."""
    content = body["messages"][-1]["content"]
    if "<BEGIN ASSISTANT RESPONSE>" in content:
        response = content.split("<BEGIN ASSISTANT RESPONSE>\n", 1)[1].split("\n<END ASSISTANT RESPONSE>", 1)[0]
        return 200, chat_completion("<think>\nLet me judge.\n</think>\n\n" + answer_for_response(response))
    if "ransomware" in content and not policy_and_judge_server.failed:  # one transient failure: retried
        policy_and_judge_server.failed = True
        return 503, b'{"error": "busy"}'
    answer = {r["prompt"]: r["response"] for r in responses_for()}[content]
    split = split_thinking(answer)
    message = {"role": "assistant", "content": split.answer, "reasoning_content": split.thinking}
    reply = {"choices": [{"message": message, "finish_reason": "stop"}], "usage": {"completion_tokens": 7}}
    return 200, json.dumps(reply).encode()


def test_server_policy_and_llm_judge(tmp_path, files):
    bench, _ = files
    policy_and_judge_server.failed = False
    with LoopbackServer(policy_and_judge_server) as server:
        config = EvalConfig(output=str(tmp_path / "run"), policy="stub/policy", base_url=server.base_url, think=True,
                            benchmark=str(bench), judge="llm", judge_model="stub/Qwen3-235B",
                            judge_base_url=server.base_url, progress=False)  # fmt: skip
        metrics = run_eval(config)
    assert_expected(metrics)
    policy_requests = [r for r in server.requests if "<BEGIN" not in r["messages"][-1]["content"]]
    assert len(policy_requests) == 8  # 7 prompts + 1 retry
    assert {(r["temperature"], r["top_p"], r["top_k"], r["max_tokens"]) for r in policy_requests} == {
        (0.6, 0.95, 20, 2048)
    }
    assert all(r["chat_template_kwargs"] == {"enable_thinking": True} for r in policy_requests)
    judge_requests = [r for r in server.requests if "<BEGIN" in r["messages"][-1]["content"]]
    assert len(judge_requests) == 7 and {r["temperature"] for r in judge_requests} == {0.0}
    responses = {r["id"]: r for r in read_jsonl(tmp_path / "run" / "responses.jsonl")}
    assert responses["h3"]["thinking"] == "The user wants to hurt an animal." and responses["h3"]["answer"] == ""
    run = load_run(tmp_path / "run")
    assert run.judge_label == "Qwen3-235B judge" and run.mode == "think" and run.label == "policy"

    # The same answers judged again from the run's responses file keep the run's model label and mode.
    again = EvalConfig(output=str(tmp_path / "again"), responses=str(tmp_path / "run" / "responses.jsonl"),
                       benchmark=str(bench), judge_model="wg", judge_base_url="http://127.0.0.1:9/v1")  # fmt: skip
    assert (again.display_label, again.mode) == ("policy", "think")


def test_wildguard_server_and_resume_after_failures(tmp_path, files):
    bench, responses = files
    state = {"down": True}

    def wildguard_server(body, n):
        if state["down"] and "wifi" in body["prompt"]:
            return 400, b'{"error": "bad request"}'
        return 200, json.dumps(
            {"choices": [{"text": wildguard_rule(body["prompt"]), "finish_reason": "stop"}]}
        ).encode()

    config = dict(output=str(tmp_path / "run"), responses=str(responses), benchmark=str(bench), judge_model="wg",
                  progress=False)  # fmt: skip
    with LoopbackServer(wildguard_server) as server:
        with pytest.raises(RuntimeError, match="1 answer"):
            run_eval(EvalConfig(**config, judge_base_url=server.base_url))
        assert len(list(read_jsonl(tmp_path / "run" / "samples.jsonl"))) == 6  # the failed one is not written
        state["down"] = False
        metrics = run_eval(EvalConfig(**config, judge_base_url=server.base_url, resume=True))
    assert_expected(metrics)
    ids = [r["id"] for r in read_jsonl(tmp_path / "run" / "samples.jsonl")]
    assert sorted(ids) == sorted(i for i, *_ in BENCHMARK_ROWS)
    answers = {r["id"]: split_thinking(r["response"]).answer for r in responses_for()}
    expected_prompt = format_wildguard_input(BENCHMARK_ROWS[0][1], answers["h1"])
    first = next(r for r in server.requests if r["prompt"] == expected_prompt)
    assert (first["model"], first["temperature"], first["max_tokens"]) == ("wg", 0.0, 128)


def test_qwen3guard_judge_is_labelled_and_failures_counted(tmp_path, files, qwen_tokenizer_path):
    bench, responses = files
    guard_dir = build_tiny_guard(tmp_path / "guard", qwen_tokenizer_path)  # random weights: unreadable verdicts
    config = EvalConfig(output=str(tmp_path / "run"), responses=str(responses), benchmark=str(bench),
                        judge="qwen3guard", judge_model=str(guard_dir), judge_batch_size=4, progress=False)  # fmt: skip
    metrics = run_eval(config)
    assert metrics["counts"]["judge_failures"] == 7
    assert metrics["rates"]["safety"]["value"] == 0.0  # never a silent "safe"
    assert metrics["rates"]["refusal_benign"]["value"] == 1.0 and metrics["rates"]["refusal_harmful"]["value"] == 0.0
    assert metrics["judge"]["independent_of_training"] is False
    report = runs_markdown([load_run(tmp_path / "run")])
    assert "Safety (Qwen3Guard†)" in report and "NOT independent of training" in report


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="--policy"):
        EvalConfig(output=str(tmp_path))
    with pytest.raises(ValueError, match="judge must be one of"):
        EvalConfig(output=str(tmp_path), policy="p", judge="gpt")
    with pytest.raises(ValueError, match="--judge-base-url"):
        EvalConfig(output=str(tmp_path), policy="p", judge="llm")
    with pytest.raises(ValueError, match="n_boot"):
        EvalConfig(output=str(tmp_path), policy="p", n_boot=50)  # before anything is generated
    with pytest.raises(ValueError, match="top_p"):
        EvalConfig(output=str(tmp_path), policy="p", top_p=1.5)
    with pytest.raises(ValueError, match="--retry-failed"):
        EvalConfig(output=str(tmp_path), policy="p", retry_failed=True)
    assert EvalConfig(output=str(tmp_path), policy="p").benchmark == "wildjailbreak"


def test_resume_fingerprint_broken_lines_and_retry_failed(tmp_path, files):
    """The verdicts file records its input and settings: a resume against other answers is refused; a broken line
    is named with its file and line; --retry-failed judges the unreadable verdicts again."""
    bench, responses = files
    run = tmp_path / "run"
    calls = {"n": 0}

    def wildguard_server(body, n):
        calls["n"] += 1
        text = wildguard_rule(body["prompt"])
        if "GARBLE" in body["prompt"] and state["fixed"]:
            text = REFUSED
        return 200, json.dumps({"choices": [{"text": text, "finish_reason": "stop"}]}).encode()

    state = {"fixed": False}
    with LoopbackServer(wildguard_server) as server:
        config = dict(output=str(run), responses=str(responses), benchmark=str(bench), judge_model="wg",
                      judge_base_url=server.base_url, progress=False)  # fmt: skip
        first = run_eval(EvalConfig(**config))
        assert first["counts"]["judge_failures"] == 1  # h4: unreadable
        # other answers to the same prompts: refused, naming what differs
        other = tmp_path / "other.jsonl"
        other.write_text("".join(json.dumps({**r, "response": "Sorry."}) + "\n" for r in responses_for()))
        with pytest.raises(ValueError, match="responses_sha256"):
            run_eval(EvalConfig(**{**config, "responses": str(other)}, resume=True))
        # a broken line (not the torn last one) is an error naming the file and the line
        lines = (run / "samples.jsonl").read_text().splitlines(keepends=True)
        (run / "samples.jsonl").write_text(lines[0] + "{broken\n" + "".join(lines[1:]))
        with pytest.raises(ValueError, match=r"samples.jsonl line 2: not a JSON object"):
            run_eval(EvalConfig(**config, resume=True))
        (run / "samples.jsonl").write_text("".join(lines))
        # --retry-failed: the unreadable verdict is asked again (and now reads), nothing else is
        state["fixed"], before = True, calls["n"]
        again = run_eval(EvalConfig(**config, resume=True, retry_failed=True))
    assert calls["n"] - before == 1 and again["counts"]["judge_failures"] == 0
    ids = [r["id"] for r in read_jsonl(run / "samples.jsonl")]
    assert sorted(ids) == sorted(i for i, *_ in BENCHMARK_ROWS)
