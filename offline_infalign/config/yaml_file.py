"""Reading a config file's YAML strictly: what the user wrote, or one clear error.

PyYAML's `safe_load` (YAML 1.1) has three habits a config must not have:
- a key given twice keeps the last value silently: here it is an error naming the key and both lines;
- an integer with a leading zero is octal (`seed: 017` becomes 15) and `1:30` is base 60 (90): here integers
  follow YAML 1.2, the rule of every other YAML reader and of the command line (`--seed 017` is 17): decimal
  digits are decimal whatever the leading zeros, `0x..` is hexadecimal, `0o..` octal; `1:30` is text, which an
  integer field then refuses;
- aliases expand without bound: a few hundred bytes of `&a [*b, *b, ...]` chains ("billion laughs") name
  billions of values, and anything that walks the value (a check, an error message, a resume's config
  comparison) hangs. Here the values that aliases add are counted while the document is composed, before any
  Python object is built, and more than `MAX_ALIAS_VALUES` is refused; a recursive alias is refused too.
"""

from __future__ import annotations

import re

import yaml

from ..core.errors import InfalignError

__all__ = ["load_yaml", "MAX_ALIAS_VALUES"]

# Values aliases may add to a config file: an anchor reused in a few places is fine, a bomb is not.
MAX_ALIAS_VALUES = 10_000
_INT = re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$")


class _Refused(Exception):
    pass


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 integers, no duplicate keys and bounded alias expansion (module docstring)."""

    def compose_document(self):
        node = super().compose_document()
        _check_expansion(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # PyYAML reports an unhashable key itself
                if key in seen:
                    raise _Refused(f"key {key!r} is given twice (lines {seen[key] + 1} and "
                                   f"{key_node.start_mark.line + 1}); give each key once")
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node)
        digits = text.replace("_", "").lstrip("+-")
        sign = -1 if text.startswith("-") else 1
        base = {"0x": 16, "0o": 8}.get(digits[:2], 10)
        try:
            return sign * int(digits[2:] if base != 10 else digits, base)
        except ValueError:  # `0o_`: no digits; left as the text it is
            return text


# Replace the YAML 1.1 int resolver (octal by leading zero, base 60) by the YAML 1.2 one, on this loader only.
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def _check_expansion(root) -> None:
    """Refuse a document whose aliases add more than MAX_ALIAS_VALUES values, or refer to themselves.

    Each node's expanded size is computed once (memoized by identity), so a bomb of depth d is checked in
    O(d) steps; the values aliases add are the expanded size minus the distinct nodes written."""
    if root is None:
        return
    size: dict[int, int] = {}
    active: set[int] = set()

    def expanded(node) -> int:
        key = id(node)
        if key in size:
            return size[key]
        if key in active:
            raise _Refused(f"an alias refers to the value that contains it (line {node.start_mark.line + 1})")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(expanded(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(expanded(k) + expanded(v) for k, v in node.value)
        active.discard(key)
        size[key] = total
        return total

    total = expanded(root)
    if total - len(size) > MAX_ALIAS_VALUES:
        raise _Refused(f"its aliases (*name) expand to {total:,} values, more than the {MAX_ALIAS_VALUES:,} a config "
                       "may hold; write the values out, or use fewer aliases")


def load_yaml(text: str, where: str):
    """The value of YAML `text` read strictly (module docstring); InfalignError naming `where` otherwise."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        raise InfalignError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:  # PyYAML's message spans several lines (with a caret): made one
        raise InfalignError(f"{where} is not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise InfalignError(f"{where}: its values are nested too deeply") from None
