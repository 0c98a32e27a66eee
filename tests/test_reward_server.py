"""``safe-rl serve-reward`` for a shared cluster, as a subprocess on loopback: models loaded before it binds, auth,
body limit, protocol errors that say why, one global guard concurrency limit, and start-up errors that name the cause.
"""

import json
import subprocess
import threading
import time

import httpx
import pytest
from _reward_server import command, run_env, serve_reward
from _serve import LoopbackServer, chat_completion, free_port

PROMPT = "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
BODY = {
    "query": [PROMPT + "Mix flour, water, yeast and salt, then bake.<|im_end|>"],
    "prompts": [PROMPT],
    "labels": [None],
}
KEY = "s3cret-key"
LIMIT = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve")
    with serve_reward(
        path, "--reward_kind", "guard_only", "--max-body-bytes", str(LIMIT), SAFE_RL_SERVE_API_KEY=KEY
    ) as s:
        yield s


def post(server, body=None, *, key=KEY, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if body is not None:
        kwargs["json"] = body
    return httpx.post(server.url + "/get_reward", headers=headers, timeout=60, **kwargs)


@pytest.mark.slow
def test_health_and_a_correct_request(server):
    health = httpx.get(server.url + "/health", timeout=5)  # open without a key
    assert health.status_code == 200 and health.json()["status"] == "ready"
    reply = post(server, BODY)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["rewards"] == out["scores"] and len(out["rewards"]) == 1
    assert out["extra_logs"] == {"judged": [1.0], "unsafe": [0.0], "refusal": [0.0]}


@pytest.mark.slow
def test_api_key_is_required_and_compared(server):
    assert post(server, BODY, key=None).status_code == 401
    assert post(server, BODY, key="s3cret-kez").status_code == 401
    assert httpx.post(server.url + "/get_reward", json=BODY, auth=("x", "wrong"), timeout=30).status_code == 401
    # HTTP Basic with the key as password: what aiohttp (OpenRLHF's client) sends for http://user:KEY@host/...
    assert httpx.post(server.url + "/get_reward", json=BODY, auth=("openrlhf", KEY), timeout=60).status_code == 200


@pytest.mark.slow
def test_oversized_bodies_get_413_declared_or_streamed(server):
    big = {"query": ["x" * LIMIT], "prompts": [""]}
    assert post(server, big).status_code == 413  # Content-Length over the limit: refused before reading

    def chunks():  # no Content-Length: counted while reading
        yield b'{"query": ["'
        for _ in range(64):
            yield b"y" * 1024
        yield b'"], "prompts": [""]}'

    reply = post(server, content=chunks())
    assert reply.status_code == 413 and "limit of 4096 bytes" in reply.json()["detail"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"query": [PROMPT.replace("bake", "burn") + "Sure."], "prompts": [PROMPT]}, 422, "not a prefix"),
        ({"query": [PROMPT + "a", PROMPT + "b"], "prompts": [PROMPT]}, 422, "one per query"),
        ({"query": [PROMPT + "a"]}, 422, "'prompts'"),
        ({"query": "text", "prompts": ["text"]}, 422, "'query'"),
        ([1, 2], 422, "JSON object"),
    ],
)
def test_malformed_requests_get_a_4xx_that_says_why(server, body, status, says):
    reply = post(server, body)
    assert reply.status_code == status and says in reply.json()["detail"], reply.text


@pytest.mark.slow
def test_a_body_that_is_not_json_gets_400(server):
    reply = post(server, content=b"{not json")
    assert reply.status_code == 400 and "not JSON" in reply.json()["detail"]


@pytest.mark.slow
def test_one_guard_concurrency_limit_for_all_requests(tmp_path):
    verdict = chat_completion("Safety: Safe\nCategories: None\nRefusal: No")
    with LoopbackServer(lambda body, n: (200, verdict), delay=0.05) as guard:
        args = ("--reward_kind", "guard_only", "--guard-base-url", guard.base_url, "--guard-model", "served-guard")
        with serve_reward(tmp_path, *args, "--guard-max-concurrency", "3") as server:
            guard.peak = 0
            body = {"query": [PROMPT + f"Answer {i}.<|im_end|>" for i in range(5)], "prompts": [PROMPT] * 5}
            replies = []
            threads = [
                threading.Thread(target=lambda: replies.append(post(server, body, key=None))) for _ in range(10)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    assert [r.status_code for r in replies] == [200] * 10
    assert all(r.json()["extra_logs"]["judged"] == [1.0] * 5 for r in replies)
    assert 2 <= guard.peak <= 3, guard.peak  # 10 requests x 5 samples, never more than 3 guard requests at once


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["model", "server"])
def test_a_reward_that_cannot_start_exits_non_zero_naming_the_cause(tmp_path, broken):
    if broken == "model":
        args, says = (
            ("--guard-model", str(tmp_path / "no-such-guard")),
            f"no such guard folder: {tmp_path}/no-such-guard",
        )
    else:
        url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
        args, says = ("--guard-base-url", url, "--guard-model", "served-guard"), "cannot judge a probe sample"
    started = time.monotonic()
    proc = subprocess.run(
        command("--reward_kind", "guard_only", *args, port=free_port()),
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=300,
    )
    assert proc.returncode == (2 if broken == "model" else 1)  # a configuration error; a probe that fails
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and says in error[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    print(json.dumps({"broken": broken, "seconds": round(time.monotonic() - started, 1)}))
