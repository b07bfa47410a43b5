"""ctxlab against Hugging Face transformers: RoPE's frequencies, configs and whole models.

transformers is a test dependency only; no weights are downloaded: the models are tiny and random.
"""
import pytest
import torch

from ctxlab import GPT, ModelConfig, count_params
from ctxlab.hf_config import SHIPPED_MODELS, read_hf_config
from ctxlab.hf_weights import from_pretrained, load_hf_weights
from ctxlab.positions import scaled_rope

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

PUBLISHED = {"llama-2-7b": 6_738_415_616, "llama-3-8b": 8_030_261_248, "llama-3.1-8b": 8_030_261_248,
             "llama-3.1-70b": 70_553_706_496, "mistral-7b-v0.1": 7_241_732_096, "qwen2.5-7b": 7_615_616_512}

# (rope_parameters, the length read): each of transformers' rope types that ctxlab implements
ROPES = [
    ({"rope_type": "default"}, 48),
    ({"rope_type": "linear", "factor": 4.0}, 64),
    ({"rope_type": "dynamic", "factor": 2.0}, 100),
    ({"rope_type": "dynamic", "factor": 1.0}, 90),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}, 100),
    ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16, "beta_fast": 16.0,
      "beta_slow": 2.0}, 120),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "attention_factor": 1.3}, 100),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 32}, 100),
]


def hf_config(family: str = "llama", rope=None, head_dim: int = 16, base: float = 10000.0, max_len: int = 64,
              **extra):
    classes = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config}
    rope = {**(rope or {"rope_type": "default"}), "rope_theta": base}
    return classes[family](vocab_size=97, hidden_size=4 * head_dim, intermediate_size=88, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_len,
                           rope_parameters=rope, **extra)


@pytest.mark.parametrize("rope, _", ROPES)
@pytest.mark.parametrize("head_dim, base", [(16, 10000.0), (64, 500000.0), (128, 1e6)])
def test_inverse_frequencies_and_attention_factor_equal_transformers(rope, _, head_dim, base):
    config = hf_config(rope=rope, head_dim=head_dim, base=base, max_len=64)
    cfg = ModelConfig.from_hf(config.to_dict())
    kind = rope["rope_type"]
    for seq_len in (None, 200) if kind == "dynamic" else (None,):
        if kind == "default":
            theirs, their_factor = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim), 1.0
        else:
            theirs, their_factor = ROPE_INIT_FUNCTIONS[kind](config, "cpu", seq_len=seq_len)
        extra = {"seq_len": seq_len or cfg.rope_original_len} if kind == "dynamic" else {}
        ours, factor = scaled_rope(cfg.rope_scaling, head_dim, base, cfg.rope_scale, cfg.rope_original_len or 1,
                                   **extra, **cfg.rope_options)
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-6, atol=0)
        if cfg.rope_attention_factor is not None:  # the config's own replaces the scaling's
            factor = GPT(cfg).rope.attention_factor
        assert factor == pytest.approx(their_factor, rel=1e-12)


@pytest.mark.parametrize("rope, seq_len", ROPES)
def test_cos_sin_tables_equal_transformers(rope, seq_len):
    config = hf_config(rope=rope)
    rotary = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
    positions = torch.arange(seq_len)
    x = torch.zeros(1, seq_len, 64)
    cos, sin = rotary(x, positions[None])
    cfg = ModelConfig.from_hf(config.to_dict())
    ours = GPT(cfg.replace(max_seq_len=max(cfg.max_seq_len, seq_len))).rope(positions)
    for mine, theirs in zip(ours, (cos[0], sin[0])):
        torch.testing.assert_close(torch.cat([mine, mine], -1), theirs, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("rope, seq_len", ROPES)
def test_logits_equal_transformers_on_the_same_weights(family, rope, seq_len):
    torch.manual_seed(0)
    config = hf_config(family, rope=rope, tie_word_embeddings=family == "qwen2")
    theirs = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    cfg = ModelConfig.from_hf(config.to_dict())
    ours = load_hf_weights(GPT(cfg.replace(max_seq_len=max(cfg.max_seq_len, seq_len))), theirs.state_dict()).eval()
    tokens = torch.randint(0, config.vocab_size, (2, seq_len))
    with torch.no_grad():
        expected = theirs(tokens).logits
        got, _ = ours(tokens)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_from_pretrained_reads_a_saved_folder(tmp_path):
    torch.manual_seed(0)
    config = hf_config("llama", rope=ROPES[4][0])
    theirs = transformers.LlamaForCausalLM(config).eval()
    theirs.save_pretrained(tmp_path)  # config.json and model.safetensors
    ours = from_pretrained(tmp_path).eval()
    tokens = torch.randint(0, config.vocab_size, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens)[0], theirs(tokens).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_shipped_configs_count_their_published_parameters(name):
    cfg = ModelConfig.from_hf(name)
    assert count_params(cfg) == PUBLISHED[name]
    with torch.device("meta"):
        assert GPT(cfg.replace(n_layers=1)).num_params() == count_params(cfg.replace(n_layers=1))
    config = transformers.AutoConfig.for_model(**read_hf_config(name))
    with torch.device("meta"):  # transformers' own model of the same config.json, built without memory
        assert sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(config).parameters()) \
            == PUBLISHED[name]


@pytest.mark.parametrize("change, field", [
    ({"architectures": ["GPT2LMHeadModel"]}, "architectures"),
    ({"hidden_size": 30}, "hidden_size"),
    ({"num_key_value_heads": 3}, "n_kv_heads"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "rope_type"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 0.5}}, "factor"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                       "original_max_position_embeddings": 32}}, "rope_low_freq_factor"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4096,
                       "mscale": 0.7}}, "mscale"),
    ({"mlp_bias": True}, "mlp_bias"),
])
def test_bad_configs_name_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig.from_hf({**read_hf_config("llama-2-7b"), **change})


def test_a_scaling_cannot_start_past_the_models_length():
    with pytest.raises(ValueError, match="rope_original_len"):
        ModelConfig(max_seq_len=64, rope_scaling="yarn", rope_scale=2.0, rope_original_len=128)
    with pytest.raises(ValueError, match="rope_scale"):
        ModelConfig(max_seq_len=64, rope_scaling="llama3", rope_scale=0.5, rope_original_len=32)


def test_missing_fields_and_unknown_names_are_refused():
    with pytest.raises(ValueError, match="intermediate_size"):
        ModelConfig.from_hf({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
                             "vocab_size": 10, "num_hidden_layers": 1, "max_position_embeddings": 32})
    with pytest.raises(ValueError, match="llama-3-8b"):
        ModelConfig.from_hf("llama-9-400b")
