"""MetaFG models (MetaFormer): parameter counts against the official code, meta tokens, meta masking."""

from __future__ import annotations

import json

import pytest
import torch

from longtail.errors import LongtailError
from longtail.models import create, list_models
from longtail.models.metaformer import (
    MetaFG,
    MetaMaskSchedule,
    mask_meta,
    parse_meta_groups,
    relative_position_index,
)

SPATIOTEMPORAL = {"spatiotemporal": (4, 3)}


def tiny(**kwargs) -> MetaFG:
    """A MetaFG small enough for fast tests; same structure as MetaFG-0."""
    options = dict(
        num_classes=5, img_size=32, conv_dims=(8, 8, 16), attn_dims=(16, 32), depths=(1, 2, 2, 1), num_heads=2
    )
    return MetaFG(**{**options, **kwargs}).eval()


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.shared
@pytest.mark.parametrize("variant", [0, 1, 2])
@pytest.mark.parametrize("with_meta", [False, True])
def test_parameter_counts_match_official(golden, variant, with_meta):
    facts = json.loads((golden / "model_facts.json").read_text())
    key = f"MetaFG_meta_{variant}_dims4_3" if with_meta else f"MetaFG_{variant}"
    official = facts[key]["params_per_top_level_child"]
    with torch.device("meta"):
        model = create(f"metafg_{variant}", num_classes=1000, meta_groups=SPATIOTEMPORAL if with_meta else None)
    assert count(model) == facts[key]["params_total"]
    assert count(model.stem) == official["stage_0"] + official["bn1"]
    for stage in (1, 2, 3, 4):
        assert count(getattr(model, f"stage{stage}")) == official[f"stage_{stage}"]
    meta_heads = sum(v for k, v in official.items() if k.startswith("meta_"))
    assert count(model.meta_tokens_3) + count(model.meta_tokens_4) == meta_heads
    assert count(model.head) == official["head"]


def test_registered_and_options_checked():
    assert {"metafg_0", "metafg_1", "metafg_2"} <= set(list_models())
    with pytest.raises(LongtailError, match="extra_token_num"):
        create("metafg_0", num_classes=10, extra_token_num=3)


@pytest.mark.slow
def test_metafg0_small_image_shapes_with_and_without_meta():
    model = create("metafg_0", num_classes=10, img_size=32, meta_groups=SPATIOTEMPORAL).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain, with_meta = model(images), model(images, torch.randn(2, 7))
    assert plain.logits.shape == with_meta.logits.shape == (2, 10)
    assert plain.features.shape == (2, 768)
    assert model.stage3.grid_size == (2, 2) and model.stage4.grid_size == (1, 1)
    assert model.stage3.blocks[0].attn.relative_position_bias_table.shape == (3 * 3 + 1, 8)


def test_non_square_images_and_size_check():
    model = tiny(img_size=(64, 96))
    assert model(torch.randn(2, 3, 64, 96)).logits.shape == (2, 5)
    with pytest.raises(LongtailError, match="img_size"):
        model(torch.randn(2, 3, 32, 32))


def test_meta_changes_logits():
    model = tiny(meta_groups=SPATIOTEMPORAL)
    images, meta = torch.randn(3, 3, 32, 32), torch.randn(3, 7)
    with torch.no_grad():
        assert not torch.allclose(model(images, meta).logits, model(images).logits, atol=1e-4)
        changed = meta.clone()
        changed[:, 4:] += 1.0
        assert not torch.allclose(model(images, meta).logits, model(images, changed).logits, atol=1e-4)


def test_zero_masked_sample_equals_no_meta_path():
    model = tiny(meta_groups={"spatiotemporal": (4, 3), "attributes": 6})
    images = torch.randn(4, 3, 32, 32)
    meta = {"spatiotemporal": torch.randn(4, 7), "attributes": torch.rand(4, 6)}
    meta["spatiotemporal"][2] = 0
    meta["attributes"][2] = 0
    with torch.no_grad():
        no_meta, with_meta = model(images).logits, model(images, meta).logits
        assert torch.allclose(model(images, {}).logits, no_meta)
    torch.testing.assert_close(with_meta[2], no_meta[2], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(with_meta[0], no_meta[0], atol=1e-4)


def test_text_sequence_group_adds_one_token_per_position():
    model = tiny(meta_groups={"text": {"dims": [12], "length": 4}, "attributes": 3})
    text, attributes = torch.randn(2, 4, 12), torch.randn(2, 3)
    extra = model._extra_tokens(model.cls_token_3, model.meta_tokens_3, {"text": text, "attributes": attributes}, 2)
    assert extra.shape == (2, 1 + 4 + 1, 16)
    assert model(torch.randn(2, 3, 32, 32), {"text": text, "attributes": attributes}).logits.shape == (2, 5)
    with pytest.raises(LongtailError, match=r"\(2, 4, 12\)"):
        model(torch.randn(2, 3, 32, 32), {"text": torch.randn(2, 5, 12), "attributes": attributes})
    with pytest.raises(LongtailError, match="missing"):
        model(torch.randn(2, 3, 32, 32), {"text": text})
    with pytest.raises(LongtailError, match="dict"):
        model(torch.randn(2, 3, 32, 32), text)


def test_model_without_meta_groups_rejects_meta_tensor_and_ignores_dict():
    model = tiny()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images, {"spatiotemporal": torch.randn(2, 7)}).logits, model(images).logits)
    with pytest.raises(LongtailError, match="meta_groups"):
        model(images, torch.randn(2, 7))


def test_bad_meta_group_specs():
    assert parse_meta_groups({"a": 3, "b": [4, 3]})["b"].num_tokens == 2
    for spec in ({"a": 0}, {"a": "x"}, {"a.b": 3}, {"a": {"dims": [3], "size": 2}}, [4, 3]):
        with pytest.raises(LongtailError):
            parse_meta_groups(spec)


def test_relative_position_index_matches_hand_computation():
    index = relative_position_index(2, 3)
    # positions (r, c) in row-major order; row of the (2h-1) x (2w-1) table = (dr + h - 1) * (2w - 1) + dc + w - 1
    positions = [(r, c) for r in range(2) for c in range(3)]
    expected = [[(ri - rj + 1) * 5 + (ci - cj + 2) for rj, cj in positions] for ri, ci in positions]
    assert index.tolist() == expected


@pytest.mark.parametrize("mode, row", [("official", 0), ("dedicated", -1)])
def test_extra_tokens_use_one_bias_row(mode, row):
    attention = tiny(extra_token_bias=mode).stage3.blocks[0].attn
    bias = attention.position_bias(num_extra=2)
    table = attention.relative_position_bias_table
    assert bias.shape == (2, 2 + 4, 2 + 4)
    assert torch.equal(bias[:, :2, :], table[row].view(2, 1, 1).expand(2, 2, 6))
    assert torch.equal(bias[:, :, :2], table[row].view(2, 1, 1).expand(2, 6, 2))
    assert torch.equal(bias[:, 2:, 2:], table[attention.grid_index].permute(2, 0, 1))


def test_meta_mask_schedule_falls_linearly():
    schedule = MetaMaskSchedule(start=1.0, epochs=10)
    assert [schedule.fraction(e) for e in (0, 5, 9, 10)] == pytest.approx([1.0, 0.5, 0.1, 0.0])
    assert MetaMaskSchedule(start=0.5, epochs=10).fraction(8) == 0.0
    assert MetaMaskSchedule(start=0.3).fraction(100) == 0.3
    with pytest.raises(LongtailError):
        MetaMaskSchedule(start=1.5)


def test_mask_meta_zeros_the_same_samples_in_every_group():
    meta = {"a": torch.rand(10, 3) + 1, "b": torch.rand(10, 4, 2) + 1}
    masked = mask_meta(meta, 0.35)
    zeroed_a = (masked["a"] == 0).all(dim=1)
    zeroed_b = (masked["b"] == 0).flatten(1).all(dim=1)
    assert int(zeroed_a.sum()) == 3 and torch.equal(zeroed_a, zeroed_b)
    assert torch.equal(masked["a"][~zeroed_a], meta["a"][~zeroed_a])


def test_training_masks_meta_by_epoch():
    model = tiny(meta_groups=SPATIOTEMPORAL, meta_mask_start=1.0, meta_mask_epochs=4).train()
    images, meta = torch.randn(4, 3, 32, 32), torch.randn(4, 7)
    model.set_epoch(0)
    with torch.no_grad():
        torch.testing.assert_close(model(images, meta).logits, model(images).logits)
        model.set_epoch(4)
        assert not torch.allclose(model(images, meta).logits, model(images).logits, atol=1e-4)


def test_backward_reaches_meta_encoders_and_head_api():
    model = tiny(meta_groups=SPATIOTEMPORAL, drop_path_rate=0.1).train()
    output = model(torch.randn(2, 3, 32, 32), torch.randn(2, 7))
    output.logits.sum().backward()
    assert model.meta_tokens_3.encoders["spatiotemporal"][0][0].weight.grad.abs().sum() > 0
    assert model.head_modules() == [model.head]
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 32)


def test_only_last_cls_head():
    model = tiny(only_last_cls=True)
    assert not hasattr(model, "aggregate")
    assert model(torch.randn(2, 3, 32, 32)).logits.shape == (2, 5)
