"""The guards: `rewards.guards.gen` (Qwen3Guard-Gen, in-process on `rewards.engine` or behind an OpenAI-compatible
server), `rewards.guards.stream` (Qwen3Guard-Stream, per-token heads) and `rewards.guards.base` (the `Guard`
protocol and the de-duplication every guard shares)."""
