"""Read a YAML file as plain data: mappings with string keys, lists, strings, integers, floats, booleans, null.

A profile (configs/<name>.yml) is data that reaches papermill's parameters cell and the run folders' names, so
nothing else may pass: `!!binary` (bytes, which papermill wrote into the cell unescaped: code), `!!set`,
`!!timestamp`, `!!omap`, `!!pairs`, a custom tag, a non-string key. A key given twice is refused too: YAML keeps
the last silently (`{epochs: 1, epochs: 3}` is 3; a second `rows:` replaces the first). Every refusal is one line
with the file, the line and the key. The check walks the composed node tree (which carries line numbers) before
PyYAML's safe constructor builds the values.
"""
from __future__ import annotations

__all__ = ["load_plain", "PLAIN_TAGS"]

_YAML = "tag:yaml.org,2002:"
PLAIN_TAGS = {_YAML + t: t for t in ("str", "int", "float", "bool", "null")}  # the scalars a value may be


def load_plain(path, text):
    """Parse `text` (the contents of `path`) into plain Python data, or raise ValueError in one line.

    Args:
        path: the file, for messages.
        text: its contents.
    """
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            _check(root, path, "", set())
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{where}: not valid YAML ({problem})") from None


def _check(node, path, key, seen):
    """Refuse, in one line, a duplicate key or a value that is not plain data, anywhere under `node`."""
    import yaml

    if id(node) in seen:  # an alias repeats a node already checked (and keeps `a: &x [*x]` from looping)
        return
    seen.add(id(node))
    line = node.start_mark.line + 1
    what = key or "the top level"
    if isinstance(node, yaml.ScalarNode):
        if node.tag not in PLAIN_TAGS:
            raise ValueError(f"{path}:{line}: {what} is a {node.tag.replace(_YAML, '!!')} value; expected a plain "
                             f"int, float, bool or string (a profile is data)")
    elif isinstance(node, yaml.SequenceNode):
        if node.tag != _YAML + "seq":  # !!omap, !!pairs: lists of tuples
            raise ValueError(f"{path}:{line}: {what} is a {node.tag.replace(_YAML, '!!')} value; expected a plain "
                             f"list or mapping")
        for i, item in enumerate(node.value):
            _check(item, path, f"{key}[{i}]", seen)
    elif isinstance(node, yaml.MappingNode):
        if node.tag != _YAML + "map":  # !!set: a mapping of keys to null
            raise ValueError(f"{path}:{line}: {what} is a {node.tag.replace(_YAML, '!!')} value; expected a plain "
                             f"mapping")
        first = {}
        for k, v in node.value:
            if k.tag == _YAML + "merge":  # `<<: *x` folds another mapping in, its keys unchecked for duplicates
                raise ValueError(f"{path}:{k.start_mark.line + 1}: {what} uses a merge key '<<'; expected its "
                                 f"keys written out")
            if not (isinstance(k, yaml.ScalarNode) and k.tag == _YAML + "str"):
                raise ValueError(f"{path}:{k.start_mark.line + 1}: a key of {what} is not a string "
                                 f"({k.tag.replace(_YAML, '!!')}); expected names as keys")
            name = f"{key}.{k.value}" if key else k.value
            if k.value in first:
                raise ValueError(f"{path}: key {name!r} is given twice (lines {first[k.value]} and "
                                 f"{k.start_mark.line + 1}); expected each key once (YAML would keep the last "
                                 f"silently)")
            first[k.value] = k.start_mark.line + 1
            _check(v, path, name, seen)
