"""The executor against transformers' reference models (logits), and KV cache take-out/put-back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pdplan.profiles.errors import ConfigError  # noqa: E402
from pdplan.profiles.executor import Executor  # noqa: E402
from pdplan.profiles.kv_cache import KVCache  # noqa: E402
from pdplan.profiles.model_spec import load_model_spec  # noqa: E402

SHAPE = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=97,
    max_position_embeddings=256,
    initializer_range=0.2,  # larger than the default so attention patterns are far from uniform
)
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
PROMPTS = [[5, 9, 2, 11, 3], list(range(1, 41)), [7], [int(t % 97) for t in range(13, 200, 7)]]
TOL = dict(atol=2e-5, rtol=1e-4)


def _config(kind: str):
    if kind == "llama":
        return transformers.LlamaConfig(**SHAPE, rope_theta=1000.0)
    if kind == "llama3":
        return transformers.LlamaConfig(
            **SHAPE, rope_theta=500.0, rope_scaling=dict(LLAMA3_SCALING), tie_word_embeddings=True
        )
    if kind == "qwen2":
        return transformers.Qwen2Config(**SHAPE, rope_theta=10000.0, tie_word_embeddings=True)
    if kind == "qwen3":  # per-head q/k RMSNorm
        return transformers.Qwen3Config(**SHAPE, head_dim=16, rope_theta=10000.0)
    if kind == "qwen3_moe":  # 8 experts, top-2, renormalised (as Qwen3-30B-A3B)
        return transformers.Qwen3MoeConfig(
            **SHAPE,
            head_dim=16,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            norm_topk_prob=True,
        )
    if kind == "qwen2_moe":  # plus a gated shared expert, not renormalised
        return transformers.Qwen2MoeConfig(
            **SHAPE,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
        )
    if kind == "mixtral":  # 4 experts of intermediate_size, top-2
        return transformers.MixtralConfig(
            **SHAPE, num_local_experts=4, num_experts_per_tok=2, sliding_window=None
        )
    assert kind == "mistral"
    return transformers.MistralConfig(**SHAPE, rope_theta=10000.0, sliding_window=None)


_MODELS = {
    "llama": "LlamaForCausalLM",
    "llama3": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
}


def _save_reference(kind: str, folder: Path):
    torch.manual_seed(1234)
    model = getattr(transformers, _MODELS[kind])(_config(kind)).eval()
    with torch.no_grad():  # HF initialises biases to 0 and norms to 1: make them matter
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
    model.save_pretrained(folder, safe_serialization=True)
    return model


def _reference_logits(model, seq: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([seq])).logits[0, -1]


@pytest.mark.parametrize(
    "kind", ["llama", "llama3", "qwen2", "mistral", "qwen3", "qwen3_moe", "qwen2_moe", "mixtral"]
)
def test_logits_match_transformers(kind: str, tmp_path: Path) -> None:
    model = _save_reference(kind, tmp_path)
    spec = load_model_spec(tmp_path)
    assert spec.model_type == ("llama" if kind == "llama3" else kind)
    assert spec.attention_bias == (kind in ("qwen2", "qwen2_moe"))
    assert spec.num_params == sum(p.numel() for p in model.parameters())
    assert (spec.rope_scaling is not None) == (kind == "llama3")
    ex = Executor(spec, weights=tmp_path, dtype="float32")

    logits, caches = ex.prefill(PROMPTS)
    assert logits.shape == (len(PROMPTS), SHAPE["vocab_size"])
    assert [c.length for c in caches] == [len(p) for p in PROMPTS]
    seqs = [list(p) for p in PROMPTS]
    # the families added later take two decode steps (each step is a full reference forward)
    for step in range(4 if kind in ("llama", "llama3", "qwen2", "mistral") else 2):
        for i, seq in enumerate(seqs):
            torch.testing.assert_close(logits[i], _reference_logits(model, seq), **TOL)
        tokens = logits.argmax(-1).tolist()  # greedy; the reference is fed the same tokens
        seqs = [[*s, t] for s, t in zip(seqs, tokens, strict=True)]
        logits = ex.decode(tokens, caches)
        assert [c.length for c in caches] == [len(s) for s in seqs], f"step {step}"
    for i, seq in enumerate(seqs):
        torch.testing.assert_close(logits[i], _reference_logits(model, seq), **TOL)

    if kind == "llama3":  # the comparison is sensitive to the scaling: dropping it breaks it
        plain = Executor(replace(spec, rope_scaling=None), weights=tmp_path, dtype="float32")
        wrong, _ = plain.prefill(PROMPTS[1:2])
        assert (wrong[0] - _reference_logits(model, PROMPTS[1])).abs().max() > 1e-3


def test_kv_take_out_and_put_back_continues_identically(tmp_path: Path) -> None:
    _save_reference("llama", tmp_path)
    ex = Executor(load_model_spec(tmp_path), weights=tmp_path, dtype="float32")
    prompts = PROMPTS[:3]
    logits, caches = ex.prefill(prompts)
    tokens = logits.argmax(-1).tolist()
    logits = ex.decode(tokens, caches)
    tokens = logits.argmax(-1).tolist()

    moved = []
    for cache in caches:
        k, v = cache.to_tensors()
        assert k.is_contiguous() and v.is_contiguous()
        assert tuple(k.shape) == (2, 2, cache.length, 16) and k.dtype == torch.float32
        assert cache.used_bytes() == 2 * k.numel() * k.element_size()
        # Through raw bytes, as a transport would carry them (dtype and shape in a header).
        k2 = torch.frombuffer(bytearray(k.numpy().tobytes()), dtype=k.dtype).view(k.shape)
        v2 = torch.frombuffer(bytearray(v.numpy().tobytes()), dtype=v.dtype).view(v.shape)
        moved.append(KVCache.from_tensors(k2, v2, reserve_tokens=3))
    assert [m.length for m in moved] == [c.length for c in caches]

    for _ in range(6):  # past the moved caches' reserve: they grow on the way
        ref = ex.decode(tokens, caches)
        out = ex.decode(tokens, moved)
        torch.testing.assert_close(out, ref, atol=0, rtol=0)
        tokens = ref.argmax(-1).tolist()
    for m, c in zip(moved, caches, strict=True):
        assert m.length == c.length
        torch.testing.assert_close(m.to_tensors()[0], c.to_tensors()[0], atol=0, rtol=0)


def test_cache_growth_doubles_and_keeps_the_prefix() -> None:
    cache = KVCache.allocate(2, 3, 8, 10, dtype=torch.float32, device="cpu")
    assert cache.capacity == 64 and cache.length == 0
    cache.k[:, :, :50] = torch.arange(2 * 3 * 50 * 8, dtype=torch.float32).view(2, 3, 50, 8)
    cache.length = 50
    before = cache.to_tensors()[0]
    cache.reserve(65)
    assert cache.capacity == 128
    torch.testing.assert_close(cache.to_tensors()[0], before, atol=0, rtol=0)
    cache.reserve(1000)
    assert cache.capacity == 1024
    cache.truncate(20)
    assert cache.to_tensors()[0].shape == (2, 3, 20, 8)


def test_random_weights_are_seeded_and_tp_shards_have_per_rank_shapes() -> None:
    spec = load_model_spec("tiny-llama")
    small = replace(spec, num_layers=1, vocab_size=512)
    a = Executor(small, seed=3)
    b = Executor(small, seed=3)
    c = Executor(small, seed=4)
    prompt = [[1, 2, 3, 4]]
    la, lb, lc = a.prefill(prompt)[0], b.prefill(prompt)[0], c.prefill(prompt)[0]
    torch.testing.assert_close(la, lb, atol=0, rtol=0)
    assert not torch.equal(la, lc)

    shard = Executor(small, tp=2)
    assert shard.vocab_size == 256
    assert shard.weights.layers[0].qkv.shape == ((4 + 2 * 2) * 64, 512)
    assert shard.weights.layers[0].down.shape == (512, 704)
    logits, caches = shard.prefill([[1, 300, 5]])  # id 300 lies outside rank 0's vocab slice
    assert logits.shape == (1, 256) and caches[0].k.shape[1] == 2
    assert shard.decode([400], caches).shape == (1, 256)


def test_tp_shard_loads_rank0_slices(tmp_path: Path) -> None:
    model = _save_reference("qwen2", tmp_path)
    shard = Executor(load_model_spec(tmp_path), weights=tmp_path, tp=2, dtype="float32")
    attn = model.model.layers[0].self_attn
    qkv = shard.weights.layers[0].qkv
    torch.testing.assert_close(qkv[:32], attn.q_proj.weight[:32].detach())
    torch.testing.assert_close(qkv[32:48], attn.k_proj.weight[:16].detach())
    torch.testing.assert_close(shard.weights.layers[0].qkv_bias[48:], attn.v_proj.bias[:16].detach())
    down = model.model.layers[0].mlp.down_proj.weight.detach()
    torch.testing.assert_close(shard.weights.layers[0].down, down[:, :48])


def test_bad_inputs_name_the_problem(tmp_path: Path) -> None:
    spec = replace(load_model_spec("tiny-llama"), num_layers=1, vocab_size=64)
    with pytest.raises(ConfigError, match="device 'tpu'"):
        Executor(spec, device="tpu")
    with pytest.raises(ConfigError, match="dtype 'int8'"):
        Executor(spec, dtype="int8")
    with pytest.raises(ConfigError, match=r"no model\.safetensors"):
        Executor(spec, weights=tmp_path)
    ex = Executor(spec)
    with pytest.raises(ConfigError, match="token id 64 is outside the vocabulary"):
        ex.prefill([[1, 64]])
    with pytest.raises(ConfigError, match="non-empty prompts"):
        ex.prefill([[1], []])
    _, caches = ex.prefill([[1, 2]])
    with pytest.raises(ConfigError, match="token id -1"):
        ex.decode([-1], caches)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            Executor(spec, device="cuda")
