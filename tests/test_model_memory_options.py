import copy

import pytest
import torch

from ctxlab import GPT, reference_config
from ctxlab.measure import measure_peak
from ctxlab.model import chunked_cross_entropy

SMALL = dict(vocab_size=64, d_model=32, n_layers=4, n_heads=4, max_seq_len=128)


def loss_and_grads(model, tokens, targets):
    model.zero_grad()
    _, loss = model(tokens, targets)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("changes", [dict(checkpoint_every=1), dict(checkpoint_every=2), dict(loss_chunk=7),
                                     dict(mlp_chunk=5), dict(attention="chunked"),
                                     dict(checkpoint_every=1, loss_chunk=16, mlp_chunk=8, attention="chunked")])
def test_memory_options_keep_loss_and_gradients(changes):
    base = GPT(reference_config(**SMALL))
    other = GPT(reference_config(**SMALL, **changes))
    other.load_state_dict(base.state_dict())
    tokens, targets = torch.randint(0, 64, (2, 40)), torch.randint(0, 64, (2, 40))
    targets[0, :5] = -100
    l0, g0 = loss_and_grads(base, tokens, targets)
    l1, g1 = loss_and_grads(other, tokens, targets)
    torch.testing.assert_close(l1, l0, atol=1e-5, rtol=1e-5)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-5, msg=name)


def test_checkpoint_policy_picks_blocks_and_saves_memory():
    assert [reference_config(**SMALL, checkpoint_every=2).recomputes(i) for i in range(4)] == \
        [True, False, True, False]
    assert not any(reference_config(**SMALL).recomputes(i) for i in range(4))
    tokens = torch.randint(0, 64, (1, 128))

    def peak(**changes):
        model = GPT(reference_config(**SMALL, **changes))
        return measure_peak(lambda: model(tokens, tokens)[1].backward(), "cpu")
    none, every, every_2 = peak(), peak(checkpoint_every=1), peak(checkpoint_every=2)
    assert every < every_2 < none


def test_chunked_loss_returns_no_logits_and_matches():
    model = GPT(reference_config(**SMALL, loss_chunk=16))
    tokens = torch.randint(0, 64, (2, 40))
    logits, loss = model(tokens, tokens)
    assert logits is None
    full_logits, _ = model(tokens)  # without targets the logits come back
    expect = torch.nn.functional.cross_entropy(full_logits.reshape(-1, 64), tokens.reshape(-1))
    torch.testing.assert_close(loss, expect)
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        chunked_cross_entropy(torch.zeros(1, 4, 32), model.head.weight, tokens[:1, :4], 0)


def test_shared_layers_are_one_block_run_n_times():
    shared = GPT(reference_config(**SMALL, share_layers=True))
    plain = GPT(reference_config(**SMALL))
    per_block = sum(p.numel() for p in plain.blocks[0].parameters())
    assert plain.num_params() - shared.num_params() == 3 * per_block
    # the same computation as a 4-layer model whose 4 blocks hold one block's weights
    for i in range(4):
        plain.blocks[i] = copy.deepcopy(shared.blocks[0])
    plain.embed.weight.data.copy_(shared.embed.weight.data)
    tokens = torch.randint(0, 64, (1, 20))
    torch.testing.assert_close(shared(tokens)[0], plain(tokens)[0])


def test_batched_positions():
    model = GPT(reference_config(**SMALL)).eval()
    tokens = torch.randint(0, 64, (2, 10))
    pos = torch.arange(10).expand(2, 10)
    torch.testing.assert_close(model(tokens, positions=pos)[0], model(tokens)[0])


@pytest.mark.parametrize("field,value", [("checkpoint_every", -1), ("loss_chunk", 1.5), ("mlp_chunk", True),
                                         ("share_layers", 1), ("attention", "flash9"), ("attn_chunk", 0)])
def test_bad_memory_options(field, value):
    with pytest.raises(ValueError, match=field):
        reference_config(**{field: value})
