"""The probe diagnosis: records of one kind, the answer position, and probes that can tell signal from noise."""

from __future__ import annotations

import pytest
import torch

from genllava.eval.probes import answer_states, linear_probe, probe_model, question_records


def test_linear_probe_reads_a_separable_label_and_not_a_shuffled_one():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 8, generator=generator)
    signal = ["right" if value > 0 else "left" for value in features[:, 0].tolist()]
    noise = [["left", "right"][i] for i in torch.randint(0, 2, (400,), generator=generator).tolist()]
    assert linear_probe(features, signal) >= 0.95
    assert linear_probe(features, noise) <= 0.65


def test_question_records_hold_only_the_asked_kind_and_shape_count():
    records = question_records("position_of_shape", 2, 30, seed=5)
    assert len(records) == 30
    assert {r["meta"]["question_kinds"][0] for r in records} == {"position_of_shape"}
    assert {r["meta"]["image_shapes"] for r in records} == {2}
    again = question_records("position_of_shape", 2, 30, seed=5)
    assert [r["conversations"] for r in again] == [r["conversations"] for r in records]
    with pytest.raises(ValueError, match="unknown question kind"):
        question_records("size", 1, 3, seed=0)
    with pytest.raises(ValueError, match="1 or 2 shapes"):
        question_records("count", 3, 3, seed=0)


def test_answer_states_read_the_position_that_predicts_the_first_word(tiny_model):
    records = question_records("color_of_shape", 1, 6, seed=1)
    i2t = tiny_model.processor.task_ids["[I2T]"]
    rows = tiny_model.language_model.get_input_embeddings().weight
    with torch.no_grad():  # [I2T] starts as a copy of the row before it; make it unmistakable
        rows[i2t] = torch.linspace(-1, 1, rows.shape[1])
    states = answer_states(tiny_model, records, batch_size=4)
    layers = tiny_model.language_model.config.num_hidden_layers + 1
    assert states["llm"].shape == (6, layers, tiny_model.language_model.config.hidden_size)
    # Layer 0 is the input embedding: at that position it is [I2T]'s row, whatever the question.
    assert torch.allclose(states["llm"][:, 0], rows[i2t].detach().expand(6, -1))
    assert states["right"].dtype == torch.bool and states["tower"].shape[0] == 6


def test_the_shipped_tower_tells_where_a_lone_shape_is():
    """The world's frozen tower carries the position of a one-shape scene in its patches: a probe
    reads it almost perfectly, so a model that cannot answer "Where is ...?" loses it later."""
    from genllava import presets
    from genllava.model.modeling import GenLlava

    torch.manual_seed(0)
    model = GenLlava.build(presets.shapes()[0])
    result = probe_model(model, "position_of_shape", shapes=1, samples=240, seed=3)
    assert result["probe_tower"] >= 0.95
    assert result["chance"] < 0.5
    assert len(result["probe_llm_layers"]) == model.language_model.config.num_hidden_layers + 1
