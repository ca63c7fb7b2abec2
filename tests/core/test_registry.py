"""The one registry type: adding, looking up, listing, and the unknown-name message."""

from __future__ import annotations

import pickle

import pytest

from histoguard.core._registry import Registry
from histoguard.errors import (
    ConfigError,
    EncoderError,
    UnknownEncoderError,
    UnknownNameError,
)


def _colours() -> Registry[int]:
    registry: Registry[int] = Registry("colour")
    for value, name in enumerate(["teal", "amber", "crimson"]):
        registry.add(name, value)
    return registry


def test_names_and_entries_are_sorted_by_name() -> None:
    colours = _colours()
    assert colours.names() == ("amber", "crimson", "teal")
    assert colours.entries() == (1, 2, 0)
    assert list(colours) == ["amber", "crimson", "teal"]
    assert len(colours) == 3
    assert "teal" in colours and "Teal" not in colours and 3 not in colours
    assert colours.get("crimson") == 2


def test_add_returns_the_entry() -> None:
    registry: Registry[str] = Registry("thing")
    assert registry.add("a", "entry a") == "entry a"


def test_a_name_registered_twice_is_refused_and_the_first_entry_kept() -> None:
    colours = _colours()
    with pytest.raises(ConfigError, match="colour 'teal' is already registered"):
        colours.add("teal", 99)
    with pytest.raises(ValueError):  # ConfigError is also a ValueError
        colours.add("teal", 99)
    assert colours.get("teal") == 0


def test_an_empty_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="non-empty name"):
        _colours().add("", 5)


def test_an_unknown_name_lists_the_known_names_and_the_closest_match() -> None:
    with pytest.raises(UnknownNameError) as caught:
        _colours().get("teel")
    error = caught.value
    assert str(error) == "unknown colour 'teel'. Did you mean 'teal'? Known: amber, crimson, teal"
    assert (error.kind, error.name, error.known) == ("colour", "teel", ("amber", "crimson", "teal"))
    assert isinstance(error, KeyError)


def test_an_unknown_name_far_from_all_known_ones_suggests_nothing() -> None:
    with pytest.raises(UnknownNameError) as caught:
        _colours().get("zzzzzz")
    assert "Did you mean" not in str(caught.value)
    assert "Known: amber, crimson, teal" in str(caught.value)


def test_an_empty_registry_says_so() -> None:
    with pytest.raises(UnknownNameError, match=r"\(none registered\)"):
        Registry[int]("gadget").get("x")


def test_the_error_class_is_the_one_given_at_construction() -> None:
    encoders: Registry[int] = Registry("encoder", error=UnknownEncoderError)
    encoders.add("uni", 1)
    with pytest.raises(UnknownEncoderError, match="Did you mean 'uni'") as caught:
        encoders.get("unii")
    assert isinstance(caught.value, EncoderError) and isinstance(caught.value, UnknownNameError)
    clone = pickle.loads(pickle.dumps(caught.value))
    assert type(clone) is UnknownEncoderError and str(clone) == str(caught.value)


def test_case_insensitive_registries_fold_names_to_lower_case() -> None:
    methods: Registry[str] = Registry("stain normalisation", case_sensitive=False)
    methods.add("Macenko", "m")
    assert methods.names() == ("macenko",)
    assert methods.get("MACENKO") == "m" and "macenko" in methods
    with pytest.raises(ConfigError, match="already registered"):
        methods.add("macenko", "again")
    with pytest.raises(UnknownNameError, match="Did you mean 'macenko'"):
        methods.get("Makenko")


def test_case_sensitive_registries_keep_names_apart() -> None:
    registry: Registry[int] = Registry("model")
    registry.add("abmil", 1)
    registry.add("ABMIL", 2)
    assert registry.names() == ("ABMIL", "abmil")
    assert registry.get("ABMIL") == 2
