import pytest
import torch

from ctxlab.tasks.dialogue import (ASK, KEYS, USER, VALUE_LEN, DialogueSpec, dialogue_batch,
                                    make_dialogue, min_length)
from ctxlab.evaluate import answer_accuracy


@pytest.mark.parametrize("asked", list(KEYS))
@pytest.mark.parametrize("distance", [12, 40, 100])
def test_fact_is_at_the_stated_distance(asked, distance):
    g = torch.Generator().manual_seed(distance)
    tokens, targets = make_dialogue(160, distance, asked, g)
    assert len(tokens) == len(targets) == 160
    answer = tokens[-VALUE_LEN[asked]:]
    answer_start = 160 - VALUE_LEN[asked]
    fact_value_start = answer_start - distance
    assert tokens[fact_value_start - 2:fact_value_start] == [USER, KEYS[asked]]
    assert tokens[fact_value_start:fact_value_start + len(answer)] == answer
    assert tokens[answer_start - 4:answer_start] == [USER, ASK, KEYS[asked], 3]
    # the asked key is stated exactly once before the question
    stated = [i for i in range(answer_start - 4) if tokens[i] == KEYS[asked] and tokens[i - 1] == USER]
    assert stated == [fact_value_start - 1]
    # targets: only the answer tokens, shifted by one
    marked = [i for i, t in enumerate(targets) if t != -100]
    assert marked == list(range(answer_start - 1, 159))
    assert [targets[i] for i in marked] == answer


def test_same_seed_same_data_and_distances_in_range():
    a = dialogue_batch(8, 128, 3, max_distance=60)
    b = dialogue_batch(8, 128, 3, max_distance=60)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (8, 128) and int(a[2].max()) <= 60
    c = dialogue_batch(8, 128, 4, max_distance=60)
    assert not torch.equal(a[0], c[0])


def test_bad_inputs():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="asked"):
        make_dialogue(100, 20, "age", g)
    with pytest.raises(ValueError, match="distance"):
        make_dialogue(100, 2, "order", g)
    with pytest.raises(ValueError, match="seq_len"):
        make_dialogue(min_length(50) - 1, 50, "name", g)
    with pytest.raises(ValueError, match="vocab_size"):
        DialogueSpec(vocab_size=20)
    with pytest.raises(ValueError, match="batch_size"):
        dialogue_batch(0, 64, 0)


def test_answer_accuracy_counts_whole_answers():
    class Oracle(torch.nn.Module):
        def __init__(self, targets):
            super().__init__()
            self.targets = targets

        def forward(self, tokens):
            logits = torch.zeros(*tokens.shape, 128)
            logits.scatter_(2, self.targets.clamp(min=0).unsqueeze(-1), 1.0)
            return logits, None

    tokens, targets, _ = dialogue_batch(4, 96, 1)
    assert answer_accuracy(Oracle(targets), tokens, targets).tolist() == [1.0] * 4
    wrong = targets.clone()
    wrong[0][wrong[0] != -100] = 60
    assert answer_accuracy(Oracle(wrong), tokens, targets).tolist() == [0.0, 1.0, 1.0, 1.0]


def test_shorter_values_and_a_distance_floor():
    spec = DialogueSpec(order_digits=2, name_tokens=1)
    g = torch.Generator().manual_seed(5)
    tokens, targets = make_dialogue(120, 50, "order", g, spec)
    marked = [t for t in targets if t != -100]
    assert len(marked) == 2 and tokens[-2:] == marked
    assert tokens[120 - 2 - 50 - 1] == KEYS["order"]
    _, _, dist = dialogue_batch(32, 200, 5, min_distance=90, max_distance=120, spec=spec)
    assert int(dist.min()) >= 90 and int(dist.max()) <= 120
    for bad in (dict(order_digits=0), dict(order_digits=5), dict(name_tokens=3)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DialogueSpec(**bad)
