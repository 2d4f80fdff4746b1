"""--recipe: a named set of training settings; flags given explicitly win."""

import argparse

import pytest

from headwise.app.train_command import config_from_args, register
from headwise.models import get_preset
from headwise.train import TrainConfig
from headwise.train.recipes import RECIPES, apply_recipe


def _parse(*argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return config_from_args(parser.parse_args(["train", *argv]))


def test_recipe_sets_what_was_not_given():
    cfg, given = _parse("--recipe", "shakespeare-char", "--corpus", "t.txt", "--steps", "300", "--lr", "3e-3")
    recipe = RECIPES["shakespeare-char"]
    assert (cfg.objective, cfg.preset, cfg.tokenizer_kind, cfg.optimizer) == ("clm", "shakespeare-char", "char", "muon")
    assert (cfg.block_len, cfg.batch_size, cfg.muon_lr, cfg.min_lr_ratio) == (
        recipe["block_len"], recipe["batch_size"], recipe["muon_lr"], recipe["min_lr_ratio"])
    assert (cfg.steps, cfg.lr) == (300, 3e-3)  # given: kept
    assert cfg.recipe == "shakespeare-char" and "recipe" in given
    assert cfg.out == "runs/clm-shakespeare-char"


def test_no_recipe_changes_nothing():
    assert _parse("--corpus", "t.txt")[0] == TrainConfig(corpus="t.txt", out="runs/mlm-tiny")


def test_every_recipe_is_a_valid_config_with_its_preset():
    for name, settings in RECIPES.items():
        cfg = TrainConfig(**apply_recipe(name, {"corpus": "t.txt"}, {"corpus"}))
        get_preset(cfg.preset)
        assert cfg.recipe == name and settings["steps"] == cfg.steps


def test_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="recipe must be one of"):
        apply_recipe("nope", {}, set())
    with pytest.raises(ValueError, match="recipe must be one of"):
        TrainConfig(recipe="nope")
    with pytest.raises(SystemExit):
        _parse("--recipe", "nope")
