"""render-config never leaves a recipe comment beside a value it no longer describes."""

from __future__ import annotations

import pytest

from vlm.training.config import RenderOptions, recipe, render_recipe, render_yaml


def rendered(*overrides: str) -> dict[str, str]:
    """key -> its rendered line (value and comment)."""
    text = render_yaml(render_recipe(RenderOptions(overrides=list(overrides))), ["test"])
    return {line.split(":", 1)[0]: line for line in text.splitlines() if line and not line.startswith("#")}


@pytest.mark.parametrize(("override", "key", "recipe_words"), [
    ("val_size=0", "val_size", "hold out 10%"),
    ("dataset=invoices_train", "val_size", "cord_train"),
    ("dataset_dir=data/invoices", "dataset_dir", "save-cord-dataset"),
    ("lora_target=q_proj,v_proj", "lora_target", "every linear layer"),
    ("dataset=invoices_train", "max_samples", "CORD's train split"),
    ("image_max_pixels=1048576", "image_max_pixels", "512x512"),
    ("per_device_train_batch_size=4", "gradient_accumulation_steps", "8 x 8"),
])
def test_an_overridden_value_loses_the_recipes_comment(override, key, recipe_words):
    assert recipe_words in rendered()[key]  # the recipe itself keeps it
    assert recipe_words not in rendered(override)[key]


def test_eval_steps_goes_with_evaluation():
    assert "eval_steps" in rendered()
    lines = rendered("eval_strategy=no", "val_size=0")
    assert "eval_steps" not in lines and lines["eval_strategy"].startswith("eval_strategy: 'no'")
    assert rendered("eval_strategy=no", "eval_steps=100")["eval_steps"] == "eval_steps: 100"  # asked for: kept


def test_a_comment_on_an_unchanged_value_stays():
    lines = rendered("learning_rate=5e-5")
    assert "hold out 10%" in lines["val_size"] and "every linear layer" in lines["lora_target"]
    assert recipe()["val_size"] == 0.1
