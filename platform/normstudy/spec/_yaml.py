"""YAML with limits: a study description is small, so anything beyond these bounds is refused.

Aliases (``*name``) are allowed, since anchors are a fair way to share plugin options between
variants, but counted while the document is composed, before any Python object exists: each
node's size *as expanded* is known once its children are, so an alias bomb (a 1 kB file whose
nine levels of nine aliases expand to 9**9 values) is refused at the level that crosses the
bound, after a few dozen aliases and in milliseconds. Duplicate keys are refused too (PyYAML
would silently keep the last one).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1_000_000
"""Largest study description read (the shipped ones are under 5 kB)."""
MAX_ALIASES = 100
"""Alias uses (``*name``) per document."""
MAX_VALUES = 100_000
"""Values (scalars, lists, mappings) in the document with every alias expanded."""
MAX_DEPTH = 64
"""Nesting of lists and mappings."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlLimitError(Exception):
    """A document beyond one of the bounds above, or with a duplicate key."""

    def __init__(self, message: str, node_or_mark: Any) -> None:
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        self.line = mark.line + 1 if mark is not None else None
        super().__init__(f"line {self.line}: {message}" if self.line else message)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting aliases, expanded size and depth while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values in it, aliases expanded

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            return self._compose_alias(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YamlLimitError(f"nested deeper than {MAX_DEPTH} levels", self.peek_event())
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is None:
            return None
        size = 1 + sum(self._sizes[id(child)] for child in _children(node))
        if size > MAX_VALUES:
            raise YamlLimitError(
                f"the document expands to more than {MAX_VALUES} values (aliases expanded)", node
            )
        self._sizes[id(node)] = size
        if isinstance(node, MappingNode):
            self._refuse_duplicate_keys(node)
        return node

    def _compose_alias(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        self._aliases += 1
        if self._aliases > MAX_ALIASES:
            raise YamlLimitError(f"more than {MAX_ALIASES} aliases (*name)", event)
        anchored = self.anchors.get(event.anchor)
        if anchored is not None and id(anchored) not in self._sizes:
            raise YamlLimitError(f"alias *{event.anchor} is used inside its own anchor", event)
        return super().compose_node(parent, index)

    def _refuse_duplicate_keys(self, node: MappingNode) -> None:
        # Checked on the composed node, before PyYAML flattens merge keys (<<: *base) into it:
        # a key given next to a merge overrides the merged one, as YAML intends.
        first: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)  # 'yes' and 'true' are the same key
            if key in first:
                line = first[key].start_mark.line + 1
                raise YamlLimitError(f"duplicate key {key!r} (first at line {line})", key_node)
            first[key] = key_node


def parse_yaml(text: str) -> Any:
    """The document in ``text`` as plain Python values.

    Raises:
        YamlLimitError: beyond a bound, or a duplicate key.
        yaml.YAMLError: not YAML.
        ValueError: a value PyYAML cannot convert (an integer of over 4300 digits, a date
            that does not exist).
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise YamlLimitError(f"larger than {MAX_BYTES} bytes", None)
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
