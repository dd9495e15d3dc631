"""Config files are read strictly (config/yaml_file.py): a key given twice is an error naming it; integers are
YAML 1.2's (`seed: 017` is 17, as `--seed 017` is; `1:30` is not 90); aliases that expand past a small bound
("billion laughs") or refer to themselves are refused while the file is read; error messages show bounded values.
"""

import pytest

from offline_infalign.config import PrepareConfig, SampleConfig, load_config
from offline_infalign.config.yaml_file import MAX_ALIAS_VALUES, load_yaml
from offline_infalign.core.errors import InfalignError
from tests.bad_input_helpers import error_line

BASE = "prompts: p.jsonl\nmodel: m\nout: o\n"
# 9 values, then each level 9 aliases of the one above: 9^9 (387 million) values in under 400 bytes.
BOMB = ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        + "".join(f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")))


def _file(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_a_key_given_twice_is_an_error_naming_it(tmp_path, capsys):
    path = _file(tmp_path, BASE + "seed: 1\nnum_samples: 4\nseed: 2\n")
    err = error_line(capsys, ["sample", "--config", str(path)])
    assert f"config file {str(path)!r}: key 'seed' is given twice (lines 4 and 6); give each key once" in err
    with pytest.raises(InfalignError, match="key 'x' is given twice"):  # inside a value too
        load_yaml("transform: {x: 1, x: 2}\n", "f")
    # A merge key's values may be overridden: that is what `<<` is for.
    assert load_yaml("b: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n", "f")["c"] == {"x": 3, "y": 2}


@pytest.mark.parametrize("text,value", [("017", 17), ("-007", -7), ("1_000", 1000), ("0x1f", 31), ("0o17", 15),
                                        ("+5", 5)])
def test_integers_read_as_written(tmp_path, text, value):
    from_file = load_config(SampleConfig, _file(tmp_path, BASE + f"seed: {text}\n"))
    assert from_file.seed == value
    if text.lstrip("+-").isdigit():  # the command line reads decimal digits the same way
        from offline_infalign.cli import build_parser

        assert build_parser().parse_args(["sample", f"--seed={text}"]).seed == value


def test_base_60_and_other_yaml_1_1_integers_are_text(tmp_path, capsys):
    assert load_yaml("x: 1:30\ny: 0b101\n", "f") == {"x": "1:30", "y": "0b101"}
    path = _file(tmp_path, BASE + "seed: 1:30\n")
    assert "seed must be an integer, got '1:30'" in error_line(capsys, ["sample", "--config", str(path)])


@pytest.mark.parametrize("command,key", [("sample", "split"), ("sample", "stop_token_ids"), ("prepare", "transform"),
                                         ("sample", "no_such_key")])
def test_alias_bombs_are_refused_under_any_key(tmp_path, capsys, command, key):
    base = BASE if command == "sample" else "input: s\nout: o\n"
    path = _file(tmp_path, base + BOMB + f"{key}: *i\n")
    assert len(path.read_text()) - len(base) < 420
    err = error_line(capsys, [command, "--config", str(path)])
    assert f"config file {str(path)!r}: its aliases (*name) expand to " in err
    assert f"more than the {MAX_ALIAS_VALUES:,} a config may hold" in err and len(err) < 400 + len(str(path))


def test_small_aliases_and_recursive_ones(tmp_path):
    assert load_yaml("a: &a [1, 2]\nb: *a\n", "f") == {"a": [1, 2], "b": [1, 2]}
    with pytest.raises(InfalignError, match="an alias refers to the value that contains it"):
        load_yaml("a: &a [1, *a]\n", "f")
    with pytest.raises(InfalignError, match="nested too deeply"):
        load_yaml("a: " + "[" * 600 + "]" * 600, "f")


def test_error_messages_show_bounded_values(tmp_path, capsys):
    big = "[" + ", ".join(["x" * 50] * 2000) + "]"
    path = _file(tmp_path, BASE + f"seed: {big}\n")
    err = error_line(capsys, ["sample", "--config", str(path)])
    shown = err.split(", got ")[1].split(" in config file")[0]
    assert shown.startswith("['xxxx") and shown.endswith("...") and len(shown) <= 160
    with pytest.raises(InfalignError) as exc:
        load_config(PrepareConfig, _file(tmp_path, "input: s\nout: o\ntransform: " + big + "\n"))
    assert len(str(exc.value)) < 300
