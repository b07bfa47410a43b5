import pytest
import torch

from ctxlab import GPT, reference_config
from ctxlab.packing import document_mask, pack_documents, pad_documents, padding_vs_packing

LENGTHS = [5, 12, 3, 9, 7, 16, 2]


def docs(lengths=LENGTHS):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(1, 64, (n,), generator=g) for n in lengths]


def test_layouts_hold_every_token_once():
    ds = docs()
    padded, packed = pad_documents(ds), pack_documents(ds, 16)
    assert padded.tokens.shape == (7, 16) and padded.real_tokens == packed.real_tokens == sum(LENGTHS)
    assert packed.tokens.shape[0] == 4 and packed.waste < padded.waste
    for batch in (padded, packed):
        assert sorted(int((batch.doc_ids == i).sum()) for i in range(7)) == sorted(LENGTHS)
        assert int((batch.targets != -100).sum()) == sum(n - 1 for n in LENGTHS)  # no target crosses documents
    rep = padding_vs_packing(LENGTHS, 16)
    assert rep["packed_slots"] == 64 and rep["padded_slots"] == 112


def test_document_mask_is_block_diagonal_and_causal():
    ids = torch.tensor([[0, 0, 1, 1, 1, -1]])
    m = document_mask(ids)[0, 0]
    assert m.shape == (6, 6) and m.dtype == torch.bool
    assert m[1, 0] and not m[0, 1] and not m[2, 1] and m[4, 2] and m[5, 5] and not m[5, 4]


@pytest.mark.parametrize("backend", ["naive", "sdpa", "chunked"])
def test_a_document_gives_the_same_outputs_packed_or_alone(backend):
    cfg = reference_config(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32,
                           attention=backend)
    model = GPT(cfg).eval()
    ds = docs()
    packed = pack_documents(ds, 16)
    with torch.no_grad():
        logits, _ = model(packed.tokens, positions=packed.positions, mask=document_mask(packed.doc_ids))
        for doc_id in range(len(ds)):
            where = packed.doc_ids == doc_id
            row = int(where.any(1).nonzero()[0])
            alone, _ = model(packed.tokens[row][where[row]][None])
            torch.testing.assert_close(logits[row][where[row]], alone[0], atol=1e-5, rtol=1e-5)
    # without the mask, a later document in a row does see the earlier ones
    with torch.no_grad():
        unmasked, _ = model(packed.tokens, positions=packed.positions)
    assert not torch.allclose(unmasked, logits, atol=1e-4)


def test_bad_inputs():
    with pytest.raises(ValueError, match="does not fit seq_len"):
        pack_documents(docs(), 8)
    with pytest.raises(ValueError, match="seq_len"):
        pack_documents(docs(), 0)
    with pytest.raises(ValueError, match="docs"):
        pad_documents([])
    with pytest.raises(ValueError, match=r"docs\[1\]"):
        pad_documents([torch.ones(3, dtype=torch.long), torch.ones(2, 2, dtype=torch.long)])
    with pytest.raises(ValueError, match="doc_ids"):
        document_mask(torch.zeros(5))
