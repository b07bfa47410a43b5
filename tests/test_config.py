import pytest

from ctxlab import ModelConfig, reference_config

BAD = [
    ({"vocab_size": 0}, "vocab_size"),
    ({"vocab_size": -3}, "vocab_size"),
    ({"d_model": 0}, "d_model"),
    ({"d_model": 2.5}, "d_model"),
    ({"n_layers": 0}, "n_layers"),
    ({"n_heads": 0}, "n_heads"),
    ({"d_model": 100, "n_heads": 3}, "d_model"),
    ({"n_heads": 4, "n_kv_heads": 3}, "n_kv_heads"),
    ({"n_heads": 4, "n_kv_heads": 8}, "n_kv_heads"),
    ({"max_seq_len": 0}, "max_seq_len"),
    ({"attention": "flash9"}, "attention"),
    ({"rope_base": 1}, "rope_base"),
    ({"rope_scaling": "magic"}, "rope_scaling"),
    ({"rope_scale": 0.5}, "rope_scale"),
    ({"tie_weights": "yes"}, "tie_weights"),
    ({"checkpoint_attention": 1}, "checkpoint_attention"),
    ({"dropout": 1.0}, "dropout"),
    ({"d_model": 12, "n_heads": 4}, "d_model"),  # head_dim 3 is odd: RoPE needs pairs
    ({"n_layers": True}, "n_layers"),
]


@pytest.mark.parametrize("changes,field", BAD)
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**changes)


def test_defaults_and_gqa():
    cfg = reference_config()
    assert cfg.n_kv_heads == cfg.n_heads and cfg.head_dim == 64
    assert ModelConfig(n_heads=4, n_kv_heads=1).n_kv_heads == 1


def test_replace_validates_and_rejects_unknown_fields():
    cfg = reference_config()
    assert cfg.replace(n_layers=2).n_layers == 2
    with pytest.raises(ValueError, match="n_layers"):
        cfg.replace(n_layers=0)
    with pytest.raises(TypeError, match="no field"):
        cfg.replace(width=3)
